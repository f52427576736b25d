package auditlog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	_ "gocloud.dev/blob/fileblob"

	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/migrations"
	"github.com/orient-bot/secrets/server/store"
	"github.com/orient-bot/secrets/server/store/storetest"
)

// retentionEnv is a database with one-second partitions, the service role's
// store (appending as the current release does), a store of a role that
// holds the retention privilege, and an archive folder.
type retentionEnv struct {
	owner      *pgx.Conn
	service    *store.Store
	job        *store.Store
	jobRole    string
	archiveDir string
	archive    *Archive
	signer     *Signer
	log        *Log
	// previous appends as a replica of the previous release does,
	// straight into audit_events under the head lock.
	previous previousRelease
}

func newRetentionEnv(t *testing.T) *retentionEnv {
	t.Helper()
	ctx := context.Background()
	admin := testdb.Admin(t)
	if strings.Contains(admin, "://") {
		t.Skip("needs the private test cluster (roles without passwords)")
	}
	// Roles are server-wide: names of this test's own, dropped after its
	// database (cleanups run last-registered first).
	suffix := fmt.Sprintf("%x", time.Now().UnixNano())
	retRole, jobRole := "ret_"+suffix, "retjob_"+suffix
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), admin)
		if err != nil {
			return
		}
		defer c.Close(context.Background())
		_, _ = c.Exec(context.Background(), `DROP ROLE IF EXISTS `+jobRole)
		_, _ = c.Exec(context.Background(), `DROP ROLE IF EXISTS `+retRole)
	})
	db := testdb.New(t)
	owner, err := pgx.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { owner.Close(context.Background()) })
	// One-second partitions from now on (the migration made day-long ones).
	var names []string
	rows, _ := owner.Query(ctx, `SELECT name FROM audit_partitions`)
	names, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		exec(t, owner, `DROP TABLE `+pgx.Identifier{n}.Sanitize())
	}
	exec(t, owner, `DELETE FROM audit_partitions`)
	exec(t, owner, `UPDATE audit_partitioning SET min_retention = interval '0'`) // the owner's floor, lowered for seconds-long retention
	exec(t, owner, `SELECT audit_ensure_partitions(now() + interval '1 minute', interval '1 second', now())`)

	// The job's role is an operator's login role holding nothing but
	// membership of the retention role (what secretsd audit prune runs as).
	if _, err := migrations.EnsureRetentionRole(ctx, db, retRole); err != nil {
		t.Fatal(err)
	}
	exec(t, owner, `CREATE ROLE `+jobRole+` LOGIN`)
	exec(t, owner, `GRANT `+retRole+` TO `+jobRole)
	svc, err := store.Open(ctx, testdb.ServiceURL(t, db), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	job, err := store.Open(ctx, db+" user="+jobRole, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(job.Close)
	dir := t.TempDir()
	a, err := OpenArchive(ctx, (&url.URL{Scheme: "file", Path: dir}).String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	signer, _, err := GenerateSigner(filepath.Join(t.TempDir(), "k"))
	if err != nil {
		t.Fatal(err)
	}
	anchor, err := OpenAnchor(ctx, (&url.URL{Scheme: "file", Path: t.TempDir()}).String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { anchor.Close() })
	oldConn, err := pgx.Connect(ctx, testdb.ServiceURL(t, db))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { oldConn.Close(context.Background()) })
	return &retentionEnv{owner: owner, service: svc, job: job, jobRole: jobRole, archiveDir: dir, archive: a, signer: signer,
		log: &Log{Store: svc, Signer: signer, Keys: NewKeys(signer.Public()), Anchor: anchor}, previous: previousRelease{conn: oldConn}}
}

func exec(t *testing.T, c *pgx.Conn, q string, args ...any) {
	t.Helper()
	if _, err := c.Exec(context.Background(), q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// appendAcross appends events for a while, crossing one-second partition
// boundaries, signing checkpoints as it goes: mostly through this release's
// intake and sequencer (sequenced_at = the sequencer's clock), every third
// batch as a replica of the previous release does (straight into
// audit_events, sequenced_at = the insert's clock), so both keep appending
// across partition boundaries.
func (e *retentionEnv) appendAcross(t *testing.T, seconds int) int {
	t.Helper()
	ctx := context.Background()
	n := 0
	end := time.Now().Add(time.Duration(seconds) * time.Second)
	for first := true; first || time.Now().Before(end); first = false {
		batch := make([]store.AuditEvent, 5)
		for i := range batch {
			batch[i] = store.AuditEvent{Actor: "reader", Action: "AccessSecretVersion", Key: fmt.Sprintf("K%d", n+i), Version: 1, Outcome: store.OutcomeOK}
		}
		if (n/len(batch))%3 == 2 {
			keys := make([]string, len(batch))
			for i := range batch {
				keys[i] = batch[i].Key
			}
			if err := e.previous.locked(ctx, keys); err != nil {
				t.Fatalf("previous release: %v", err)
			}
		} else {
			if err := e.service.AppendAudit(ctx, batch); err != nil {
				t.Fatal(err)
			}
			storetest.SequenceAll(t, e.service)
		}
		n += len(batch)
		if n%50 == 0 {
			if _, err := e.log.Checkpoint(ctx); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := e.log.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	return n
}

func (e *retentionEnv) retention() *Retention {
	return &Retention{Store: e.job, Archive: e.archive, Signer: e.signer, Keep: time.Millisecond}
}

// TestRetentionArchivesAndVerifies: events across several one-second
// partitions, written as the previous release writes them (across the
// boundaries), are archived as signed segments and their partitions
// dropped; the whole history verifies from archives plus table as one
// chain, the table alone verifies after the archived part, and the drops
// are audited under the retention job's role.
func TestRetentionArchivesAndVerifies(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newRetentionEnv(t)
	n := e.appendAcross(t, 3)
	// Each partition holds one contiguous run of the chain, in order.
	var parts, bad int
	if err := e.owner.QueryRow(ctx, `SELECT count(DISTINCT tableoid), count(*) FILTER (WHERE sequenced_at < lag)
		FROM (SELECT tableoid, sequenced_at, lag(sequenced_at) OVER (ORDER BY sequence) FROM audit_events) x`).Scan(&parts, &bad); err != nil {
		t.Fatal(err)
	}
	if parts < 3 || bad != 0 {
		t.Fatalf("%d events in %d partitions, %d out of order: want 3+ partitions in order", n, parts, bad)
	}
	time.Sleep(1100 * time.Millisecond)
	n += e.appendAcross(t, 0) // the head moves past the last full partition
	var progressed int64
	r := e.retention()
	r.Progress = func(_ string, rows int64) { progressed += rows }
	began := time.Now()
	res, err := r.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("retention: %+v in %v", res, time.Since(began))
	if res.Exported < 3 || res.Dropped < res.Exported || res.Rows == 0 || progressed != res.Rows {
		t.Fatalf("retention: %+v (progress %d): want 3+ segments exported and dropped", res, progressed)
	}
	var live, dropped, first int64
	if err := e.owner.QueryRow(ctx, `SELECT count(*) FILTER (WHERE state = 'live'), count(*) FILTER (WHERE state = 'dropped'),
		(SELECT min(sequence) FROM audit_events) FROM audit_partitions`).Scan(&live, &dropped, &first); err != nil {
		t.Fatal(err)
	}
	if dropped != int64(res.Dropped) || first != res.Rows+1 {
		t.Errorf("%d partitions dropped, table starts at %d; want %d dropped, start %d", dropped, first, res.Dropped, res.Rows+1)
	}
	// The drops are audited (through the intake), by the job's role.
	var audits int
	if err := e.owner.QueryRow(ctx, `SELECT count(*) FROM audit_intake WHERE action = 'audit.partition.drop' AND actor = $1
		AND detail LIKE 'partition audit_events_%'`, e.jobRole).Scan(&audits); err != nil {
		t.Fatal(err)
	}
	if audits != res.Dropped {
		t.Errorf("%d drop audit events, want %d", audits, res.Dropped)
	}
	// A second run has nothing to do.
	if again, err := e.retention().Run(ctx); err != nil || again.Exported+again.Reused+again.Dropped != 0 {
		t.Errorf("second run: %+v, %v", again, err)
	}
	// The whole history as one chain.
	full, err := e.log.VerifyArchives(ctx, e.archive, nil)
	if err != nil || !full.Intact || full.Events != int64(n) || full.Segments != res.Exported || full.External == 0 {
		t.Fatalf("archives + table: %+v, %v; want %d events in %d segments", full, err, n, res.Exported)
	}
	t.Log(full.Summary())
	// The table alone: intact after the archived part, and says so.
	tbl, err := e.log.Verify(ctx)
	if err != nil || !tbl.Intact || tbl.ArchivedThrough != res.Rows || tbl.Events != int64(n)-res.Rows ||
		!strings.Contains(tbl.Summary(), "archived and not checked here") {
		t.Fatalf("table: %+v, %v", tbl, err)
	}
	// An export of the table says where the archived part ends, and
	// verifies offline.
	var buf bytes.Buffer
	if _, err := e.log.Export(ctx, &buf, nil); err != nil {
		t.Fatal(err)
	}
	if ex, err := VerifyExport(&buf, Checks{Keys: e.log.Keys}); err != nil || !ex.Intact || ex.ArchivedThrough != res.Rows {
		t.Fatalf("export of the table after retention: %+v, %v", ex, err)
	}
	inc, err := e.log.VerifyIncremental(ctx)
	if err != nil || !inc.Intact || inc.Events >= tbl.Events {
		t.Fatalf("incremental after a full verify: %+v, %v; want fewer than %d events walked", inc, err, tbl.Events)
	}
	// It started from a checkpoint the anchor holds, and says the events up
	// to it are anchored (it said the external checkpoints covered nothing).
	if inc.From <= inc.ChainStart || inc.AnchoredThrough < inc.From || strings.Contains(inc.Summary(), "cover nothing") {
		t.Errorf("incremental after an anchored verify: from %d, anchored through %d: %s", inc.From, inc.AnchoredThrough, inc.Summary())
	}
	segments, err := e.archive.list(ctx)
	if err != nil || len(segments) != res.Exported {
		t.Fatalf("segments %v, %v", segments, err)
	}
	verifyBroken := func(what, segment, want string) {
		t.Helper()
		got, err := e.log.VerifyArchives(ctx, e.archive, nil)
		t.Logf("%s: %s", what, got.Summary())
		if err != nil || got.Intact || !strings.Contains(got.Reason, segment) || !strings.Contains(got.Reason, want) {
			t.Errorf("%s: %+v, %v; want not intact, naming %s (%s)", what, got, err, segment, want)
		}
	}
	// A tampered archive: one event's actor changed, the JSON still valid.
	victim := filepath.Join(e.archiveDir, segments[1])
	orig, err := os.ReadFile(victim)
	if err != nil {
		t.Fatal(err)
	}
	tampered := strings.Replace(string(orig), `"actor":"reader"`, `"actor":"READER"`, 1)
	if err := os.WriteFile(victim, []byte(tampered), 0o600); err != nil {
		t.Fatal(err)
	}
	verifyBroken("tampered segment", segments[1], "altered")
	// A deleted archive.
	if err := os.Remove(victim); err != nil {
		t.Fatal(err)
	}
	verifyBroken("deleted segment", segments[1], "missing")
	// Reordered: two segments swapped.
	if err := os.WriteFile(victim, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	if ok, err := e.log.VerifyArchives(ctx, e.archive, nil); err != nil || !ok.Intact {
		t.Fatalf("restored: %+v, %v", ok, err)
	}
	a, b := filepath.Join(e.archiveDir, segments[0]), filepath.Join(e.archiveDir, segments[2])
	ab, _ := os.ReadFile(a)
	bb, _ := os.ReadFile(b)
	_ = os.WriteFile(a, bb, 0o600)
	_ = os.WriteFile(b, ab, 0o600)
	verifyBroken("reordered segments", segments[0], "reordered")
}

// TestRetentionCrashBetweenExportAndDrop: a run that stops after writing a
// segment, or after recording it, loses nothing and writes nothing twice:
// the next run finds and checks the segment (or the record) and finishes.
func TestRetentionCrashBetweenExportAndDrop(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newRetentionEnv(t)
	n := e.appendAcross(t, 2)
	time.Sleep(1100 * time.Millisecond)
	n += e.appendAcross(t, 0)
	crash := errors.New("crash")
	state := func(name string) string {
		var s string
		if err := e.owner.QueryRow(ctx, `SELECT state FROM audit_partitions WHERE name = $1`, name).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	// Crash after the export: the segment is written, the partition live.
	var victim string
	r := e.retention()
	r.hooks.afterExport = func(p string) error {
		if _, err := os.Stat(filepath.Join(e.archiveDir, SegmentObject(p))); err != nil {
			return nil // an empty partition: no segment
		}
		victim = p
		return crash
	}
	if _, err := r.Run(ctx); !errors.Is(err, crash) {
		t.Fatalf("run: %v", err)
	}
	if state(victim) != "live" {
		t.Fatalf("%s: %s after a crash before recording", victim, state(victim))
	}
	object := filepath.Join(e.archiveDir, SegmentObject(victim))
	before, err := os.Stat(object)
	if err != nil {
		t.Fatal(err)
	}
	// Crash after recording it: archived, not dropped.
	r = e.retention()
	r.hooks.afterRecord = func(p string) error { return crash }
	res, err := r.Run(ctx)
	if !errors.Is(err, crash) || res.Exported != 0 || res.Reused != 1 {
		t.Fatalf("rerun after the export: %+v, %v; want the segment reused, not written again", res, err)
	}
	if state(victim) != "archived" {
		t.Fatalf("%s: %s after a crash before dropping", victim, state(victim))
	}
	// The next run drops it, and goes on.
	res, err = e.retention().Run(ctx)
	if err != nil || res.Dropped < 2 {
		t.Fatalf("rerun after recording: %+v, %v", res, err)
	}
	after, err := os.Stat(object)
	if err != nil || !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("segment %s rewritten (%v, %v)", object, before.ModTime(), err)
	}
	if state(victim) != "dropped" {
		t.Errorf("%s: %s", victim, state(victim))
	}
	full, err := e.log.VerifyArchives(ctx, e.archive, nil)
	if err != nil || !full.Intact || full.Events != int64(n) {
		t.Fatalf("after the crashes: %+v, %v; want %d events intact", full, err, n)
	}
	// A partially written object is never left behind: an export that
	// fails midway cancels its write.
	r = e.retention()
	if err := r.Archive.write(ctx, "audit_events_20000101t000000.jsonl", func(w io.Writer) error {
		_, _ = w.Write([]byte("partial"))
		return crash
	}); !errors.Is(err, crash) {
		t.Fatalf("write: %v", err)
	}
	if _, err := os.Stat(filepath.Join(e.archiveDir, "audit_events_20000101t000000.jsonl")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed export left an object: %v", err)
	}
}

// TestRetentionPrivilege: the service role may neither drop a partition
// nor delete events; the retention role may drop only what was recorded
// archived, with its rows matching.
func TestRetentionPrivilege(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newRetentionEnv(t)
	e.appendAcross(t, 0)
	var name string
	if err := e.owner.QueryRow(ctx, `SELECT name FROM audit_partitions ORDER BY from_time LIMIT 1`).Scan(&name); err != nil {
		t.Fatal(err)
	}
	if ok, err := e.service.CanRetainAudit(ctx); err != nil || ok {
		t.Fatalf("service role may retain: %v, %v", ok, err)
	}
	if ok, err := e.job.CanRetainAudit(ctx); err != nil || !ok {
		t.Fatalf("retention role may not retain: %v, %v", ok, err)
	}
	denied := func(what string, err error) {
		t.Helper()
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "42501" {
			t.Errorf("%s as the service role: %v, want permission denied", what, err)
		}
	}
	denied("audit_drop_partition", e.service.DropAuditPartition(ctx, name))
	denied("audit_record_archive", e.service.RecordAuditArchive(ctx, name, "", nil, nil, nil))
	svc, err := pgx.Connect(ctx, testdb.ServiceURL(t, e.owner.Config().ConnString()))
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close(ctx)
	for _, q := range []string{`DELETE FROM audit_events`, `TRUNCATE audit_events`, `DROP TABLE ` + name,
		`ALTER TABLE audit_events DETACH PARTITION ` + name} {
		if _, err := svc.Exec(ctx, q); err == nil {
			t.Errorf("service role: %s succeeded", q)
		}
	}
	// The retention role cannot drop a live partition, nor record one that
	// is not complete, nor a wrong range.
	if err := e.job.DropAuditPartition(ctx, name); err == nil || !strings.Contains(err.Error(), "not archived") {
		t.Errorf("drop of a live partition: %v", err)
	}
	one, two := int64(1), int64(2)
	if err := e.job.RecordAuditArchive(ctx, name, "x.jsonl", make([]byte, 32), &one, &two); err == nil {
		t.Errorf("recording a partition that is not complete (or a wrong range) succeeded")
	}
	var count int64
	if err := e.owner.QueryRow(ctx, `SELECT count(*) FROM audit_events`).Scan(&count); err != nil || count == 0 {
		t.Fatalf("events: %d, %v", count, err)
	}
}

// TestRetentionFloorAndSealedPartition: whoever holds the retention
// privilege can archive (and so drop) only partitions older than the
// owner's floor, whatever archive it claims; and a partition recorded as
// archived refuses rows from then on (an insert naming its time, as the
// service role may, or a clock stepped back), so nothing lands in it that
// its archive lacks.
func TestRetentionFloorAndSealedPartition(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newRetentionEnv(t)
	e.appendAcross(t, 1)
	time.Sleep(1100 * time.Millisecond)
	e.appendAcross(t, 0) // the head moves past the full partitions
	var name string
	var first, last int64
	if err := e.owner.QueryRow(ctx, `SELECT p.name, r.first_seq, r.last_seq FROM audit_partitions p,
			audit_partition_rows(p.from_time, p.to_time) r
		WHERE r.n > 0 ORDER BY p.from_time LIMIT 1`).Scan(&name, &first, &last); err != nil {
		t.Fatal(err)
	}
	exec(t, e.owner, `UPDATE audit_partitioning SET min_retention = interval '1 day'`)
	err := e.job.RecordAuditArchive(ctx, name, "forged.jsonl", make([]byte, 32), &first, &last)
	if err == nil || !strings.Contains(err.Error(), "minimum retention") {
		t.Fatalf("recording an archive of a partition younger than the floor: %v, want refused", err)
	}
	exec(t, e.owner, `UPDATE audit_partitioning SET min_retention = interval '0'`)
	if err := e.job.RecordAuditArchive(ctx, name, name+".jsonl", make([]byte, 32), &first, &last); err != nil {
		t.Fatal(err)
	}
	svc, err := pgx.Connect(ctx, testdb.ServiceURL(t, e.owner.Config().ConnString()))
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close(ctx)
	var from time.Time
	if err := e.owner.QueryRow(ctx, `SELECT from_time FROM audit_partitions WHERE name = $1`, name).Scan(&from); err != nil {
		t.Fatal(err)
	}
	_, err = svc.Exec(ctx, `INSERT INTO audit_events (sequence, time, actor, action, outcome, sequenced_at)
		VALUES ($1, now(), 'mallory', 'AccessSecretVersion', 'OK', $2)`, last+1_000_000, from)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "23514" {
		t.Fatalf("insert into an archived partition: %v, want a check violation", err)
	}
	if err := e.job.DropAuditPartition(ctx, name); err != nil {
		t.Fatalf("drop of the archived partition: %v", err)
	}
}

// TestRetentionRefusesUntrustedCheckpoints: retention signs a segment with
// the trusted key and then drops the database's copy, so a partition whose
// checkpoints are forged, or do not match its events, is not archived.
func TestRetentionRefusesUntrustedCheckpoints(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, tc := range []struct {
		name, want string
		forge      func(e *retentionEnv, seq int64) store.AuditCheckpoint
	}{
		{"unsigned", "not signed by a trusted key", func(e *retentionEnv, seq int64) store.AuditCheckpoint {
			other, _, err := GenerateSigner(filepath.Join(t.TempDir(), "other"))
			if err != nil {
				t.Fatal(err)
			}
			return store.AuditCheckpoint(other.Sign(seq, make([]byte, 32), time.Now()))
		}},
		{"mismatched", "does not match its signed checkpoint", func(e *retentionEnv, seq int64) store.AuditCheckpoint {
			return store.AuditCheckpoint(e.signer.Sign(seq, make([]byte, 32), time.Now()))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newRetentionEnv(t)
			e.appendAcross(t, 1)
			time.Sleep(1100 * time.Millisecond)
			e.appendAcross(t, 0)
			// An event of the first non-empty partition without a checkpoint.
			var seq int64
			if err := e.owner.QueryRow(ctx, `SELECT min(e.sequence) + 1 FROM audit_events e
				WHERE e.sequenced_at < (SELECT min(to_time) FROM audit_partitions p, audit_partition_rows(p.from_time, p.to_time) r WHERE r.n > 1)
				AND NOT EXISTS (SELECT FROM audit_checkpoints c WHERE c.sequence = e.sequence + 1)`).Scan(&seq); err != nil {
				t.Fatal(err)
			}
			if err := e.service.InsertCheckpoint(ctx, tc.forge(e, seq)); err != nil {
				t.Fatal(err)
			}
			_, err := e.retention().Run(ctx)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("retention over a forged checkpoint: %v, want %q", err, tc.want)
			}
			// The partition holding the forged checkpoint's event (and so
			// every one after it) stays live; only empty ones before it may
			// have been recorded.
			var state string
			if err := e.owner.QueryRow(ctx, `SELECT p.state FROM audit_partitions p JOIN audit_events e
				ON e.sequenced_at >= p.from_time AND e.sequenced_at < p.to_time WHERE e.sequence = $1`, seq).Scan(&state); err != nil || state != "live" {
				t.Errorf("the partition of event %d: %q, %v; want live", seq, state, err)
			}
			var archived int
			if err := e.owner.QueryRow(ctx, `SELECT count(*) FROM audit_partitions WHERE state <> 'live' AND first_seq IS NOT NULL`).Scan(&archived); err != nil || archived != 0 {
				t.Errorf("%d non-empty partitions archived or dropped, %v; want none", archived, err)
			}
		})
	}
}
