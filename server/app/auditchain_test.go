package app_test

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/internal/testserver"
	"github.com/orient-bot/secrets/server/app"
	"github.com/orient-bot/secrets/server/auditlog"
	"github.com/orient-bot/secrets/server/store"
)

// waitCheckpoint waits until a signed checkpoint covers the chain head.
func waitCheckpoint(t *testing.T, conn *pgx.Conn) int64 {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		// The head once the sequencer chained every committed event.
		var head, cp int64
		var waiting bool
		if err := conn.QueryRow(context.Background(), `SELECT (SELECT sequence FROM audit_head),
			COALESCE((SELECT max(sequence) FROM audit_checkpoints), 0), EXISTS (SELECT FROM audit_intake)`).Scan(&head, &cp, &waiting); err != nil {
			t.Fatal(err)
		}
		if !waiting && cp == head && head > 0 {
			return cp
		}
		if time.Now().After(deadline) {
			t.Fatalf("no checkpoint at head %d (last %d)", head, cp)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAuditTamperEvident builds a chain with signed checkpoints, then
// tampers with copies of the database in every way the issue names and
// checks that verification reports each at the right sequence.
func TestAuditTamperEvident(t *testing.T) {
	t.Parallel()
	keyFile := filepath.Join(t.TempDir(), "audit.key")
	signer, _, err := auditlog.GenerateSigner(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	db := testdb.New(t)
	srv := testserver.Start(t, testserver.Options{DatabaseURL: db, Configure: func(c *app.Config) {
		c.AuditSigningKey = keyFile
		c.AuditCheckpointInterval = 20 * time.Millisecond
	}})
	ctx := context.Background()
	conn := dbConn(t, db)
	// Four events, then a checkpoint exactly at 4.
	put(t, srv.Secrets, "CHAIN_A", "a1")
	access(srv.Secrets, "CHAIN_A", "latest")
	put(t, srv.Secrets, "CHAIN_A", "a2")
	access(srv.Secrets, "CHAIN_A", "latest")
	if cp := waitCheckpoint(t, conn); cp != 4 {
		t.Fatalf("first checkpoint at %d, want 4", cp)
	}
	for i := range 5 {
		put(t, srv.Secrets, "CHAIN_B", fmt.Sprint("b", i))
		access(srv.Secrets, "CHAIN_B", "latest")
	}
	access(srv.Secrets, "MISSING", "latest") // a failure, audited too
	last := waitCheckpoint(t, conn)
	if last != 15 {
		t.Fatalf("last checkpoint at %d, want 15", last)
	}
	res, err := srv.Audit.VerifyAuditLog(ctx, &pb.VerifyAuditLogRequest{})
	if err != nil || !res.Intact || res.VerifiedThrough != 15 || res.CheckpointsChecked < 2 || !res.Signed {
		t.Fatalf("live verify: %v, %v", res, err)
	}
	// The value HMAC is recorded for writes, never the value.
	var hmacs int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM audit_events WHERE action = 'PutSecret' AND length(value_hmac) = 32`).Scan(&hmacs); err != nil || hmacs != 7 {
		t.Fatalf("value HMACs on writes: %d, %v", hmacs, err)
	}
	// The service's role cannot rewrite history (append-only trigger).
	if _, err := conn.Exec(ctx, `UPDATE audit_events SET detail = 'x' WHERE sequence = 1`); err == nil {
		t.Fatal("audit_events accepted an UPDATE")
	}
	srv.Stop()

	tamper := map[string]struct {
		sql      []string
		edit     func(t *testing.T, c *pgx.Conn)
		firstBad int64
		reason   string
	}{
		"untouched":    {firstBad: 0},
		"edited":       {sql: []string{`UPDATE audit_events SET actor = 'mallory' WHERE sequence = 5`}, firstBad: 5, reason: "edited"},
		"deleted":      {sql: []string{`DELETE FROM audit_events WHERE sequence = 5`}, firstBad: 5, reason: "deleted"},
		"tail deleted": {sql: []string{`DELETE FROM audit_events WHERE sequence = 15`}, firstBad: 15, reason: "deleted"},
		"reordered": {sql: []string{
			`UPDATE audit_events SET sequence = -5 WHERE sequence = 5`,
			`UPDATE audit_events SET sequence = 5 WHERE sequence = 6`,
			`UPDATE audit_events SET sequence = 6 WHERE sequence = -5`}, firstBad: 5, reason: "reordered"},
		"inserted": {edit: func(t *testing.T, c *pgx.Conn) {
			var prev []byte
			if err := c.QueryRow(ctx, `SELECT hash FROM audit_events WHERE sequence = 4`).Scan(&prev); err != nil {
				t.Fatal(err)
			}
			forged := store.AuditEvent{Time: time.Now().Truncate(time.Microsecond), Actor: "admin", Action: "AccessSecretVersion",
				Key: "CHAIN_A", Version: 1, Outcome: "OK"}
			forged.Hash = store.EventHash(prev, forged)
			for _, q := range []string{`UPDATE audit_events SET sequence = sequence + 1000 WHERE sequence >= 5`,
				`UPDATE audit_events SET sequence = sequence - 999 WHERE sequence >= 1000`,
				`UPDATE audit_head SET sequence = sequence + 1`} {
				if _, err := c.Exec(ctx, q); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := c.Exec(ctx, `INSERT INTO audit_events (sequence, time, actor, action, key, version, outcome, prev_hash, hash)
				VALUES (5, $1, $2, $3, $4, $5, $6, $7, $8)`, forged.Time, forged.Actor, forged.Action, forged.Key, forged.Version,
				forged.Outcome, prev, forged.Hash); err != nil {
				t.Fatal(err)
			}
		}, firstBad: 5, reason: "inserted"},
		"rewritten": {edit: func(t *testing.T, c *pgx.Conn) {
			// Change event 5 and recompute every hash after it, and the
			// head: the chain is consistent again, only the signed
			// checkpoint at 15 can tell.
			st, err := store.Open(ctx, withDatabase(t, db, c.Config().Database), store.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			var events []store.AuditEvent
			for e, err := range st.AuditEvents(ctx, 0, math.MaxInt64) {
				if err != nil {
					t.Fatal(err)
				}
				events = append(events, e)
			}
			prev := events[3].Hash
			for i := 4; i < len(events); i++ {
				e := events[i]
				if e.Sequence == 5 {
					e.Actor = "mallory"
				}
				e.PrevHash, e.Hash = prev, store.EventHash(prev, e)
				prev = e.Hash
				if _, err := c.Exec(ctx, `UPDATE audit_events SET actor = $2, prev_hash = $3, hash = $4 WHERE sequence = $1`,
					e.Sequence, e.Actor, e.PrevHash, e.Hash); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := c.Exec(ctx, `UPDATE audit_head SET hash = $1`, prev); err != nil {
				t.Fatal(err)
			}
		}, firstBad: 5, reason: "rewritten"},
	}
	admin := dbConn(t, testdb.Admin(t))
	var source string
	if err := conn.QueryRow(ctx, `SELECT current_database()`).Scan(&source); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	i := 0
	for name, tc := range tamper {
		i++
		copyName := fmt.Sprintf("%s_t%d", source, i)
		exec(t, admin, fmt.Sprintf(`CREATE DATABASE %s TEMPLATE %s`, pgx.Identifier{copyName}.Sanitize(), pgx.Identifier{source}.Sanitize()))
		t.Cleanup(func() {
			admin.Exec(context.Background(), fmt.Sprintf(`DROP DATABASE IF EXISTS %s WITH (FORCE)`, pgx.Identifier{copyName}.Sanitize()))
		})
		copyURL := withDatabase(t, db, copyName)
		c, err := pgx.Connect(ctx, copyURL)
		if err != nil {
			t.Fatal(err)
		}
		exec(t, c, `SET session_replication_role = replica`) // the attacker bypasses the trigger
		for _, q := range tc.sql {
			exec(t, c, q)
		}
		if tc.edit != nil {
			tc.edit(t, c)
		}
		st, err := store.Open(ctx, copyURL, store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		log := &auditlog.Log{Store: st, Keys: auditlog.NewKeys(signer.Public())}
		res, err := log.Verify(ctx)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if tc.firstBad == 0 {
			if !res.Intact || res.VerifiedThrough != 15 {
				t.Errorf("%s: %+v, want intact through 15", name, res)
			}
		} else if res.Intact || res.FirstBad != tc.firstBad || !strings.HasPrefix(res.Reason, tc.reason) {
			t.Errorf("%s: %+v, want first bad %d (%s)", name, res, tc.firstBad, tc.reason)
		}
		// The same verdict offline, from an export.
		var buf bytes.Buffer
		if _, err := log.Export(ctx, &buf, nil); err != nil {
			t.Fatal(err)
		}
		off, err := auditlog.VerifyExport(&buf, auditlog.Checks{Keys: auditlog.NewKeys(signer.Public())})
		if err != nil || off.Intact != res.Intact || off.FirstBad != res.FirstBad {
			t.Errorf("%s: export verdict %+v (%v), database verdict %+v", name, off, err, res)
		}
		st.Close()
		c.Close(ctx)
	}
}

// withDatabase returns connString naming another database.
func withDatabase(t *testing.T, connString, name string) string {
	t.Helper()
	if u, err := url.Parse(connString); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		u.Path = "/" + name
		return u.String()
	}
	re := regexp.MustCompile(`dbname=('[^']*'|\S+)`)
	if !re.MatchString(connString) {
		t.Fatalf("cannot find dbname in the test connection string")
	}
	return re.ReplaceAllString(connString, "dbname="+name)
}

// TestAuditPipelineThroughTheAPI: an access is answered while the chain
// head is locked (its event commits to the intake without it);
// VerifyAuditLog then reports it waiting, with its age, and covers only the
// sequenced events; once the head is free, a listing shows the event (the
// replica chains its own intake before it lists) and nothing waits.
func TestAuditPipelineThroughTheAPI(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testdb.New(t)
	srv := testserver.Start(t, testserver.Options{DatabaseURL: db})
	put(t, srv.Secrets, "PIPE_KEY", "v")
	// Everything so far is chained.
	if _, err := srv.Audit.ListAuditEvents(ctx, &pb.ListAuditEventsRequest{}); err != nil {
		t.Fatal(err)
	}
	conn := dbConn(t, db)
	lock, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Rollback(ctx)
	if _, err := lock.Exec(ctx, `SELECT FROM audit_head FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := srv.Secrets.AccessSecretVersion(actx, &pb.AccessSecretVersionRequest{Key: "PIPE_KEY", Version: "latest"}); err != nil {
		t.Fatalf("access while the chain head is locked: %v", err)
	}
	time.Sleep(20 * time.Millisecond)
	res, err := srv.Audit.VerifyAuditLog(ctx, &pb.VerifyAuditLogRequest{})
	if err != nil || !res.GetIntact() || res.GetEventsWaiting() != 1 || res.GetOldestWaiting().AsDuration() < 20*time.Millisecond {
		t.Fatalf("verify with an access waiting: %v, %v; want intact, 1 event waiting for at least 20ms", res, err)
	}
	if !strings.Contains(res.GetSummary(), "1 events committed but not yet sequenced") {
		t.Errorf("summary does not report the waiting event: %s", res.GetSummary())
	}
	checked := res.GetEventsChecked()
	if err := lock.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	list, err := srv.Audit.ListAuditEvents(ctx, &pb.ListAuditEventsRequest{Key: "PIPE_KEY", Action: "AccessSecretVersion"})
	if err != nil || len(list.GetEvents()) != 1 {
		t.Fatalf("listing after the head was freed: %v, %v; want the access", list, err)
	}
	res, err = srv.Audit.VerifyAuditLog(ctx, &pb.VerifyAuditLogRequest{})
	if err != nil || !res.GetIntact() || res.GetEventsWaiting() != 0 || res.GetOldestWaiting() != nil || res.GetEventsChecked() != checked+1 {
		t.Fatalf("verify after sequencing: %v, %v; want intact, %d events, none waiting", res, err, checked+1)
	}
}
