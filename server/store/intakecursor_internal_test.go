package store

import (
	"testing"
	"time"
)

// The cursor's bookkeeping, without a database: synthetic ids and
// transaction ids.

func TestIntakeCursorTruncatedFullRead(t *testing.T) {
	c := newIntakeCursor()
	t0 := time.Unix(1000, 0)
	// A fresh cursor reads from the start; a read cut at its limit still
	// went past the floor (0), so the full read is done.
	sc := c.scan(t0, false)
	if !sc.full {
		t.Fatal("a fresh cursor must read from the start")
	}
	c.chained(readResult{scan: sc, startedAt: t0, ids: []int64{10, 11, 12}, truncated: true, xminBefore: 5, tag: 9})
	if sc := c.scan(t0.Add(time.Second), false); sc.full || sc.floor != 12 {
		t.Fatalf("after a full read past the floor: %+v", sc)
	}
	// Due again: a full read cut below the floor (a backlog of late ids)
	// has not been through; one that reaches the floor has.
	t1 := t0.Add(c.fullReadEvery)
	sc = c.scan(t1, false)
	if !sc.full || sc.below != 12 {
		t.Fatalf("due: %+v", sc)
	}
	c.chained(readResult{scan: sc, startedAt: t1, ids: []int64{3, 4}, truncated: true, xminBefore: 5, tag: 10})
	if sc := c.scan(t1.Add(time.Millisecond), false); !sc.full {
		t.Fatal("a full read cut below the floor counted as done")
	}
	sc = c.scan(t1, false)
	c.chained(readResult{scan: sc, startedAt: t1, ids: []int64{5, 13}, truncated: true, xminBefore: 5, tag: 10})
	if sc := c.scan(t1.Add(time.Millisecond), false); sc.full || sc.floor != 13 {
		t.Fatalf("a full read that reached the floor: %+v", sc)
	}
}

func TestIntakeCursorGaps(t *testing.T) {
	c := newIntakeCursor()
	c.fullReadEvery = time.Hour
	t0 := time.Unix(1000, 0)
	c.chained(readResult{scan: c.scan(t0, false), startedAt: t0, ids: []int64{1}, tag: 100})
	// 2 and 4 missed by a round tagged 110.
	sc := c.scan(t0, false)
	c.chained(readResult{scan: sc, startedAt: t0, ids: []int64{3, 5}, xminBefore: 90, tag: 110})
	if got := c.scan(t0, false).gaps; len(got) != 2 || got[0] != 2 || got[1] != 4 {
		t.Fatalf("gaps = %v; want [2 4]", got)
	}
	// A probe whose snapshot still has a transaction below the tag keeps
	// them; one past it lets go of those it did not find.
	sc = c.scan(t0, false)
	c.probed(sc, t0, nil, 109, false)
	if n := len(c.gaps); n != 2 {
		t.Fatalf("%d gaps after a probe with xmin below the tag; want 2", n)
	}
	c.probed(sc, t0, []int64{4}, 110, false)
	if got := c.scan(t0, false).gaps; len(got) != 1 || got[0] != 4 {
		t.Fatalf("gaps = %v; want [4] (found, kept)", got)
	}
	// A read cut at its limit below a gap does not let it go, even with
	// every holder gone.
	sc = c.scan(t0, true)
	c.chained(readResult{scan: sc, startedAt: t0, ids: []int64{2}, truncated: true, xminBefore: 200, tag: 210})
	if len(c.gaps) != 1 {
		t.Fatalf("gaps = %v: a gap above a truncated read's last id was let go", c.gaps)
	}
	// Taken: gone; 6, missed, is the new gap.
	sc = c.scan(t0, false)
	c.chained(readResult{scan: sc, startedAt: t0, ids: []int64{4, 7}, xminBefore: 200, tag: 220})
	if got := c.scan(t0, false); len(got.gaps) != 1 || got.gaps[0] != 6 || got.floor != 7 {
		t.Fatalf("after taking 4 and 7: %+v", got)
	}
}

func TestIntakeCursorGapsBounded(t *testing.T) {
	c := newIntakeCursor()
	c.fullReadEvery = time.Hour
	t0 := time.Unix(1000, 0)
	c.chained(readResult{scan: c.scan(t0, false), startedAt: t0, ids: []int64{1}, tag: 1})
	// A round that took only id 5,001: 5,000 ids missed, the newest
	// 1,000 kept.
	c.chained(readResult{scan: c.scan(t0, false), startedAt: t0, ids: []int64{5001}, tag: 2})
	gaps := c.scan(t0, false).gaps
	if len(gaps) != intakeGapsMax || gaps[0] != 5001-intakeGapsMax || gaps[len(gaps)-1] != 5000 {
		t.Fatalf("%d gaps from %d to %d; want the newest %d", len(gaps), gaps[0], gaps[len(gaps)-1], intakeGapsMax)
	}
	// Newer gaps displace the oldest: the cursor never stops recording.
	c.chained(readResult{scan: c.scan(t0, false), startedAt: t0, ids: []int64{5003}, tag: 3})
	gaps = c.scan(t0, false).gaps
	// (5,001 was taken: 4,002 to 5,000 and 5,002.)
	if len(gaps) != intakeGapsMax || gaps[len(gaps)-1] != 5002 || gaps[0] != 4002 {
		t.Fatalf("%d gaps from %d to %d; want 4002 to 5002", len(gaps), gaps[0], gaps[len(gaps)-1])
	}
	// Untagged: ids forgotten, floor kept.
	c.chainedUntagged([]int64{5002})
	if sc := c.scan(t0, false); sc.floor != 5003 || len(sc.gaps) != intakeGapsMax-1 {
		t.Fatalf("after an untagged round: floor %d, %d gaps", sc.floor, len(sc.gaps))
	}
}
