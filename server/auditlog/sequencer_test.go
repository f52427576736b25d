package auditlog

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/server/store"
)

// appendKeys commits one access event per key to the intake, in groups of
// group, and returns the keys.
func appendKeys(t *testing.T, st *store.Store, prefix string, n, group int) map[string]bool {
	t.Helper()
	want := map[string]bool{}
	for done := 0; done < n; done += group {
		var events []store.AuditEvent
		for i := done; i < min(done+group, n); i++ {
			k := fmt.Sprintf("%s_%d", prefix, i)
			want[k] = true
			events = append(events, store.AuditEvent{Actor: "reader", Action: "AccessSecretVersion", Key: k, Version: 1, Outcome: store.OutcomeOK})
		}
		if err := st.AppendAudit(context.Background(), events); err != nil {
			t.Fatal(err)
		}
	}
	return want
}

func waiting(t *testing.T, st *store.Store) int64 {
	t.Helper()
	n, _, err := st.AuditIntake(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestSequencerKilledMidRound: a sequencer whose connection is killed (its
// backend terminated, as when the replica dies) or whose context ends
// between reading the intake and integrating it chains nothing and loses
// nothing: the events stay in the intake and the next round, here another
// replica's, chains each of them once. A sequencer that dies after its
// round committed, before any bookkeeping of its own, leaves nothing to
// redo: the next one chains only what came after.
func TestSequencerKilledMidRound(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testdb.New(t)
	admin, err := pgx.Connect(ctx, testdb.Admin(t))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	st := openStore(t, testdb.ServiceURL(t, db))
	want := appendKeys(t, st, "A", 50, 7)

	// Killed: the backend is terminated mid-round.
	var hooked atomic.Int64
	_, err = st.SequenceAudit(ctx, store.SequenceOptions{Limit: 20, BeforeIntegrate: func(ctx context.Context, pid uint32) error {
		hooked.Add(1)
		_, err := admin.Exec(ctx, `SELECT pg_terminate_backend($1)`, int32(pid))
		return err
	}})
	if err == nil || hooked.Load() != 1 {
		t.Fatalf("round on a killed connection: err %v (hook ran %d times); want a failure", err, hooked.Load())
	}
	if n := waiting(t, st); n != 50 {
		t.Fatalf("after the killed round %d events wait, want all 50", n)
	}
	// Cancelled: the sequencer's context ends mid-round.
	cctx, cancel := context.WithCancel(ctx)
	_, err = st.SequenceAudit(cctx, store.SequenceOptions{Limit: 20, BeforeIntegrate: func(context.Context, uint32) error {
		cancel()
		return nil
	}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("round with its context cancelled: %v; want context.Canceled", err)
	}
	if n := waiting(t, st); n != 50 {
		t.Fatalf("after the cancelled round %d events wait, want all 50", n)
	}
	// A round that committed, then its sequencer "crashed" before any
	// bookkeeping: the result is dropped with the whole store.
	crashed := openStore(t, testdb.ServiceURL(t, db))
	r, err := crashed.SequenceAudit(ctx, store.SequenceOptions{Limit: 20})
	if err != nil || r.Events != 20 {
		t.Fatalf("round before the crash: %+v, %v", r, err)
	}
	crashed.Close()
	for k, v := range appendKeys(t, st, "B", 30, 4) {
		want[k] = v
	}
	// Another replica takes over.
	other := openStore(t, testdb.ServiceURL(t, db))
	flush(t, other)
	seen, n := chained(t, other)
	if n != 80 {
		t.Errorf("%d events chained, want 80", n)
	}
	checkOnce(t, want, seen)
	verified(t, st, 80)
}

// TestDeadReplicaIntakeIsChained: a replica commits events to the intake
// and dies before its sequencer chains any (it never ran one). Another
// replica's sequencer, never told about those events, finds them by its
// poll and chains them, within a bounded delay, each once.
func TestDeadReplicaIntakeIsChained(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testdb.New(t)
	dead, err := store.Open(ctx, testdb.ServiceURL(t, db), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := appendKeys(t, dead, "DEAD", 40, 3)
	dead.Close()

	live := openStore(t, testdb.ServiceURL(t, db))
	var delays []time.Duration
	var mu sync.Mutex
	q := NewSequencer(live, SequencerOptions{Poll: 20 * time.Millisecond, Observe: func(d time.Duration) {
		mu.Lock()
		delays = append(delays, d)
		mu.Unlock()
	}})
	sctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stop()
	wg.Go(func() { q.Run(sctx) })
	// Once it runs, another dead replica's events are found by the poll
	// alone (the live store's signal never fires for them).
	time.Sleep(50 * time.Millisecond)
	dead2, err := store.Open(ctx, testdb.ServiceURL(t, db), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range appendKeys(t, dead2, "DEAD2", 25, 5) {
		want[k] = v
	}
	dead2.Close()
	began := time.Now()
	for waiting(t, live) > 0 {
		if time.Since(began) > 20*time.Second {
			t.Fatalf("%d events of dead replicas still waiting after 20s", waiting(t, live))
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("dead replica's events chained %v after its last commit", time.Since(began).Round(time.Millisecond))
	stop()
	wg.Wait()
	seen, n := chained(t, live)
	checkOnce(t, want, seen)
	verified(t, live, n)
	mu.Lock()
	defer mu.Unlock()
	if len(delays) != len(want) {
		t.Errorf("%d delays observed, want one per event (%d)", len(delays), len(want))
	}
}

// TestIntakeCommitsOverlap: accesses (and writes) commit their audit events
// without waiting for the chain. Each intake insert is slowed to 200ms (a
// trigger standing in for a slow fsync): 8 concurrent groups take about
// 200ms together, not 1.6s one after another, and more than one insert is
// seen in flight at once. And they complete while a transaction holds the
// chain head's lock the whole time: no path but the sequencer takes it.
func TestIntakeCommitsOverlap(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testdb.New(t)
	owner, err := pgx.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close(ctx)
	if _, err := owner.Exec(ctx, `CREATE FUNCTION slow_intake() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN PERFORM pg_sleep(0.2); RETURN NULL; END $$;
		CREATE TRIGGER slow_intake AFTER INSERT ON audit_intake FOR EACH STATEMENT EXECUTE FUNCTION slow_intake()`); err != nil {
		t.Fatal(err)
	}
	st := openStore(t, testdb.ServiceURL(t, db))
	// The head stays locked throughout, as by a stuck sequencer.
	lock, err := owner.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Rollback(ctx)
	if _, err := lock.Exec(ctx, `SELECT FROM audit_head FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	watcher, err := pgx.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer watcher.Close(ctx)
	const groups = 8
	var inFlight atomic.Int64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-done:
				return
			default:
			}
			var n int64
			if err := watcher.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
				WHERE state = 'active' AND query LIKE 'INSERT INTO audit_intake%'`).Scan(&n); err == nil && n > inFlight.Load() {
				inFlight.Store(n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	tctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	began := time.Now()
	var appends sync.WaitGroup
	errs := make(chan error, groups+1)
	for g := range groups {
		appends.Go(func() {
			errs <- st.AppendAudit(tctx, []store.AuditEvent{{Actor: "reader", Action: "AccessSecretVersion", Key: fmt.Sprintf("K%d", g), Outcome: store.OutcomeOK}})
		})
	}
	appends.Go(func() {
		_, err := st.PutSecret(tctx, store.Meta{Actor: "w", Action: "PutSecret"}, store.PutParams{Key: "W",
			Seal: func(context.Context, int64) (store.Sealed, error) {
				return store.Sealed{Ciphertext: []byte{1}, WrappedDEK: []byte{2}, KEKID: "k"}, nil
			}})
		errs <- err
	})
	appends.Wait()
	elapsed := time.Since(began)
	close(done)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("append while the head is locked: %v", err)
		}
	}
	t.Logf("%d slow intake commits (and a write) in %v; up to %d inserts seen in flight", groups, elapsed.Round(time.Millisecond), inFlight.Load())
	if elapsed > time.Duration(groups)*200*time.Millisecond*3/4 {
		t.Errorf("%d intake commits of 200ms each took %v: they did not overlap", groups, elapsed)
	}
	if inFlight.Load() < 2 {
		t.Errorf("at most %d intake insert seen in flight; want overlap", inFlight.Load())
	}
	if n := waiting(t, st); n != groups+1 {
		t.Errorf("%d events in the intake, want %d", n, groups+1)
	}
	if err := lock.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	flush(t, st)
	verified(t, st, groups+1)
}

// TestPartitionsAhead: the sequencer creates two periods of partitions
// ahead and chains events into the partition of their sequencing time,
// non-decreasing in sequence order, so each partition holds one run of the
// chain; the chain verifies across the boundaries.
func TestPartitionsAhead(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testdb.New(t)
	st := openStore(t, testdb.ServiceURL(t, db))
	owner, err := pgx.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close(ctx)
	// A fresh database has one day's partition: start from none, so the
	// 1s period applies from now (a new period applies to partitions
	// created from then on).
	if _, err := owner.Exec(ctx, `DO $$ DECLARE p text; BEGIN
		FOR p IN SELECT name FROM audit_partitions LOOP EXECUTE format('DROP TABLE %I', p); END LOOP;
		DELETE FROM audit_partitions; END $$`); err != nil {
		t.Fatal(err)
	}
	q := NewSequencer(st, SequencerOptions{PartitionPeriod: time.Second})
	called := time.Now()
	if err := q.EnsurePartitions(ctx); err != nil {
		t.Fatal(err)
	}
	// Two periods past the call, however long the check below waits.
	var reach time.Time
	if err := owner.QueryRow(ctx, `SELECT max(to_time) FROM audit_partitions`).Scan(&reach); err != nil {
		t.Fatal(err)
	}
	if ahead := reach.Sub(called); ahead < 2*time.Second-50*time.Millisecond {
		t.Errorf("partitions reach %v past the call, want two periods (2s)", ahead)
	}
	for i := range 5 {
		appendKeys(t, st, fmt.Sprintf("P%d", i), 10, 5)
		flush(t, st)
		time.Sleep(400 * time.Millisecond)
	}
	var parts int
	var ordered bool
	if err := owner.QueryRow(ctx, `SELECT count(DISTINCT tableoid),
		bool_and(sequenced_at >= prev) FROM (SELECT tableoid, sequenced_at,
			coalesce(lag(sequenced_at) OVER (ORDER BY sequence), '-infinity') AS prev FROM audit_events) e`).Scan(&parts, &ordered); err != nil {
		t.Fatal(err)
	}
	if parts < 2 || !ordered {
		t.Errorf("events in %d partitions, sequencing time non-decreasing: %v; want several partitions, in order", parts, ordered)
	}
	verified(t, st, 50)
}

// TestVerifyReportsWaiting: verification covers the sequenced events and
// reports those still waiting in the intake, with the oldest one's age.
func TestVerifyReportsWaiting(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := openStore(t, testdb.ServiceURL(t, testdb.New(t)))
	appendKeys(t, st, "S", 5, 5)
	flush(t, st)
	appendKeys(t, st, "W", 3, 1)
	time.Sleep(20 * time.Millisecond)
	res, err := (&Log{Store: st}).Verify(ctx)
	if err != nil || !res.Intact || res.Events != 5 || res.Waiting != 3 || res.OldestWaiting < 20*time.Millisecond {
		t.Fatalf("verify: %+v, %v; want 5 events intact, 3 waiting for at least 20ms", res, err)
	}
	if s := res.Summary(); !strings.Contains(s, "3 events committed but not yet sequenced") {
		t.Errorf("summary does not report the waiting events: %s", s)
	}
	flush(t, st)
	verified(t, st, 8)
}

// TestIntegrateRefusesDuplicateIDs: audit_integrate, called as the service
// role, refuses an intake id given twice (which would chain one event
// twice) and changes nothing.
func TestIntegrateRefusesDuplicateIDs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testdb.New(t)
	st := openStore(t, testdb.ServiceURL(t, db))
	appendKeys(t, st, "D", 1, 1)
	conn, err := pgx.Connect(ctx, testdb.ServiceURL(t, db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var id, seq int64
	var hash []byte
	if err := conn.QueryRow(ctx, `SELECT (SELECT id FROM audit_intake), sequence, hash FROM audit_head`).Scan(&id, &seq, &hash); err != nil {
		t.Fatal(err)
	}
	h1, h2 := []byte("one"), []byte("two")
	_, err = conn.Exec(ctx, `SELECT * FROM audit_integrate($1, $2, $3, $4)`, []int64{id, id}, [][]byte{h1, h2}, seq, hash)
	if err == nil || !strings.Contains(err.Error(), "22023") {
		t.Fatalf("integrating one intake id twice: %v; want SQLSTATE 22023", err)
	}
	if n := waiting(t, st); n != 1 {
		t.Fatalf("%d events waiting, want the one still there", n)
	}
	flush(t, st)
	verified(t, st, 1)
}
