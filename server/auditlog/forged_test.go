package auditlog

import (
	"bytes"
	"context"
	"fmt"
	"iter"
	"log/slog"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/server/store"
)

// forgeEnv is a migrated database with the service role's store, a raw
// service-role connection, an owner connection, a signer and a file anchor:
// the log as secretsd runs it, and the two roles that could forge rows.
type forgeEnv struct {
	owner *pgx.Conn
	svc   *pgx.Conn
	st    *store.Store
	log   *Log
}

func newForgeEnv(t *testing.T) *forgeEnv {
	t.Helper()
	ctx := context.Background()
	db := testdb.New(t)
	owner, err := pgx.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { owner.Close(context.Background()) })
	svc, err := pgx.Connect(ctx, testdb.ServiceURL(t, db))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close(context.Background()) })
	st := openStore(t, testdb.ServiceURL(t, db))
	signer, _, err := GenerateSigner(filepath.Join(t.TempDir(), "k"))
	if err != nil {
		t.Fatal(err)
	}
	anchor, err := OpenAnchor(ctx, (&url.URL{Scheme: "file", Path: t.TempDir()}).String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { anchor.Close() })
	return &forgeEnv{owner: owner, svc: svc, st: st,
		log: &Log{Store: st, Signer: signer, Keys: NewKeys(signer.Public()), Anchor: anchor}}
}

// append chains n events, one at a time, checkpointing every third.
func (e *forgeEnv) append(t *testing.T, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if err := e.st.AppendAudit(context.Background(), []store.AuditEvent{{Actor: "reader", Action: "AccessSecretVersion",
			Key: fmt.Sprintf("K%d", i), Version: 1, Outcome: store.OutcomeOK}}); err != nil {
			t.Fatal(err)
		}
		flush(t, e.st)
		if i%3 == 2 {
			if _, err := e.log.Checkpoint(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := e.log.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func (e *forgeEnv) head(t *testing.T) int64 {
	t.Helper()
	var h int64
	if err := e.svc.QueryRow(context.Background(), `SELECT sequence FROM audit_head`).Scan(&h); err != nil {
		t.Fatal(err)
	}
	return h
}

// forgeAsOwner inserts an event numbered seq as the tables' owner with the
// triggers off (the service role cannot: migration 00014 refuses it; a
// database restored from an older release may hold such rows already).
func (e *forgeEnv) forgeAsOwner(t *testing.T, seq int64) {
	t.Helper()
	exec(t, e.owner, `SET session_replication_role = replica`)
	exec(t, e.owner, `INSERT INTO audit_events (sequence, time, actor, action, key, version, outcome)
		VALUES ($1, now() - interval '3 days', 'alice', 'AccessSecretVersion', 'FORGED', 1, 'OK')`, seq)
	exec(t, e.owner, `SET session_replication_role = origin`)
}

func wantNotIntact(t *testing.T, what string, r Result, err error, firstBad int64, reason string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if r.Intact || r.FirstBad != firstBad || !strings.Contains(r.Reason, reason) {
		t.Errorf("%s: %s; want not intact at %d, %q", what, r.Summary(), firstBad, reason)
	}
}

// TestVerifyReportsRowsOutsideTheWalk: a row the walk of (start, head]
// never reads, but the audit listing shows, makes the log not intact: one
// past the head (both modes), a second event with a chained sequence
// (full), and one at or below the events the catalog says retention
// dropped (both modes; here the owner marked a live partition dropped).
func TestVerifyReportsRowsOutsideTheWalk(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	t.Run("past the head", func(t *testing.T) {
		t.Parallel()
		e := newForgeEnv(t)
		e.append(t, 10)
		if r, err := e.log.VerifyIncremental(ctx); err != nil || !r.Intact {
			t.Fatalf("baseline: %+v %v", r, err)
		}
		h := e.head(t)
		e.forgeAsOwner(t, h+1000)
		r, err := e.log.VerifyIncremental(ctx)
		wantNotIntact(t, "incremental", r, err, h+1000, "past the chain head")
		r, err = e.log.Verify(ctx)
		wantNotIntact(t, "full", r, err, h+1000, "past the chain head")
	})
	t.Run("duplicate", func(t *testing.T) {
		t.Parallel()
		e := newForgeEnv(t)
		e.append(t, 10)
		e.forgeAsOwner(t, 2)
		r, err := e.log.Verify(ctx)
		wantNotIntact(t, "full", r, err, 2, "more than one event numbered 2")
	})
	t.Run("below the archived", func(t *testing.T) {
		t.Parallel()
		e := newForgeEnv(t)
		e.append(t, 9)
		exec(t, e.owner, `SET session_replication_role = replica`)
		exec(t, e.owner, `UPDATE audit_events SET actor = 'nobody', key = 'EDITED' WHERE sequence = 4`)
		exec(t, e.owner, `UPDATE audit_partitions SET state = 'dropped', first_seq = 1, last_seq = 5
			WHERE name = (SELECT tableoid::regclass::text FROM audit_events WHERE sequence = 4)`)
		for name, verify := range map[string]func(context.Context) (Result, error){"full": e.log.Verify, "incremental": e.log.VerifyIncremental} {
			r, err := verify(ctx)
			wantNotIntact(t, name, r, err, 1, "archived and dropped")
		}
	})
}

// dropDuring runs a retention pass just before the table's events are
// read: what a server's retention job does while an auditor's
// verification runs.
type dropDuring struct {
	*store.Store
	before func()
}

func (d dropDuring) AuditEvents(ctx context.Context, after, upTo int64) iter.Seq2[store.AuditEvent, error] {
	if d.before != nil {
		d.before()
	}
	return d.Store.AuditEvents(ctx, after, upTo)
}

// TestVerifyRetriesWhenRetentionDrops: retention drops a partition between
// a verification's read of the partition catalog and its walk of the
// table; the verification starts again from the new catalog instead of
// reporting the dropped events as deleted.
func TestVerifyRetriesWhenRetentionDrops(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newRetentionEnv(t)
	e.appendAcross(t, 3)
	time.Sleep(1100 * time.Millisecond)
	e.appendAcross(t, 0)
	// Archive the first partition only, so that the race has more to drop.
	parts, err := e.service.AuditPartitions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := e.retention()
	r.Keep = time.Since(parts[1].To)
	if res, err := r.Run(ctx); err != nil || res.Dropped == 0 {
		t.Fatalf("first retention: %+v %v", res, err)
	}
	for _, mode := range []string{"verify", "archives"} {
		ran := false
		l := *e.log
		l.Store = dropDuring{Store: e.service, before: func() {
			if ran {
				return
			}
			ran = true
			if res, err := e.retention().Run(ctx); err != nil || res.Dropped == 0 {
				t.Errorf("%s: retention meanwhile: %+v %v", mode, res, err)
			}
		}}
		var res Result
		if mode == "verify" {
			res, err = l.Verify(ctx)
		} else {
			res, err = l.VerifyArchives(ctx, e.archive, nil)
		}
		if err != nil || !res.Intact || !ran {
			t.Errorf("%s with retention dropping partitions meanwhile: %s (%v; retention ran: %v)", mode, res.Summary(), err, ran)
		}
		e.appendAcross(t, 2)
		time.Sleep(1100 * time.Millisecond)
		e.appendAcross(t, 0)
	}
}

// TestCheckpointIgnoresForgedRows: a row the service role inserted into
// audit_checkpoints past the head (or at the head, not signed by a trusted
// key) does not stop the next checkpoint, and is logged; Checkpoint reads
// only the newest rows, not the whole table it runs against every
// interval.
func TestCheckpointIgnoresForgedRows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newForgeEnv(t)
	var logs bytes.Buffer
	e.log.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	e.append(t, 3)
	if _, err := e.svc.Exec(ctx, `INSERT INTO audit_checkpoints (sequence, hash, time, key_id, signature)
		VALUES (9000000000000000000, '\x00', now(), 'x', '\x00')`); err != nil {
		t.Fatal(err)
	}
	if err := e.st.AppendAudit(ctx, []store.AuditEvent{{Actor: "r", Action: "A", Outcome: store.OutcomeOK}}); err != nil {
		t.Fatal(err)
	}
	flush(t, e.st)
	h := e.head(t)
	// And a forged one at the head itself, before the signer gets to it.
	if _, err := e.svc.Exec(ctx, `INSERT INTO audit_checkpoints (sequence, hash, time, key_id, signature)
		VALUES ($1, '\x00', now(), 'x', '\x00')`, h); err != nil {
		t.Fatal(err)
	}
	seq, err := e.log.Checkpoint(ctx)
	if err != nil || seq != h {
		t.Fatalf("Checkpoint with forged rows stored: signed %d (%v), want the head %d", seq, err, h)
	}
	ext, err := e.log.Anchor.List(ctx)
	if err != nil || len(ext) == 0 || ext[len(ext)-1].Sequence != h {
		t.Fatalf("anchor: %d checkpoints (%v), want the newest at %d", len(ext), err, h)
	}
	if !strings.Contains(logs.String(), "past the chain head is not signed by a trusted key") || !strings.Contains(logs.String(), "sequence=9000000000000000000") {
		t.Errorf("no warning about the forged checkpoint past the head; log:\n%s", logs.String())
	}
	e.append(t, 2)
	if seq, err := e.log.Checkpoint(ctx); err != nil || seq != 0 {
		t.Errorf("Checkpoint of a head signed already: %d, %v; want 0", seq, err)
	}
}

// TestIncrementalSkipsForgedProgress: progress records the service role
// inserted (unsigned, or under the trusted key's id with a bad signature,
// more than a page of them) do not crowd out the real one: incremental
// verification still starts from it instead of walking everything.
func TestIncrementalSkipsForgedProgress(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newForgeEnv(t)
	e.append(t, 12)
	if r, err := e.log.VerifyIncremental(ctx); err != nil || !r.Intact {
		t.Fatal(r, err)
	}
	before, err := e.log.VerifyIncremental(ctx)
	if err != nil || !before.Intact || before.From == 0 {
		t.Fatalf("second incremental run did not resume: %s (%v)", before.Summary(), err)
	}
	h := e.head(t)
	var hash []byte
	if err := e.svc.QueryRow(ctx, `SELECT hash FROM audit_head`).Scan(&hash); err != nil {
		t.Fatal(err)
	}
	for i := range 16 + 65 {
		keyID := "x"
		if i >= 16 {
			keyID = e.log.Signer.ID()
		}
		if _, err := e.svc.Exec(ctx, `INSERT INTO audit_verified (sequence, hash, verified_at, key_id, signature)
			VALUES ($1, $2, now() + make_interval(secs => $3), $4, '\x00')`, h, hash, i, keyID); err != nil {
			t.Fatal(err)
		}
	}
	after, err := e.log.VerifyIncremental(ctx)
	if err != nil || !after.Intact || after.From != before.From || after.Events != before.Events {
		t.Errorf("incremental after forged progress records: %s (%v); want it to resume from %d as before (%d events)",
			after.Summary(), err, before.From, before.Events)
	}
}

// TestLoadSignerDoesNotEchoTheKey: a signing key given as the option's
// value instead of a file path is not repeated in the error (which ends up
// in a log or a terminal); the error says a path is expected.
func TestLoadSignerDoesNotEchoTheKey(t *testing.T) {
	t.Parallel()
	const seed = "q1w2e3r4t5y6u7i8o9p0a1s2d3f4g5h6j7k8l9z0x1c="
	_, err := LoadSigner(seed)
	if err == nil || strings.Contains(err.Error(), seed) || strings.Contains(err.Error(), seed[:12]) {
		t.Fatalf("LoadSigner(a key instead of a path): %v", err)
	}
	if !strings.Contains(err.Error(), "path of a file") {
		t.Errorf("LoadSigner error does not say a path is expected: %v", err)
	}
}

// TestIncrementalReadsTheAnchorFromItsStart: an incremental verification
// reads only the anchor's checkpoints from its starting point on (a year
// of minute checkpoints is 525,600 files): an unreadable file before it is
// not read, while a full verification still reads, and refuses, it.
func TestIncrementalReadsTheAnchorFromItsStart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newForgeEnv(t)
	e.append(t, 9)
	if r, err := e.log.VerifyIncremental(ctx); err != nil || !r.Intact {
		t.Fatal(r, err)
	}
	if err := e.log.Anchor.bucket.WriteAll(ctx, anchorKey(1), []byte("not a checkpoint"), nil); err != nil {
		t.Fatal(err)
	}
	e.append(t, 3)
	r, err := e.log.VerifyIncremental(ctx)
	if err != nil || !r.Intact || r.From == 0 {
		t.Errorf("incremental with an unreadable anchor file before its start: %s (%v); want it to resume, not read the file", r.Summary(), err)
	}
	if r, err := e.log.Verify(ctx); err == nil {
		t.Errorf("full verification read past an unreadable anchor file: %s", r.Summary())
	}
}
