package app_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"net/url"
	"os"
	osexec "os/exec"
	"path/filepath"
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

// waitAnchored waits until the external checkpoints cover the chain head.
func waitAnchored(t *testing.T, conn *pgx.Conn, anchorURL string) int64 {
	t.Helper()
	ctx := context.Background()
	a, err := auditlog.OpenAnchor(ctx, anchorURL)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		// The head once the sequencer chained every committed event.
		var head int64
		var waiting bool
		if err := conn.QueryRow(ctx, `SELECT sequence, EXISTS (SELECT FROM audit_intake) FROM audit_head`).Scan(&head, &waiting); err != nil {
			t.Fatal(err)
		}
		cps, err := a.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(cps); !waiting && n > 0 && cps[n-1].Sequence == head {
			return head
		}
		if time.Now().After(deadline) {
			t.Fatalf("no external checkpoint at head %d (%d files)", head, len(cps))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rewriteFrom changes event seq's actor and recomputes every later hash and
// the head, as an owner of the database can: the chain is consistent again.
func rewriteFrom(t *testing.T, ctx context.Context, c *pgx.Conn, copyURL string, seq int64) {
	t.Helper()
	st, err := store.Open(ctx, copyURL, store.Options{})
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
	prev := events[seq-2].Hash
	for _, e := range events[seq-1:] {
		if e.Sequence == seq {
			e.Actor = "mallory"
		}
		e.PrevHash, e.Hash = prev, store.EventHash(prev, e)
		prev = e.Hash
		exec(t, c, `UPDATE audit_events SET actor = $2, prev_hash = $3, hash = $4 WHERE sequence = $1`, e.Sequence, e.Actor, e.PrevHash, e.Hash)
	}
	exec(t, c, `UPDATE audit_head SET hash = $1`, prev)
}

// TestAuditExternalCheckpoints: a server writes every signed checkpoint to
// an external folder too. Then, as the database's superuser, the tampering
// that the database's own checkpoints cannot catch (they go with the
// chain) is done to copies of the database: each is reported not intact,
// at the first bad sequence, once the external checkpoints are checked —
// from the database and from an export alike — while without them the
// verdict says the chain is only self-attested.
func TestAuditExternalCheckpoints(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	anchorURL := (&url.URL{Scheme: "file", Path: t.TempDir()}).String()
	db := testdb.New(t)
	srv := testserver.Start(t, testserver.Options{DatabaseURL: db, Configure: func(c *app.Config) {
		c.AuditCheckpointInterval = 20 * time.Millisecond
		c.AuditCheckpointURL = anchorURL
	}})
	conn := dbConn(t, db)
	// Four events, anchored at 4; eleven more, anchored at 15.
	put(t, srv.Secrets, "ANCHOR_A", "a1")
	access(srv.Secrets, "ANCHOR_A", "latest")
	put(t, srv.Secrets, "ANCHOR_A", "a2")
	access(srv.Secrets, "ANCHOR_A", "latest")
	if cp := waitAnchored(t, conn, anchorURL); cp != 4 {
		t.Fatalf("first external checkpoint at %d, want 4", cp)
	}
	for i := range 5 {
		put(t, srv.Secrets, "ANCHOR_B", fmt.Sprint("b", i))
		access(srv.Secrets, "ANCHOR_B", "latest")
	}
	access(srv.Secrets, "MISSING", "latest")
	if cp := waitAnchored(t, conn, anchorURL); cp != 15 {
		t.Fatalf("last external checkpoint at %d, want 15", cp)
	}
	res, err := srv.Audit.VerifyAuditLog(ctx, &pb.VerifyAuditLogRequest{})
	if err != nil || !res.Intact || !res.Anchored || res.AnchoredThrough != 15 || res.ExternalCheckpointsChecked < 2 {
		t.Fatalf("live verify: %v, %v", res, err)
	}
	srv.Stop()

	attacker := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))
	attackerSigner := auditlog.NewSigner(attacker)
	keys := auditlog.NewKeys(testserver.AuditPublicKey())
	tamper := []struct {
		name     string
		edit     func(t *testing.T, c *pgx.Conn, copyURL string)
		firstBad int64
		reason   string
	}{
		{name: "untouched"},
		{name: "tail deleted with its checkpoints", edit: func(t *testing.T, c *pgx.Conn, _ string) {
			exec(t, c, `DELETE FROM audit_events WHERE sequence > 9`)
			exec(t, c, `DELETE FROM audit_checkpoints WHERE sequence > 9`)
			exec(t, c, `UPDATE audit_head SET sequence = 9, hash = (SELECT hash FROM audit_events WHERE sequence = 9)`)
		}, firstBad: 10, reason: "deleted"},
		{name: "rewritten, checkpoints emptied", edit: func(t *testing.T, c *pgx.Conn, copyURL string) {
			rewriteFrom(t, ctx, c, copyURL, 5)
			exec(t, c, `DELETE FROM audit_checkpoints`)
		}, firstBad: 5, reason: "rewritten"},
		{name: "truncated", edit: func(t *testing.T, c *pgx.Conn, _ string) {
			exec(t, c, `TRUNCATE audit_events, audit_checkpoints`)
			exec(t, c, `UPDATE audit_head SET sequence = 0, hash = ''::bytea`)
		}, firstBad: 1, reason: "deleted"},
		{name: "chain start moved past the events", edit: func(t *testing.T, c *pgx.Conn, _ string) {
			exec(t, c, `UPDATE audit_head SET chain_start = sequence`)
		}, firstBad: -1, reason: "rewritten"}, // -1: the first external checkpoint
		{name: "reordered", edit: func(t *testing.T, c *pgx.Conn, _ string) {
			exec(t, c, `UPDATE audit_events SET sequence = -5 WHERE sequence = 5`)
			exec(t, c, `UPDATE audit_events SET sequence = 5 WHERE sequence = 6`)
			exec(t, c, `UPDATE audit_events SET sequence = 6 WHERE sequence = -5`)
		}, firstBad: 5, reason: "reordered"},
		{name: "rewritten and re-signed with another key", edit: func(t *testing.T, c *pgx.Conn, copyURL string) {
			rewriteFrom(t, ctx, c, copyURL, 5)
			exec(t, c, `DELETE FROM audit_checkpoints`)
			for _, seq := range []int64{4, 15} {
				var h []byte
				if err := c.QueryRow(ctx, `SELECT hash FROM audit_events WHERE sequence = $1`, seq).Scan(&h); err != nil {
					t.Fatal(err)
				}
				cp := attackerSigner.Sign(seq, h, time.Now())
				exec(t, c, `INSERT INTO audit_checkpoints (sequence, hash, time, key_id, signature) VALUES ($1, $2, $3, $4, $5)`,
					cp.Sequence, cp.Hash, cp.Time, cp.KeyID, cp.Signature)
			}
		}, firstBad: 5, reason: "rewritten"},
	}
	admin := dbConn(t, testdb.Admin(t))
	var source string
	if err := conn.QueryRow(ctx, `SELECT current_database()`).Scan(&source); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	anchor, err := auditlog.OpenAnchor(ctx, anchorURL)
	if err != nil {
		t.Fatal(err)
	}
	defer anchor.Close()
	external, err := anchor.List(ctx)
	if err != nil || len(external) < 2 {
		t.Fatalf("external checkpoints: %d, %v", len(external), err)
	}
	for i, tc := range tamper {
		if tc.firstBad == -1 {
			tc.firstBad = external[0].Sequence
		}
		copyName := fmt.Sprintf("%s_x%d", source, i)
		exec(t, admin, fmt.Sprintf(`CREATE DATABASE %s TEMPLATE %s`, pgx.Identifier{copyName}.Sanitize(), pgx.Identifier{source}.Sanitize()))
		t.Cleanup(func() {
			admin.Exec(context.Background(), fmt.Sprintf(`DROP DATABASE IF EXISTS %s WITH (FORCE)`, pgx.Identifier{copyName}.Sanitize()))
		})
		copyURL := withDatabase(t, db, copyName)
		c, err := pgx.Connect(ctx, copyURL)
		if err != nil {
			t.Fatal(err)
		}
		exec(t, c, `SET session_replication_role = replica`) // the superuser bypasses every trigger
		if tc.edit != nil {
			tc.edit(t, c, copyURL)
		}
		st, err := store.Open(ctx, copyURL, store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		anchored := &auditlog.Log{Store: st, Keys: keys, Anchor: anchor}
		res, err := anchored.Verify(ctx)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if tc.firstBad == 0 {
			if !res.Intact || res.VerifiedThrough != 15 || res.AnchoredThrough != 15 || !strings.Contains(res.Summary(), "every event is covered") {
				t.Errorf("%s: %+v, want intact and anchored through 15", tc.name, res)
			}
		} else if res.Intact || res.FirstBad != tc.firstBad || !strings.HasPrefix(res.Reason, tc.reason) {
			t.Errorf("%s: %+v, want first bad %d (%s)", tc.name, res, tc.firstBad, tc.reason)
		}
		// Offline, from an export: the export cannot drop the anchor's
		// checkpoints.
		var buf bytes.Buffer
		if _, err := anchored.Export(ctx, &buf, nil); err != nil {
			t.Fatal(err)
		}
		off, err := auditlog.VerifyExport(&buf, auditlog.Checks{Keys: keys, Anchored: true, External: external})
		if err != nil || off.Intact != res.Intact || off.FirstBad != res.FirstBad {
			t.Errorf("%s: export verdict %+v (%v), database verdict %+v", tc.name, off, err, res)
		}
		// Without the anchor a verdict of "intact" says plainly that it is
		// only self-attested.
		self, err := (&auditlog.Log{Store: st, Keys: keys}).Verify(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if self.Intact && !strings.Contains(self.Summary(), "only self-attested") {
			t.Errorf("%s: without the anchor: %q", tc.name, self.Summary())
		}
		st.Close()
		c.Close(ctx)
	}
}

// TestAuditSigningKeyRotation: checkpoints signed by a replaced key still
// verify when its public half is configured, and do not without it.
func TestAuditSigningKeyRotation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testdb.New(t)
	anchorURL := (&url.URL{Scheme: "file", Path: t.TempDir()}).String()
	first := testserver.Start(t, testserver.Options{DatabaseURL: db, Configure: func(c *app.Config) {
		c.AuditCheckpointInterval = 20 * time.Millisecond
		c.AuditCheckpointURL = anchorURL
	}})
	put(t, first.Secrets, "ROTATE_A", "a1")
	first.Stop() // signs a last checkpoint
	newKey := filepath.Join(t.TempDir(), "new.key")
	signer, _, err := auditlog.GenerateSigner(newKey)
	if err != nil {
		t.Fatal(err)
	}
	oldPub := base64.StdEncoding.EncodeToString(testserver.AuditPublicKey())
	second := testserver.Start(t, testserver.Options{DatabaseURL: db, KEKURL: first.KEKURL, Configure: func(c *app.Config) {
		c.AuditCheckpointInterval = 20 * time.Millisecond
		c.AuditCheckpointURL = anchorURL
		c.AuditSigningKey = newKey
		c.AuditPublicKeys = []string{oldPub}
	}})
	put(t, second.Secrets, "ROTATE_A", "a2")
	waitAnchored(t, dbConn(t, db), anchorURL)
	res, err := second.Audit.VerifyAuditLog(ctx, &pb.VerifyAuditLogRequest{})
	if err != nil || !res.Intact || res.ExternalCheckpointsChecked < 2 {
		t.Fatalf("verify with both keys: %v, %v", res, err)
	}
	anchor, err := auditlog.OpenAnchor(ctx, anchorURL)
	if err != nil {
		t.Fatal(err)
	}
	defer anchor.Close()
	st, err := store.Open(ctx, db, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	only, err := (&auditlog.Log{Store: st, Keys: auditlog.NewKeys(signer.Public()), Anchor: anchor}).Verify(ctx)
	if err != nil || only.Intact || !strings.Contains(only.Reason, "not signed by a trusted key") {
		t.Fatalf("verify with the new key only: %+v, %v", only, err)
	}
}

// TestAuditVerifyCommand runs the real `secretsd audit verify` with the
// flags after the subcommand: --checkpoints and --audit-signing-key.
func TestAuditVerifyCommand(t *testing.T) {
	t.Parallel()
	bin := kekBuildSecretsd(t)
	db := testdb.New(t)
	anchorURL := (&url.URL{Scheme: "file", Path: t.TempDir()}).String()
	srv := testserver.Start(t, testserver.Options{DatabaseURL: db, Configure: func(c *app.Config) {
		c.AuditCheckpointInterval = 20 * time.Millisecond
		c.AuditCheckpointURL = anchorURL
	}})
	put(t, srv.Secrets, "CLI_A", "a1")
	access(srv.Secrets, "CLI_A", "latest")
	put(t, srv.Secrets, "CLI_A", "a2")
	waitAnchored(t, dbConn(t, db), anchorURL)
	srv.Stop()
	keyFile := testserver.AuditSigningKeyFile(t)
	env := []string{"DATABASE_URL=" + testdb.ServiceURL(t, db)}
	pub := kekRun(t, kekCommand(bin, nil, "audit", "public-key", "--audit-signing-key", keyFile))
	if strings.TrimSpace(pub) != base64.StdEncoding.EncodeToString(testserver.AuditPublicKey()) {
		t.Errorf("audit public-key: %q", pub)
	}
	// The public key alone verifies, as an auditor without the signing key does.
	out := kekRun(t, kekCommand(bin, env, "audit", "verify", "--checkpoints", anchorURL, "--public-key", strings.TrimSpace(pub)))
	if !strings.Contains(out, "every event is covered") {
		t.Errorf("verify with --public-key: %q", out)
	}
	out = kekRun(t, kekCommand(bin, env, "audit", "verify", "--checkpoints", anchorURL, "--audit-signing-key", keyFile))
	if !strings.HasPrefix(out, "intact up to sequence") || !strings.Contains(out, "every event is covered by an external checkpoint") {
		t.Errorf("verify: %q", out)
	}
	out = kekRun(t, kekCommand(bin, env, "audit", "verify", "--audit-signing-key", keyFile))
	if !strings.Contains(out, "only self-attested") {
		t.Errorf("verify without checkpoints: %q", out)
	}
	// Cut the chain back behind the anchor: exit 1, naming the sequence.
	c := dbConn(t, db)
	exec(t, c, `SET session_replication_role = replica`)
	exec(t, c, `DELETE FROM audit_events WHERE sequence > 1`)
	exec(t, c, `DELETE FROM audit_checkpoints WHERE sequence > 1`)
	exec(t, c, `UPDATE audit_head SET sequence = 1, hash = (SELECT hash FROM audit_events WHERE sequence = 1)`)
	cmd := kekCommand(bin, env, "audit", "verify", "--checkpoints", anchorURL, "--audit-signing-key", keyFile)
	got, err := cmd.Output()
	var ee *osexec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.HasPrefix(string(got), "NOT INTACT: first bad sequence 2: deleted") {
		t.Errorf("verify of a cut-back chain: %v, %q", err, got)
	}
}

// randomKeyFile writes a fresh signing key (base64 seed).
func randomKeyFile(t *testing.T) string {
	t.Helper()
	seed := make([]byte, ed25519.SeedSize)
	rand.Read(seed)
	f := filepath.Join(t.TempDir(), "k")
	if err := os.WriteFile(f, []byte(base64.StdEncoding.EncodeToString(seed)), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}
