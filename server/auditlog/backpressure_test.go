package auditlog

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/server/store"
)

// TestBackPressureBoundsTheDelay: audited reads that commit events faster
// than the sequencer chains them (here a sequencer of 10 events a round
// against 8 readers of 20 events a call) are held back once it falls more
// than MaxDelay behind, so the sequencing delay stays near the bound. Not
// held back, as before, the delay grows with the load's duration.
//
// Not parallel: it measures the delays its own sequencer achieves, and the
// package's other database tests beside it (under make test's -race
// -parallel 8) starved its rounds (one run: 24 groups held, worst chained
// 3.9 s).
func TestBackPressureBoundsTheDelay(t *testing.T) {
	const (
		maxDelay = 200 * time.Millisecond
		load     = 5 * time.Second
		bound    = 1500 * time.Millisecond
	)
	run := func(t *testing.T, paced bool) (worst, oldest time.Duration, held int64) {
		st := openStore(t, testdb.ServiceURL(t, testdb.New(t)))
		var seen atomic.Int64
		q := NewSequencer(st, SequencerOptions{Batch: 10, MaxDelay: maxDelay, Observe: func(d time.Duration) {
			for {
				cur := seen.Load()
				if int64(d) <= cur || seen.CompareAndSwap(cur, int64(d)) {
					return
				}
			}
		}})
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go q.Run(ctx)
		var admit Admitter
		if paced {
			admit = q
		}
		b := NewBatcher(st, 512, admit)
		defer b.Close()
		stop := time.Now().Add(load)
		var wg sync.WaitGroup
		for r := range 8 {
			wg.Go(func() {
				for i := 0; time.Now().Before(stop); i++ {
					events := make([]store.AuditEvent, 20)
					for k := range events {
						events[k] = store.AuditEvent{Actor: "reader", Action: "BatchAccessSecrets",
							Key: fmt.Sprintf("CUSTOM_%d_%d_%d", r, i, k), Version: 1, Outcome: store.OutcomeOK}
					}
					rctx, rcancel := context.WithTimeout(context.Background(), 10*time.Second)
					err := b.RecordAccess(rctx, events)
					rcancel()
					if err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		_, oldest, err := st.AuditIntake(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return time.Duration(seen.Load()), oldest, q.Stats().Held
	}
	worst, oldest, _ := run(t, false)
	if max(worst, oldest) < bound {
		t.Skipf("not held back, the delay stayed under %v (worst chained %v, oldest waiting %v): the load did not outrun the sequencer, the test shows nothing",
			bound, worst, oldest)
	}
	t.Logf("not held back: worst chained %v, oldest waiting at the end %v", worst, oldest)
	worst, oldest, held := run(t, true)
	t.Logf("held back: worst chained %v, oldest waiting at the end %v, %d groups held", worst, oldest, held)
	if worst > bound || oldest > bound || held == 0 {
		t.Errorf("held back at %v: worst chained delay %v, oldest waiting %v, %d groups held; want both under %v",
			maxDelay, worst, oldest, held, bound)
	}
}

// TestRoundReportsWhatWaits: a full round says how many events wait past
// it (what the back-pressure reads a backlog from before its first event
// has aged); a round that empties the intake says none.
func TestRoundReportsWhatWaits(t *testing.T) {
	t.Parallel()
	st := openStore(t, testdb.ServiceURL(t, testdb.New(t)))
	appendKeys(t, st, "W", 50, 7)
	for _, want := range []struct {
		events  int
		more    bool
		waiting int64
	}{{20, true, 30}, {20, true, 10}, {10, false, 0}} {
		r, err := st.SequenceAudit(context.Background(), store.SequenceOptions{Limit: 20})
		if err != nil {
			t.Fatal(err)
		}
		if r.Events != want.events || r.More != want.more || r.Waiting != want.waiting {
			t.Fatalf("round: %d events, more %v, %d waiting; want %d, %v, %d", r.Events, r.More, r.Waiting, want.events, want.more, want.waiting)
		}
	}
}

// heldAdmitter holds every group until release is closed; entered
// receives each group's event count as it starts waiting.
type heldAdmitter struct {
	entered chan int
	release chan struct{}
}

func (h heldAdmitter) Admit(ctx context.Context, events int) {
	h.entered <- events
	select {
	case <-h.release:
	case <-ctx.Done():
	}
}

// TestHeldBackCallersThatLeftAreNotRecorded: a caller whose deadline passes
// while its group is held back gets its context's error (it withholds the
// value), and its events are not committed: no access happened, and a
// held-back group's share is not spent on it. The others in the group are
// committed.
func TestHeldBackCallersThatLeftAreNotRecorded(t *testing.T) {
	t.Parallel()
	app := &fakeAppender{seen: map[string]int{}}
	h := heldAdmitter{entered: make(chan int, 4), release: make(chan struct{})}
	b := NewBatcher(app, 64, h)
	defer b.Close()
	gone, cancel := context.WithCancel(context.Background())
	errs := make(chan error, 2)
	go func() { errs <- b.RecordAccess(gone, []store.AuditEvent{{Key: "GONE"}}) }()
	<-h.entered // the first caller's group waits to be admitted
	go func() { errs <- b.RecordAccess(context.Background(), []store.AuditEvent{{Key: "STAYS"}}) }()
	cancel()
	if err := <-errs; !errors.Is(err, context.Canceled) {
		t.Fatalf("the caller that left: %v, want %v", err, context.Canceled)
	}
	close(h.release)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	if n := app.count("GONE"); n != 0 {
		t.Errorf("the event of the caller that left was committed %d times, want none", n)
	}
	if n := app.count("STAYS"); n != 1 {
		t.Errorf("the other caller's event was committed %d times, want once", n)
	}
}

// failingRounds is a sequencer store whose rounds fail.
type failingRounds struct{ SequencerStore }

func (failingRounds) SequenceAudit(context.Context, store.SequenceOptions) (store.Sequenced, error) {
	return store.Sequenced{}, errors.New("database down")
}

// TestHoldingBackStopsWithoutRounds: a group held back is let go when a
// round fails, and when no round comes for stuckAfter (a sequencer that
// is not working must not hold reads), and at once when its context ends;
// the holding back stays off until a round says the sequencer is behind
// again.
func TestHoldingBackStopsWithoutRounds(t *testing.T) {
	t.Parallel()
	q := NewSequencer(failingRounds{}, SequencerOptions{MaxDelay: 100 * time.Millisecond})
	behind := func() {
		// A full round whose oldest event waited a second, and its share
		// spent.
		now := time.Now()
		q.paced(store.Sequenced{Events: 10, More: true, SequencedAt: now, Times: []time.Time{now.Add(-time.Second)}}, time.Second)
		q.Admit(context.Background(), 10)
	}
	admitted := func() <-chan time.Duration {
		out := make(chan time.Duration, 1)
		start := time.Now()
		go func() { q.Admit(context.Background(), 1); out <- time.Since(start) }()
		return out
	}

	behind()
	waiting := admitted()
	select {
	case d := <-waiting:
		t.Fatalf("a group admitted after %v with the share spent and no round since", d)
	case <-time.After(200 * time.Millisecond):
	}
	if _, err := q.Round(context.Background()); err == nil {
		t.Fatal("a round of the failing store succeeded")
	}
	select {
	case <-waiting:
	case <-time.After(time.Second):
		t.Fatal("a failed round did not let the held group go")
	}

	behind()
	start := time.Now()
	select {
	case d := <-admitted():
		if d < q.stuckAfter()-50*time.Millisecond {
			t.Fatalf("admitted after %v with no round, want about %v", d, q.stuckAfter())
		}
	case <-time.After(q.stuckAfter() + 5*time.Second):
		t.Fatalf("still held %v after the last round", time.Since(start))
	}
	select {
	case d := <-admitted():
		if d > 100*time.Millisecond {
			t.Fatalf("held %v after the holding back stopped", d)
		}
	case <-time.After(time.Second):
		t.Fatal("held after the holding back stopped")
	}

	behind()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { q.Admit(ctx, 1); close(done) }()
	cancel()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatal("a held group stayed after its context ended")
	}
	if held := q.Stats().Held; held != 3 {
		t.Errorf("%d groups counted held, want 3", held)
	}
}
