package auditlog

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/orient-bot/secrets/server/store"
)

// signalStore counts the sequencer's rounds and when they ran; its intake
// signal is what the test sends.
type signalStore struct {
	signal chan struct{}
	mu     sync.Mutex
	rounds []time.Time
}

func (f *signalStore) SequenceAudit(context.Context, store.SequenceOptions) (store.Sequenced, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rounds = append(f.rounds, time.Now())
	return store.Sequenced{}, nil
}
func (f *signalStore) AuditIntakeWaiting(context.Context) (bool, error) { return false, nil }
func (f *signalStore) EnsureAuditPartitions(context.Context, time.Time, time.Duration) (int, error) {
	return 0, nil
}
func (f *signalStore) IntakeSignal() <-chan struct{} { return f.signal }

func (f *signalStore) roundsAfter(t0 time.Time) []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []time.Time
	for _, r := range f.rounds {
		if r.After(t0) {
			out = append(out, r)
		}
	}
	return out
}

// TestSequencerLinger: intake commits arriving back to back are chained in
// rounds at least Linger apart (so the sequencer's transactions do not
// queue on the WAL flush ahead of every audited read's own), while the
// first commit after a quiet spell is chained at once.
func TestSequencerLinger(t *testing.T) {
	t.Parallel()
	const linger = 200 * time.Millisecond
	st := &signalStore{signal: make(chan struct{}, 1)}
	q := NewSequencer(st, SequencerOptions{Linger: linger, Poll: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go q.Run(ctx)
	time.Sleep(50 * time.Millisecond) // the start-up round

	t0 := time.Now()
	st.signal <- struct{}{}
	deadline := time.Now().Add(linger / 2)
	for len(st.roundsAfter(t0)) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the first commit after a quiet spell waited %v or more", linger/2)
		}
		time.Sleep(time.Millisecond)
	}
	// A busy second: a commit every 5 ms.
	for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		select {
		case st.signal <- struct{}{}:
		default:
		}
	}
	time.Sleep(linger + 50*time.Millisecond)
	rounds := st.roundsAfter(t0)
	// 1.2 s of commits at most one round per linger: ≤ 1 + 1.2s/200ms.
	if len(rounds) > 7 || len(rounds) < 2 {
		t.Fatalf("%d rounds for 200 commits over 1 s with a %v linger", len(rounds), linger)
	}
	for i := 1; i < len(rounds); i++ {
		if gap := rounds[i].Sub(rounds[i-1]); gap < linger-time.Millisecond {
			t.Errorf("rounds %d and %d only %v apart", i-1, i, gap)
		}
	}
}
