package auditlog

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/server/store"
)

// openStore opens a store on url, closed when the test ends.
func openStore(t *testing.T, url string) *store.Store {
	t.Helper()
	st, err := store.Open(context.Background(), url, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st
}

// flush chains everything waiting in the intake.
func flush(t *testing.T, st *store.Store) {
	t.Helper()
	q := NewSequencer(st, SequencerOptions{})
	for {
		r, err := q.Round(context.Background())
		if err != nil {
			t.Fatalf("sequencing round: %v", err)
		}
		if r.Events == 0 {
			return
		}
	}
}

// chained reads every chained event: the keys of the access events with
// how often each appears, and checks that sequences run 1..N gap-free.
func chained(t *testing.T, st *store.Store) (map[string]int, int64) {
	t.Helper()
	seen := map[string]int{}
	var n int64
	for e, err := range st.AuditEvents(context.Background(), 0, math.MaxInt64) {
		if err != nil {
			t.Fatal(err)
		}
		n++
		if e.Sequence != n {
			t.Fatalf("event %d at position %d: sequences are not gap-free", e.Sequence, n)
		}
		if e.Action == "AccessSecretVersion" {
			seen[e.Key]++
		}
	}
	return seen, n
}

// checkOnce asserts every key in want was chained exactly once and nothing
// else was.
func checkOnce(t *testing.T, want map[string]bool, seen map[string]int) {
	t.Helper()
	for k := range want {
		if seen[k] != 1 {
			t.Errorf("event %s chained %d times, want once", k, seen[k])
		}
	}
	if len(seen) != len(want) {
		t.Errorf("%d access events chained, want %d", len(seen), len(want))
	}
}

// verified verifies the chain and asserts it is intact, holds n events and
// nothing waits in the intake.
func verified(t *testing.T, st *store.Store, n int64) Result {
	t.Helper()
	res, err := (&Log{Store: st}).Verify(context.Background())
	if err != nil || !res.Intact || res.Events != n || res.Waiting != 0 {
		t.Fatalf("verify: %+v, %v; want intact with %d events, none waiting", res, err, n)
	}
	return res
}

// TestRacingSequencersKeepOneChain: three "replicas" (stores with their own
// pools) append access groups concurrently, while writes commit their
// events inside their own transactions, and every replica runs its
// sequencer (plus extra rounds forced in a loop, so they collide on the
// head all the time). Every event is chained exactly once, in one unbroken,
// gap-free chain: the sequencers never fork it.
func TestRacingSequencersKeepOneChain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := testdb.New(t)
	var replicas []*store.Store
	for range 3 {
		replicas = append(replicas, openStore(t, url))
	}
	const (
		appenders = 4  // per replica
		groups    = 60 // per appender
		tokens    = 40 // writes per replica
	)
	sctx, stopSequencers := context.WithCancel(ctx)
	var seqs sync.WaitGroup
	var sequencers []*Sequencer
	for _, st := range replicas {
		q := NewSequencer(st, SequencerOptions{Poll: 5 * time.Millisecond, Batch: 7})
		sequencers = append(sequencers, q)
		seqs.Go(func() { q.Run(sctx) })
		seqs.Go(func() {
			for sctx.Err() == nil {
				_, _ = q.Round(sctx)
			}
		})
	}
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
	wantEvents := int64(len(want) + 3*tokens)
	// The running sequencers drain the intake by themselves.
	deadline := time.Now().Add(30 * time.Second)
	for {
		waiting, _, err := replicas[0].AuditIntake(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if waiting == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d events still waiting 30s after the last append", waiting)
		}
		time.Sleep(10 * time.Millisecond)
	}
	stopSequencers()
	seqs.Wait()
	var rounds int64
	for _, q := range sequencers {
		s := q.Stats()
		rounds += s.Rounds
		if s.Rounds == 0 {
			t.Errorf("a sequencer never chained anything: %+v", s)
		}
	}
	t.Logf("%d events chained in %d rounds", wantEvents, rounds)
	seen, n := chained(t, replicas[1])
	if n != wantEvents {
		t.Errorf("%d events chained, want %d", n, wantEvents)
	}
	checkOnce(t, want, seen)
	verified(t, replicas[2], wantEvents)
}

// TestVerifyWhileAppending: verification and export on a live log judge
// the chain up to the head they read; events appended and sequenced
// meanwhile are not "inserted after the head".
func TestVerifyWhileAppending(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := openStore(t, testdb.New(t))
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() {
		for i := 0; ctx.Err() == nil; i++ {
			_ = st.AppendAudit(ctx, []store.AuditEvent{{Actor: "a", Action: "AccessSecretVersion", Key: fmt.Sprintf("K%d", i), Outcome: store.OutcomeOK}})
		}
	})
	q := NewSequencer(st, SequencerOptions{})
	wg.Go(func() { q.Run(ctx) })
	signer, _, err := GenerateSigner(t.TempDir() + "/k")
	if err != nil {
		t.Fatal(err)
	}
	pub := signer.Public()
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

// previousRelease appends events the way the previous release did, straight
// into audit_events under the head lock (its locked path, and its one-trip
// path that moves the head only if it is still the one it chained after).
type previousRelease struct {
	conn *pgx.Conn
}

const previousInsert = `INSERT INTO audit_events (sequence, time, actor, action, key, version, outcome, request_id, peer, revision, detail,
			prev_hash, hash, value_hmac)
		SELECT u.* FROM unnest($1::bigint[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[],
			$8::text[], $9::text[], $10::bigint[], $11::text[], $12::bytea[], $13::bytea[], $14::bytea[]) AS u`

const previousAppendIfHead = `WITH moved AS (
			UPDATE audit_head SET sequence = $15, hash = $16 WHERE sequence = $17 AND hash = $18 RETURNING 1)
		` + previousInsert + ` WHERE EXISTS (SELECT FROM moved)`

func (p previousRelease) columns(seq int64, prev []byte, keys []string) ([]any, int64, []byte) {
	now := time.Now().Truncate(time.Microsecond).UTC()
	var seqs, versions, revisions []int64
	var times []time.Time
	var actor, action, key, outcome, reqID, peer, detail []string
	var prevs, hashes, hmacs [][]byte
	for _, k := range keys {
		seq++
		e := store.AuditEvent{Time: now, Actor: "old-release", Action: "AccessSecretVersion", Key: k, Version: 1, Outcome: store.OutcomeOK}
		h := store.EventHash(prev, e)
		seqs, versions, revisions = append(seqs, seq), append(versions, 1), append(revisions, 0)
		times = append(times, now)
		actor, action, key, outcome = append(actor, e.Actor), append(action, e.Action), append(key, k), append(outcome, e.Outcome)
		reqID, peer, detail = append(reqID, ""), append(peer, ""), append(detail, "")
		prevs, hashes, hmacs = append(prevs, prev), append(hashes, h), append(hmacs, nil)
		prev = h
	}
	return []any{seqs, times, actor, action, key, versions, outcome, reqID, peer, revisions, detail, prevs, hashes, hmacs}, seq, prev
}

// locked is the previous release's locked path.
func (p previousRelease) locked(ctx context.Context, keys []string) error {
	return pgx.BeginFunc(ctx, p.conn, func(tx pgx.Tx) error {
		var seq int64
		var hash []byte
		if err := tx.QueryRow(ctx, `SELECT sequence, hash FROM audit_head FOR UPDATE`).Scan(&seq, &hash); err != nil {
			return err
		}
		args, next, nextHash := p.columns(seq, hash, keys)
		if _, err := tx.Exec(ctx, previousInsert, args...); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `UPDATE audit_head SET sequence = $1, hash = $2`, next, nextHash)
		return err
	})
}

// oneTrip is the previous release's guess of the head (read unlocked
// here): it inserts nothing if the head moved.
func (p previousRelease) oneTrip(ctx context.Context, keys []string) (bool, error) {
	var seq int64
	var hash []byte
	if err := p.conn.QueryRow(ctx, `SELECT sequence, hash FROM audit_head`).Scan(&seq, &hash); err != nil {
		return false, err
	}
	args, next, nextHash := p.columns(seq, hash, keys)
	tag, err := p.conn.Exec(ctx, previousAppendIfHead, append(args, next, nextHash, seq, hash)...)
	return tag.RowsAffected() == int64(len(keys)), err
}

// TestPreviousReleaseInterleaved: during a rolling upgrade a replica of the
// previous release appends straight into audit_events under the head lock
// (both its paths, as the service role) while this release's appends go
// through the intake and its sequencer: the chain stays intact and every
// event is in it once.
func TestPreviousReleaseInterleaved(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testdb.New(t)
	st := openStore(t, testdb.ServiceURL(t, db))
	oldConn, err := pgx.Connect(ctx, testdb.ServiceURL(t, db))
	if err != nil {
		t.Fatal(err)
	}
	defer oldConn.Close(ctx)
	old := previousRelease{conn: oldConn}
	sctx, stop := context.WithCancel(ctx)
	q := NewSequencer(st, SequencerOptions{Poll: 5 * time.Millisecond})
	var seq, wg sync.WaitGroup
	seq.Go(func() { q.Run(sctx) })
	want := map[string]bool{}
	var mu sync.Mutex
	add := func(k string) { mu.Lock(); want[k] = true; mu.Unlock() }
	errs := make(chan error, 4)
	for a := range 3 {
		wg.Go(func() {
			for i := range 80 {
				k := fmt.Sprintf("NEW_%d_%d", a, i)
				add(k)
				if err := st.AppendAudit(ctx, []store.AuditEvent{{Actor: "new-release", Action: "AccessSecretVersion", Key: k, Version: 1, Outcome: store.OutcomeOK}}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	var oneTrips int
	for i := range 80 {
		keys := []string{fmt.Sprintf("OLD_%d_A", i), fmt.Sprintf("OLD_%d_B", i)}
		if i%2 == 0 {
			if err := old.locked(ctx, keys); err != nil {
				t.Fatalf("previous release, locked path: %v", err)
			}
		} else {
			ok, err := old.oneTrip(ctx, keys)
			if err != nil {
				t.Fatalf("previous release, one trip: %v", err)
			}
			if !ok {
				continue // the head moved: nothing was inserted
			}
			oneTrips++
		}
		for _, k := range keys {
			add(k)
		}
	}
	wg.Wait()
	stop()
	seq.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	flush(t, st)
	t.Logf("previous release: 40 locked groups, %d one-trip groups that held", oneTrips)
	seen, n := chained(t, st)
	checkOnce(t, want, seen)
	verified(t, st, n)
}
