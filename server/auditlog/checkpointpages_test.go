package auditlog

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/server/store"
	"github.com/orient-bot/secrets/server/store/storetest"
)

// maxCheckpointRowsPerRead is the most rows of audit_checkpoints one read
// may return: a page, whatever the table holds.
const maxCheckpointRowsPerRead = 1000

// checkpointReads is a query tracer recording, for the queries that read
// audit_checkpoints, the most rows one returned and the rows in all.
type checkpointReads struct {
	mu          sync.Mutex
	most, total int64
	queries     int
}

type checkpointQuery struct{}

func (c *checkpointReads) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	if strings.Contains(data.SQL, "FROM audit_checkpoints") {
		return context.WithValue(ctx, checkpointQuery{}, true)
	}
	return ctx
}

func (c *checkpointReads) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryEndData) {
	if ctx.Value(checkpointQuery{}) == nil || data.Err != nil || !data.CommandTag.Select() {
		return
	}
	n := data.CommandTag.RowsAffected()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.most, c.total, c.queries = max(c.most, n), c.total+n, c.queries+1
}

func (c *checkpointReads) reset() (most, total int64, queries int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	most, total, queries = c.most, c.total, c.queries
	c.most, c.total, c.queries = 0, 0, 0
	return most, total, queries
}

// signEvents stores a checkpoint signed by signer at every chained event
// with from <= sequence <= to except those in skip (one statement, as the
// owner; those stored already are kept), and reports how many it stored.
func signEvents(t *testing.T, owner *pgx.Conn, signer *Signer, from, to int64, skip ...int64) int64 {
	t.Helper()
	ctx := context.Background()
	rows, err := owner.Query(ctx, `SELECT sequence, hash FROM audit_events WHERE sequence BETWEEN $1 AND $2 ORDER BY sequence`, from, to)
	if err != nil {
		t.Fatal(err)
	}
	var seqs []int64
	var hashes, sigs [][]byte
	var times []time.Time
	now := time.Now()
	for rows.Next() {
		var seq int64
		var hash []byte
		if err := rows.Scan(&seq, &hash); err != nil {
			t.Fatal(err)
		}
		skipped := false
		for _, s := range skip {
			skipped = skipped || s == seq
		}
		if skipped {
			continue
		}
		c := signer.Sign(seq, hash, now)
		seqs, hashes, times, sigs = append(seqs, seq), append(hashes, hash), append(times, c.Time), append(sigs, c.Signature)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	tag, err := owner.Exec(ctx, `INSERT INTO audit_checkpoints (sequence, hash, time, key_id, signature)
		SELECT s, h, tm, $5, sig FROM unnest($1::bigint[], $2::bytea[], $3::timestamptz[], $4::bytea[]) AS u(s, h, tm, sig)
		ON CONFLICT (sequence) DO NOTHING`, seqs, hashes, times, sigs, signer.ID())
	if err != nil {
		t.Fatal(err)
	}
	return tag.RowsAffected()
}

// heapDuring reports the most heap in use while f ran (sampled every
// millisecond) above what was in use before it: a figure for the log, not
// an assertion (the collector decides when memory is freed).
func heapDuring(f func()) uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base, peak := ms.HeapInuse, ms.HeapInuse
	done := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
			select {
			case <-done:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	f()
	close(done)
	<-sampled
	return peak - base
}

// TestVerifyReadsCheckpointsInPages: the checkpoint table only grows (one a
// minute per replica, never removed) and the service role may insert any
// number of rows into it. With a signed checkpoint at each of 20,000
// events, 30,000 forged rows past the head and a forged one in the middle
// of the chain, every read of the table returns at most a page, yet a full
// verification still checks every checkpoint in its walk (19,999 matched)
// and reports the forged one in the middle; an export carries them all; and
// once the forged rows are gone the chain is intact and an incremental
// verification resumes from the newest. AUDIT_CHECKPOINT_ROWS sets the
// number of events (and signed checkpoints).
func TestVerifyReadsCheckpointsInPages(t *testing.T) {
	t.Parallel()
	n := int64(20_000)
	if v, err := strconv.ParseInt(os.Getenv("AUDIT_CHECKPOINT_ROWS"), 10, 64); err == nil && v > 0 {
		n = v
	}
	const junk = 30_000
	ctx := context.Background()
	db := testdb.New(t)
	owner, err := pgx.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { owner.Close(context.Background()) })
	reads := &checkpointReads{}
	st, err := store.Open(ctx, testdb.ServiceURL(t, db), store.Options{Tracer: reads})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	const group = 10_000
	for done := int64(0); done < n; done += group {
		events := make([]store.AuditEvent, min(group, n-done))
		for i := range events {
			events[i] = store.AuditEvent{Actor: "reader", Action: "AccessSecretVersion", Key: fmt.Sprintf("K%d", done+int64(i)),
				Version: 1, Outcome: store.OutcomeOK}
		}
		if err := st.AppendAudit(ctx, events); err != nil {
			t.Fatal(err)
		}
	}
	flush(t, st)
	signer, _, err := GenerateSigner(t.TempDir() + "/k")
	if err != nil {
		t.Fatal(err)
	}
	mid := n / 2
	if got := signEvents(t, owner, signer, 1, n, mid); got != n-1 {
		t.Fatalf("stored %d signed checkpoints, want %d", got, n-1)
	}
	// Forged rows past the head, cheaply, and one in the middle under the
	// trusted key's id, inserted as the service role would.
	exec(t, owner, `INSERT INTO audit_checkpoints (sequence, hash, time, key_id, signature)
		SELECT $1 + g, '\x00', now(), 'junk', '\x00' FROM generate_series(1, $2::bigint) g`, n, junk)
	if err := st.InsertCheckpoint(ctx, store.AuditCheckpoint{Sequence: mid, Hash: make([]byte, 32), Time: time.Now().UTC(),
		KeyID: signer.ID(), Signature: make([]byte, 64)}); err != nil {
		t.Fatal(err)
	}
	reads.reset()
	log := &Log{Store: st, Signer: signer, Keys: NewKeys(signer.Public())}
	checkReads := func(what string, least int64) {
		t.Helper()
		most, total, queries := reads.reset()
		t.Logf("%s: %d checkpoint rows read in %d queries, at most %d at once", what, total, queries, most)
		if most > maxCheckpointRowsPerRead {
			t.Errorf("%s: one read returned %d checkpoint rows; want at most a page (%d)", what, most, maxCheckpointRowsPerRead)
		}
		if total < least {
			t.Errorf("%s: %d checkpoint rows read, want at least %d (every one it checks)", what, total, least)
		}
	}

	var res Result
	began := time.Now()
	heap := heapDuring(func() { res, err = log.Verify(ctx) })
	t.Logf("full verification, %d events and %d checkpoint rows: %v, heap +%d KiB: %s", n, n+junk, time.Since(began).Round(time.Millisecond), heap>>10, res.Summary())
	wantNotIntact(t, "full verification with a forged checkpoint in the middle", res, err, mid, "not signed by a trusted key")
	if res.Checkpoints != int(n-1) || res.Events != n || res.VerifiedThrough != n {
		t.Errorf("full verification: %d checkpoints matched in %d events through %d; want %d in %d through %d",
			res.Checkpoints, res.Events, res.VerifiedThrough, n-1, n, n)
	}
	checkReads("full verification", n+junk)

	var buf bytes.Buffer
	if _, err := log.Export(ctx, &buf, nil); err != nil {
		t.Fatal(err)
	}
	checkReads("export", n+junk)
	if lines := int64(strings.Count(buf.String(), `"type":"checkpoint"`)); lines != n+junk {
		t.Errorf("export: %d checkpoint lines, want %d", lines, n+junk)
	}
	ex, err := VerifyExport(&buf, Checks{Keys: log.Keys})
	wantNotIntact(t, "the export", ex, err, mid, "not signed by a trusted key")

	// The forged rows removed (as the owner, triggers off): intact, every
	// signed checkpoint matched, and the next run resumes from the newest.
	exec(t, owner, `SET session_replication_role = replica`)
	exec(t, owner, `DELETE FROM audit_checkpoints WHERE sequence > $1 OR sequence = $2`, n, mid)
	exec(t, owner, `SET session_replication_role = origin`)
	if res, err = log.Verify(ctx); err != nil || !res.Intact || res.Checkpoints != int(n-1) {
		t.Fatalf("full verification without the forged rows: %s (%v); want intact, %d checkpoints matched", res.Summary(), err, n-1)
	}
	checkReads("intact full verification", n-1)
	if res, err = log.VerifyIncremental(ctx); err != nil || !res.Intact || res.From != n || res.Events != 0 {
		t.Fatalf("incremental verification: %s (%v); want it to resume from %d", res.Summary(), err, n)
	}
	checkReads("incremental verification", 0)
}

// retentionPages wraps the retention job's store: it counts the rows each
// read of the stored checkpoints returned, through either API.
type retentionPages struct {
	*store.Store
	reads *checkpointReads
}

func (r retentionPages) count(n int) {
	r.reads.mu.Lock()
	defer r.reads.mu.Unlock()
	r.reads.most, r.reads.total, r.reads.queries = max(r.reads.most, int64(n)), r.reads.total+int64(n), r.reads.queries+1
}

func (r retentionPages) CheckpointsAfter(ctx context.Context, after, upTo int64, limit int) ([]store.AuditCheckpoint, error) {
	pager, ok := any(r.Store).(interface {
		CheckpointsAfter(ctx context.Context, after, upTo int64, limit int) ([]store.AuditCheckpoint, error)
	})
	if !ok {
		return nil, fmt.Errorf("the store reads no page of checkpoints")
	}
	cps, err := pager.CheckpointsAfter(ctx, after, upTo, limit)
	r.count(len(cps))
	return cps, err
}

// TestRetentionReadsCheckpointsInPages: retention reads a partition's
// checkpoints a page at a time, not the table: with 30,000 forged rows
// outside every partition's range and a signed checkpoint at each of 5,000
// events in one partition (several pages), no read returns more than a
// page, the segment carries every one of its checkpoints, and the archives
// plus the table verify with all of them matched.
func TestRetentionReadsCheckpointsInPages(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newRetentionEnv(t)
	const many = 5000
	events := make([]store.AuditEvent, many)
	for i := range events {
		events[i] = store.AuditEvent{Actor: "reader", Action: "AccessSecretVersion", Key: fmt.Sprintf("K%d", i), Version: 1, Outcome: store.OutcomeOK}
	}
	if err := e.service.AppendAudit(ctx, events); err != nil {
		t.Fatal(err)
	}
	storetest.SequenceAll(t, e.service)
	time.Sleep(1100 * time.Millisecond)
	n := int64(many + e.appendAcross(t, 0)) // the head moves past the partition
	signEvents(t, e.owner, e.signer, 1, n)
	// Forged rows below the chain (no walk reads them, and no partition
	// holds them), cheaply.
	exec(t, e.owner, `INSERT INTO audit_checkpoints (sequence, hash, time, key_id, signature)
		SELECT -g, '\x00', now(), 'junk', '\x00' FROM generate_series(0, 29999) g`)
	reads := &checkpointReads{}
	r := e.retention()
	r.Store = retentionPages{Store: e.job, reads: reads}
	res, err := r.Run(ctx)
	if err != nil || res.Exported == 0 || res.Rows < many {
		t.Fatalf("retention: %+v, %v; want the partition of %d events archived", res, err, many)
	}
	most, total, queries := reads.reset()
	t.Logf("retention of %d events: %d checkpoint rows read in %d queries, at most %d at once", res.Rows, total, queries, most)
	if most > maxCheckpointRowsPerRead {
		t.Errorf("retention: one read returned %d checkpoint rows; want at most a page (%d)", most, maxCheckpointRowsPerRead)
	}
	var carried int
	for _, o := range mustList(t, e.archive) {
		seg, err := e.archive.readSegment(ctx, o, e.log.Keys, nil)
		if err != nil {
			t.Fatal(err)
		}
		carried += len(seg.Checkpoints)
	}
	if int64(carried) != res.Rows {
		t.Errorf("the segments carry %d checkpoints, want one per archived event (%d)", carried, res.Rows)
	}
	full, err := e.log.VerifyArchives(ctx, e.archive, nil)
	if err != nil || !full.Intact || full.Events != n || int64(full.Checkpoints) != n {
		t.Fatalf("archives + table: %s (%v); want %d events and checkpoints matched", full.Summary(), err, n)
	}
}

func mustList(t *testing.T, a *Archive) []string {
	t.Helper()
	objs, err := a.list(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

// TestNewestTrustedSkipsForgedRows: the point a verification records when
// its walk met no checkpoint is the newest stored one signed by a trusted
// key at or before its start (and held by the anchor, with one), found
// newest first past forged rows.
func TestNewestTrustedSkipsForgedRows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newForgeEnv(t)
	e.append(t, 9) // checkpoints at 3, 6 and 9
	for _, seq := range []int64{7, 8} {
		if err := e.st.InsertCheckpoint(ctx, store.AuditCheckpoint{Sequence: seq, Hash: make([]byte, 32), Time: time.Now().UTC(),
			KeyID: e.log.Signer.ID(), Signature: make([]byte, 64)}); err != nil {
			t.Fatal(err)
		}
	}
	external, err := e.log.Anchor.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name         string
		checks       Checks
		upTo, downTo int64
		want         int64 // 0: none
	}{
		{"past forged rows", Checks{Keys: e.log.Keys}, 8, 0, 6},
		{"at the bound", Checks{Keys: e.log.Keys}, 9, 0, 9},
		{"none above the floor", Checks{Keys: e.log.Keys}, 5, 3, 0},
		{"no keys", Checks{}, 9, 0, 0},
		{"anchored", Checks{Keys: e.log.Keys, Anchored: true, External: external[:1]}, 9, 0, external[0].Sequence},
		{"anchor holds none", Checks{Keys: e.log.Keys, Anchored: true}, 9, 0, 0},
	} {
		c, err := e.log.newestTrusted(ctx, tc.checks, tc.upTo, tc.downTo)
		var got int64
		if c != nil {
			got = c.Sequence
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: newest trusted in (%d, %d]: %d (%v), want %d", tc.name, tc.downTo, tc.upTo, got, err, tc.want)
		}
	}
}
