package store

import (
	"math"
	"slices"
	"sync"
	"time"
)

// The audit intake is a queue: rows are inserted at the high end of its id
// index and deleted from the low end as the sequencer chains them. A
// deleted row's index entry stays until VACUUM removes it, and autovacuum
// visits a table at most once a minute (autovacuum_naptime), slowly. Read
// "ORDER BY id" from the start, every probe and every round walked every
// entry chained since the last vacuum: measured after the bench's audited
// reads, 4.2 ms for the sequencer's EXISTS probe and 1.0 ms for a round's
// read, a quarter of a core of PostgreSQL's CPU taken from the writes.
//
// intakeCursor lets this process's probes and rounds start past what its
// own rounds chained. It is not enough to start after the highest id a
// round took: ids are taken when a row is inserted, and a transaction that
// took a lower id may commit later (a write batch's audit events commit
// with the batch, after later access events). So every id below the floor
// that a round did not see is remembered as a gap and read by id until it
// turns up or is known gone. Each gap is tagged with a transaction id
// assigned after the round that missed it had committed: any transaction
// that held the gap's row then has a lower one. Once the oldest running
// transaction (a later read's snapshot xmin) is at or past the tag, every
// such transaction has ended, and a read that still does not find the id
// proves its row rolled back or was chained by another replica.
//
// What the cursor can miss, a read from the start finds: ids below the
// first a fresh process sees, gaps beyond intakeGapsMax, and an id taken
// by a transaction that had no transaction id yet when the read missed it
// (an access group's insert takes its first id just before its
// transaction id). One is due every fullReadEvery, and Flush reads from
// the start: nothing committed is left out of the chain, and nothing waits
// longer than that.
//
// The state is this process's: another replica's rounds only make this
// one's reads start lower than they could, never miss anything.
type intakeCursor struct {
	mu sync.Mutex
	// floor: every id at or below it was chained by a round of this
	// process, or is in gaps, or is left to the full read.
	floor int64
	// gaps are ids below floor that no round has seen yet, each with its
	// tag.
	gaps map[int64]int64
	// lastFull is when a full read last went through the whole intake.
	lastFull time.Time

	// Tuning (tests shorten it).
	fullReadEvery time.Duration
}

// Defaults of the intake cursor. A full read every 10 s costs one walk of
// the chained entries where the poll made twenty a second.
const (
	intakeFullReadEvery = 10 * time.Second
	intakeGapsMax       = 1000
)

func newIntakeCursor() *intakeCursor {
	return &intakeCursor{gaps: map[int64]int64{}, fullReadEvery: intakeFullReadEvery}
}

// intakeScan is where one probe or round reads: ids above floor and the
// gaps, or (full) every id from the start; below is the cursor's floor
// when the scan was taken.
type intakeScan struct {
	full  bool
	floor int64
	gaps  []int64
	below int64
}

// scan returns where to read now: from the start when asked, or when no
// full read went through for fullReadEvery (at first, too).
func (c *intakeCursor) scan(now time.Time, fromStart bool) intakeScan {
	c.mu.Lock()
	defer c.mu.Unlock()
	if fromStart || now.Sub(c.lastFull) >= c.fullReadEvery {
		return intakeScan{full: true, below: c.floor}
	}
	return intakeScan{floor: c.floor, gaps: c.gapIDs(), below: c.floor}
}

// gapIDs are the gaps, ascending.
func (c *intakeCursor) gapIDs() []int64 {
	gaps := make([]int64, 0, len(c.gaps))
	for id := range c.gaps {
		gaps = append(gaps, id)
	}
	slices.Sort(gaps)
	return gaps
}

// settle lets go of the gaps among ids that a read did not find although
// every transaction that could hold them had ended before it (tag <=
// xmin). seenBelow: the read saw every id below it.
func (c *intakeCursor) settle(ids []int64, found map[int64]bool, xmin, seenBelow int64) {
	for _, id := range ids {
		if tag, ok := c.gaps[id]; ok && !found[id] && id < seenBelow && tag <= xmin {
			delete(c.gaps, id)
		}
	}
}

// probed records a probe that read sc: found are the gaps it found, xmin
// its snapshot's; empty says it found nothing at all.
func (c *intakeCursor) probed(sc intakeScan, at time.Time, found []int64, xmin int64, empty bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if sc.full && empty {
		c.lastFull = at
	}
	seen := make(map[int64]bool, len(found))
	for _, id := range found {
		seen[id] = true
	}
	c.settle(sc.gaps, seen, xmin, math.MaxInt64)
}

// readResult is what a committed round saw: the ids it took (ascending),
// whether the read stopped at its limit, the oldest transaction running
// before it, and its tag (a transaction id assigned after it committed).
type readResult struct {
	scan       intakeScan
	startedAt  time.Time
	ids        []int64
	truncated  bool
	xminBefore int64
	tag        int64
}

// chained records a committed round: its ids are gone from the intake;
// ids between the floor and the highest it took that it did not see are
// gaps; gaps it looked up in vain are let go (settle).
func (c *intakeCursor) chained(r readResult) {
	c.mu.Lock()
	defer c.mu.Unlock()
	seenBelow := int64(math.MaxInt64)
	if r.truncated && len(r.ids) > 0 {
		seenBelow = r.ids[len(r.ids)-1]
	}
	looked := r.scan.gaps
	if r.scan.full {
		// A full read has been through everything below the floor once it
		// read past it (or to the end); cut at its limit below the floor,
		// the next round reads from the start again. It looked every gap
		// up.
		if seenBelow > r.scan.below {
			c.lastFull = r.startedAt
		}
		looked = c.gapIDs()
	}
	taken := make(map[int64]bool, len(r.ids))
	for _, id := range r.ids {
		taken[id] = true
		delete(c.gaps, id)
	}
	c.settle(looked, taken, r.xminBefore, seenBelow)
	if len(r.ids) == 0 {
		return
	}
	top := r.ids[len(r.ids)-1]
	from := c.floor
	if from == 0 {
		// A fresh cursor: ids below the first seen are left to the full
		// reads (they may be millions, chained long ago).
		from = r.ids[0]
	}
	// Newest first, at most intakeGapsMax of this round's; then the
	// lowest go beyond intakeGapsMax (left to the full reads): a cursor
	// full of gaps that never turn up (a long transaction elsewhere in
	// the cluster holds xmin back) still keeps the newest.
	added := 0
	for id := top - 1; id > from && added < intakeGapsMax; id-- {
		if !taken[id] {
			if _, ok := c.gaps[id]; !ok {
				c.gaps[id] = r.tag
				added++
			}
		}
	}
	if over := len(c.gaps) - intakeGapsMax; over > 0 {
		for _, id := range c.gapIDs()[:over] {
			delete(c.gaps, id)
		}
	}
	c.floor = max(c.floor, top)
}

// chainedUntagged records a round that committed but whose tag was not
// read (the connection failed after the COMMIT): its ids are gone; the
// floor stays, so the next rounds read past them again.
func (c *intakeCursor) chainedUntagged(ids []int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, id := range ids {
		delete(c.gaps, id)
	}
}
