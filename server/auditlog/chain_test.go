package auditlog

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"math"
	"sync"
	"testing"

	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/server/store"
)

// TestConcurrentAppendersKeepOneChain: three "replicas" (stores with their
// own pools and their own guess of the chain head) append access groups
// concurrently while writes append under the head lock inside their own
// transactions. Every event lands exactly once, in one unbroken chain.
func TestConcurrentAppendersKeepOneChain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := testdb.New(t)
	var replicas []*store.Store
	for range 3 {
		st, err := store.Open(ctx, url, store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		replicas = append(replicas, st)
	}
	const (
		appenders = 4  // per replica
		groups    = 60 // per appender
		tokens    = 40 // locked-path writes per replica
	)
	var wg sync.WaitGroup
	errs := make(chan error, 3*(appenders+1))
	want := map[string]bool{}
	var mu sync.Mutex
	for r, st := range replicas {
		for a := range appenders {
			wg.Go(func() {
				for g := range groups {
					events := make([]store.AuditEvent, 1+g%5)
					for i := range events {
						key := fmt.Sprintf("K_%d_%d_%d_%d", r, a, g, i)
						events[i] = store.AuditEvent{Actor: "reader", Action: "AccessSecretVersion", Key: key, Version: 1, Outcome: store.OutcomeOK}
						mu.Lock()
						want[key] = true
						mu.Unlock()
					}
					if err := st.AppendAudit(ctx, events); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Go(func() {
			for i := range tokens {
				name := fmt.Sprintf("tok-%d-%d", r, i)
				h := sha256.Sum256([]byte(name))
				if _, err := st.CreateToken(ctx, store.Meta{Actor: "admin", Action: "CreateToken"}, store.Token{Name: name, Prefix: "osk_x", Role: "reader"}, h[:]); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var stats store.AppendStats
	for _, st := range replicas {
		s := st.AuditAppendStats()
		stats.OneTrip, stats.Missed, stats.Locked = stats.OneTrip+s.OneTrip, stats.Missed+s.Missed, stats.Locked+s.Locked
	}
	t.Logf("appends: %+v", stats)
	if stats.Missed == 0 || stats.OneTrip+stats.Locked != 3*appenders*groups {
		t.Errorf("append paths %+v: want stale guesses, and one success per group (%d)", stats, 3*appenders*groups)
	}
	signer, _, err := GenerateSigner(t.TempDir() + "/k")
	if err != nil {
		t.Fatal(err)
	}
	log := &Log{Store: replicas[0], Signer: signer, Keys: NewKeys(signer.Public())}
	res, err := log.Verify(ctx)
	wantEvents := int64(len(want) + 3*tokens)
	if err != nil || !res.Intact || res.Events != wantEvents {
		t.Fatalf("verify: %+v, %v; want intact with %d events", res, err, wantEvents)
	}
	seen := map[string]int{}
	for e, err := range replicas[1].AuditEvents(ctx, 0, math.MaxInt64) {
		if err != nil {
			t.Fatal(err)
		}
		if e.Action == "AccessSecretVersion" {
			seen[e.Key]++
		}
	}
	for k := range want {
		if seen[k] != 1 {
			t.Errorf("event %s recorded %d times", k, seen[k])
		}
	}
	if len(seen) != len(want) {
		t.Errorf("%d access events recorded, want %d", len(seen), len(want))
	}
}

// TestUncontendedAppendsTakeOneTrip: a lone appender learns the head from
// its first (locked) append and chains every later group in one round
// trip; a write elsewhere costs one stale guess, and the chain stays whole.
func TestUncontendedAppendsTakeOneTrip(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := testdb.New(t)
	st, err := store.Open(ctx, url, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	other, err := store.Open(ctx, url, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	appendOne := func(s *store.Store, i int) {
		t.Helper()
		if err := s.AppendAudit(ctx, []store.AuditEvent{{Actor: "a", Action: "AccessSecretVersion", Key: fmt.Sprintf("K%d", i), Outcome: store.OutcomeOK}}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 50 {
		appendOne(st, i)
	}
	if got, want := st.AuditAppendStats(), (store.AppendStats{OneTrip: 49, Locked: 1}); got != want {
		t.Fatalf("lone appender: %+v, want %+v", got, want)
	}
	appendOne(other, 50) // moves the head behind st's back
	appendOne(st, 51)    // stale guess: inserts nothing, then the lock
	appendOne(st, 52)    // a first miss pauses guessing for 2 appends: the lock
	appendOne(st, 53)    // the lock again
	appendOne(st, 54)    // guessing again, after the locked append's head: one trip
	if got, want := st.AuditAppendStats(), (store.AppendStats{OneTrip: 50, Missed: 1, Locked: 4}); got != want {
		t.Fatalf("after another writer: %+v, want %+v", got, want)
	}
	// A write through this store moves the head too, and knows it: the
	// next group still takes one trip.
	if _, err := st.PutSecret(ctx, store.Meta{Actor: "w", Action: "PutSecret"}, store.PutParams{Key: "W",
		Seal: func(context.Context, int64) (store.Sealed, error) {
			return store.Sealed{Ciphertext: []byte{1}, WrappedDEK: []byte{2}, KEKID: "k"}, nil
		}}); err != nil {
		t.Fatal(err)
	}
	appendOne(st, 55)
	if got, want := st.AuditAppendStats(), (store.AppendStats{OneTrip: 51, Missed: 1, Locked: 4}); got != want {
		t.Fatalf("after a write of its own: %+v, want %+v", got, want)
	}
	log := &Log{Store: st}
	res, err := log.Verify(ctx)
	if err != nil || !res.Intact || res.Events != 57 {
		t.Fatalf("verify: %+v, %v", res, err)
	}
}

// TestVerifyWhileAppending: verification and export on a live log judge
// the chain up to the head they read; events appended meanwhile are not
// "inserted after the head".
func TestVerifyWhileAppending(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := store.Open(ctx, testdb.New(t), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() {
		for i := 0; ctx.Err() == nil; i++ {
			_ = st.AppendAudit(ctx, []store.AuditEvent{{Actor: "a", Action: "AccessSecretVersion", Key: fmt.Sprintf("K%d", i), Outcome: store.OutcomeOK}})
		}
	})
	signer, _, err := GenerateSigner(t.TempDir() + "/k")
	pub := signer.Public()
	if err != nil {
		t.Fatal(err)
	}
	log := &Log{Store: st, Signer: signer, Keys: NewKeys(pub)}
	for i := range 5 {
		if _, err := log.Checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
		res, err := log.Verify(ctx)
		if err != nil || !res.Intact {
			t.Fatalf("verify %d on a live log: %+v, %v", i, res, err)
		}
		var buf bytes.Buffer
		if _, err := log.Export(ctx, &buf, nil); err != nil {
			t.Fatal(err)
		}
		if res, err := VerifyExport(&buf, Checks{Keys: NewKeys(pub)}); err != nil || !res.Intact {
			t.Fatalf("export %d of a live log: %+v, %v", i, res, err)
		}
	}
}
