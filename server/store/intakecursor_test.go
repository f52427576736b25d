package store_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/server/store"
)

// intakeStore opens a store on a fresh database whose intake autovacuum
// never visits (as between two of its minute-apart visits), with an owner
// connection beside it.
func intakeStore(t *testing.T) (*store.Store, *pgx.Conn) {
	t.Helper()
	ctx := context.Background()
	url := testdb.New(t)
	owner, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { owner.Close(ctx) })
	if _, err := owner.Exec(ctx, `ALTER TABLE audit_intake SET (autovacuum_enabled = off)`); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(ctx, url, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st, owner
}

func appendEvents(t *testing.T, st *store.Store, n int, tag string) {
	t.Helper()
	for done := 0; done < n; {
		k := min(1000, n-done)
		events := make([]store.AuditEvent, k)
		for i := range events {
			events[i] = store.AuditEvent{Actor: "reader", Action: "AccessSecretVersion", Key: fmt.Sprintf("%s_%d", tag, done+i), Outcome: store.OutcomeOK}
		}
		if err := st.AppendAudit(context.Background(), events); err != nil {
			t.Fatal(err)
		}
		done += k
	}
}

// sequence runs rounds until one is not full and returns how many events
// they chained.
func sequence(t *testing.T, st *store.Store) int {
	t.Helper()
	n := 0
	for {
		r, err := st.SequenceAudit(context.Background(), store.SequenceOptions{})
		if err != nil {
			t.Fatal(err)
		}
		n += r.Events
		if !r.More {
			return n
		}
	}
}

func intakeWaiting(t *testing.T, owner *pgx.Conn) int {
	t.Helper()
	var n int
	if err := owner.QueryRow(context.Background(), `SELECT count(*) FROM audit_intake`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestSequencerSkipsChainedIntake: the intake is a queue, and the index
// entries of the events chained since the last vacuum stay at its low end.
// The sequencer's probe and round read past them: after 40,000 chained
// events they touch a few pages, where a read from the start (the old
// reads, and now one every 10 s) walks every entry.
func TestSequencerSkipsChainedIntake(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, owner := intakeStore(t)
	const chained = 40000
	appendEvents(t, st, chained, "OLD")
	if n := sequence(t, st); n != chained {
		t.Fatalf("chained %d of %d", n, chained)
	}
	st.SetIntakeFullReadEvery(time.Hour)
	appendEvents(t, st, 3, "NEW")
	for _, generic := range []bool{false, true} {
		probe, read, err := st.IntakeReadBuffers(ctx, owner, false, generic)
		if err != nil {
			t.Fatal(err)
		}
		fullProbe, fullRead, err := st.IntakeReadBuffers(ctx, owner, true, generic)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("generic plan %v: pages touched past the chained events: probe %d, read %d; from the start: probe %d, read %d",
			generic, probe, read, fullProbe, fullRead)
		if fullProbe < 50 || fullRead < 50 {
			t.Fatalf("reads from the start touched %d and %d pages: the chained entries are not there to skip (vacuumed?)", fullProbe, fullRead)
		}
		if probe > 20 || read > 20 {
			t.Errorf("generic plan %v: the sequencer's probe touched %d pages and its read %d: it walks the chained events", generic, probe, read)
		}
	}
	waiting, err := st.AuditIntakeWaiting(ctx)
	if err != nil || !waiting {
		t.Fatalf("waiting = %v, %v", waiting, err)
	}
	if n := sequence(t, st); n != 3 {
		t.Fatalf("chained %d of the 3 new events", n)
	}
	if waiting, err := st.AuditIntakeWaiting(ctx); err != nil || waiting {
		t.Fatalf("waiting after chaining = %v, %v", waiting, err)
	}
}

// TestSequencerChainsLateCommits: an event whose id was taken before
// others but committed after a round chained them (a write batch's events
// commit with the batch) is chained by the next round; one the cursor has
// lost track of is chained by the next full read; the cursor's gaps do not
// pile up when another replica chains the ids it missed.
func TestSequencerChainsLateCommits(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, owner := intakeStore(t)
	appendEvents(t, st, 10, "FIRST")
	if n := sequence(t, st); n != 10 {
		t.Fatalf("chained %d of 10", n)
	}
	late := func() pgx.Tx {
		tx, err := owner.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO audit_intake (actor, action, key, outcome) VALUES ('writer', 'PutSecret', 'LATE', 'OK')`); err != nil {
			t.Fatal(err)
		}
		return tx
	}

	st.SetIntakeFullReadEvery(time.Hour)
	// In flight while later events are chained: a gap, looked up by id.
	tx := late()
	appendEvents(t, st, 5, "AFTER")
	if n := sequence(t, st); n != 5 {
		t.Fatalf("chained %d of 5 committed events", n)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if waiting, err := st.AuditIntakeWaiting(ctx); err != nil || !waiting {
		t.Fatalf("the late event is not seen waiting: %v, %v", waiting, err)
	}
	if n := sequence(t, st); n != 1 {
		t.Fatalf("chained %d events after the late commit; want 1", n)
	}

	// Lost track of: a normal round does not see it, the next full read
	// does.
	if sequence(t, st) != 0 {
		t.Fatal("nothing should be waiting")
	}
	tx = late()
	appendEvents(t, st, 5, "AGAIN")
	if n := sequence(t, st); n != 5 {
		t.Fatalf("chained %d of 5 committed events", n)
	}
	st.ForgetIntakeGaps()
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if n := sequence(t, st); n != 0 || intakeWaiting(t, owner) != 1 {
		t.Fatalf("a round chained %d; %d waiting: the forgotten gap should wait for a full read", n, intakeWaiting(t, owner))
	}
	st.SetIntakeFullReadEvery(time.Millisecond)
	time.Sleep(2 * time.Millisecond)
	if n := sequence(t, st); n != 1 || intakeWaiting(t, owner) != 0 {
		t.Fatalf("the full read chained %d; %d waiting", n, intakeWaiting(t, owner))
	}

	// Another replica chains every other group: what this store's cursor
	// missed is chained, not waiting, and its gaps are let go once the
	// transactions that could have held them have ended.
	st.SetIntakeFullReadEvery(time.Hour)
	other, err := store.Open(ctx, owner.Config().ConnString(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	maxGaps := 0
	for i := range 20 {
		appendEvents(t, st, 7, fmt.Sprintf("G%d", i))
		if i%2 == 0 {
			sequence(t, other)
		} else {
			sequence(t, st)
			maxGaps = max(maxGaps, st.IntakeGaps())
		}
	}
	sequence(t, st)
	if n := intakeWaiting(t, owner); n != 0 {
		t.Fatalf("%d events left waiting", n)
	}
	if maxGaps == 0 {
		t.Fatal("no gaps recorded for the ids the other store chained: the test proves nothing")
	}
	// The oldest running transaction is the cluster's: other tests' may
	// hold it back a while.
	for deadline := time.Now().Add(20 * time.Second); st.IntakeGaps() > 0; {
		if time.Now().After(deadline) {
			t.Fatalf("the cursor still looks up %d ids another replica chained", st.IntakeGaps())
		}
		time.Sleep(10 * time.Millisecond)
		sequence(t, st)
	}
}

// TestSequencerKeepsGapsOfRunningTransactions: a gap is let go only once
// every transaction that could hold its row has ended. Here the holder
// took its transaction id after another transaction that took a higher
// intake id and committed first, so the newest completed transaction when
// the gap was missed is older than the holder; rounds run meanwhile with
// other commits around. The gap must outlive them all, and its event be
// chained by an ordinary round once the holder commits.
func TestSequencerKeepsGapsOfRunningTransactions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, owner := intakeStore(t)
	appendEvents(t, st, 3, "FIRST")
	sequence(t, st)
	st.SetIntakeFullReadEvery(time.Hour)
	other, err := pgx.Connect(ctx, owner.Config().ConnString())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(ctx)
	insert := `INSERT INTO audit_intake (actor, action, key, outcome) VALUES ('writer', 'PutSecret', $1, 'OK')`

	early, err := other.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := early.Exec(ctx, `SELECT pg_current_xact_id()`); err != nil {
		t.Fatal(err)
	}
	holder, err := owner.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback(ctx)
	if _, err := holder.Exec(ctx, insert, "HELD"); err != nil {
		t.Fatal(err)
	}
	var heldID, holderXID int64
	if err := holder.QueryRow(ctx, `SELECT currval('audit_intake_id_seq'), pg_current_xact_id()::text::bigint`).Scan(&heldID, &holderXID); err != nil {
		t.Fatal(err)
	}
	if _, err := early.Exec(ctx, insert, "EARLY"); err != nil {
		t.Fatal(err)
	}
	if err := early.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if n := sequence(t, st); n != 1 {
		t.Fatalf("chained %d; want the early transaction's event", n)
	}
	// The proof, whatever else runs on the cluster: the gap's tag is above
	// the holder's transaction id, so no xmin lets it go while the holder
	// runs.
	if tag, ok := st.IntakeGapTags()[heldID]; !ok || tag <= holderXID {
		t.Fatalf("gap %d: tag %d (recorded %v); the holder's transaction id is %d", heldID, tag, ok, holderXID)
	}
	for i := range 5 {
		appendEvents(t, st, 2, fmt.Sprintf("MEANWHILE_%d", i))
		sequence(t, st)
		if _, err := st.AuditIntakeWaiting(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if g := st.IntakeGaps(); g != 1 {
		t.Fatalf("the cursor looks up %d ids while the holder runs; want its 1", g)
	}
	if err := holder.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if n := sequence(t, st); n != 1 || intakeWaiting(t, owner) != 0 {
		t.Fatalf("an ordinary round chained %d after the holder committed; %d waiting", n, intakeWaiting(t, owner))
	}
}

// integrateBuffers chains what the intake holds through audit_integrate on
// conn, with made-up hashes, and returns the pages the call touched. The
// transaction is rolled back: the events stay in the intake.
func integrateBuffers(t *testing.T, conn *pgx.Conn) int64 {
	t.Helper()
	ctx := context.Background()
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	var (
		ids     []int64
		hashes  [][]byte
		headSeq int64
		head    []byte
	)
	if err := tx.QueryRow(ctx, `SELECT array_agg(id ORDER BY id), array_agg(sha256(id::text::bytea) ORDER BY id) FROM audit_intake`).
		Scan(&ids, &hashes); err != nil {
		t.Fatal(err)
	}
	if err := tx.QueryRow(ctx, `SELECT sequence, hash FROM audit_head`).Scan(&headSeq, &head); err != nil {
		t.Fatal(err)
	}
	var plan []map[string]any
	if err := tx.QueryRow(ctx, `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT * FROM audit_integrate($1, $2, $3, $4)`,
		ids, hashes, headSeq, head).Scan(&plan); err != nil {
		t.Fatal(err)
	}
	top := plan[0]["Plan"].(map[string]any)
	return int64(top["Shared Hit Blocks"].(float64) + top["Shared Read Blocks"].(float64))
}

// TestIntegrateSkipsTheIntakeHeap: audit_integrate finds the events it
// chains through the intake's primary key whatever the intake's size was
// when the session planned it. A plan cached while the intake was small (a
// sequential scan of a few pages) was kept by the session's connection as
// the intake grew: after a backlog every round read the whole heap, dead
// rows and all (1,300 pages a round of 22 events in the bench's put phase
// after its audited reads).
func TestIntegrateSkipsTheIntakeHeap(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, owner := intakeStore(t)
	// The sequencer's connection plans while the intake is small, as a
	// replica does at its start.
	if _, err := owner.Exec(ctx, `SET plan_cache_mode = force_generic_plan`); err != nil {
		t.Fatal(err)
	}
	appendEvents(t, st, 3, "FIRST")
	small := integrateBuffers(t, owner)
	// A backlog, chained: the heap keeps its pages (and dead rows) until
	// a vacuum.
	const chained = 40000
	appendEvents(t, st, chained, "BACKLOG")
	if n := sequence(t, st); n != chained+3 {
		t.Fatalf("chained %d of %d", n, chained+3)
	}
	var pages int64
	if err := owner.QueryRow(ctx, `SELECT pg_relation_size('audit_intake') / current_setting('block_size')::int`).Scan(&pages); err != nil {
		t.Fatal(err)
	}
	appendEvents(t, st, 3, "NEW")
	after := integrateBuffers(t, owner)
	t.Logf("integrating 3 events touched %d pages with a small intake, %d with an intake heap of %d pages", small, after, pages)
	if pages < 200 {
		t.Fatalf("the intake heap has %d pages: the backlog left no dead rows to skip (vacuumed?)", pages)
	}
	if after > 150 {
		t.Errorf("integrating 3 events touched %d pages of an intake of %d: it scans the heap", after, pages)
	}
}
