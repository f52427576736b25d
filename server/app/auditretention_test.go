package app_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/internal/testserver"
	"github.com/orient-bot/secrets/server/app"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestAuditRetentionConfig: retention without an archive is refused at
// start; with one, a service role that lacks the retention privilege keeps
// everything and says once why; VerifyAuditLog is incremental by default
// and walks everything with full.
func TestAuditRetentionConfig(t *testing.T) {
	t.Parallel()
	db, kek := testdb.New(t), testserver.NewKEKURL(t)
	cfg := app.DefaultConfig()
	cfg.DatabaseURL, cfg.AuditSigningKey, cfg.KEKURL = testdb.ServiceURL(t, db), testserver.AuditSigningKeyFile(t), kek
	cfg.AuditRetention = 24 * time.Hour
	if err := startCfg(t, cfg); err == nil || !strings.Contains(err.Error(), "--audit-retention needs --audit-archive-url") {
		t.Fatalf("retention without an archive: %v", err)
	}
	var log lockedBuffer
	srv := testserver.Start(t, testserver.Options{DatabaseURL: db, KEKURL: kek, Log: &log, Configure: func(c *app.Config) {
		c.AuditRetention = 24 * time.Hour
		c.AuditArchiveURL = (&url.URL{Scheme: "file", Path: t.TempDir()}).String()
		c.AuditCheckpointInterval = 50 * time.Millisecond
	}})
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(log.String(), "may not archive and drop audit partitions") {
		if time.Now().After(deadline) {
			t.Fatalf("no warning about the retention privilege in the log:\n%s", log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	ctx := context.Background()
	put(t, srv.Secrets, "RET_A", "a1")
	put(t, srv.Secrets, "RET_A", "a2")
	// A listing chains this replica's events first (a verification only
	// reports those still waiting for the sequencer).
	if _, err := srv.Audit.ListAuditEvents(ctx, &pb.ListAuditEventsRequest{}); err != nil {
		t.Fatal(err)
	}
	full, err := srv.Audit.VerifyAuditLog(ctx, &pb.VerifyAuditLogRequest{Full: true})
	if err != nil || !full.Intact || full.EventsChecked == 0 || full.VerifiedFrom != 0 {
		t.Fatalf("full verify: %v, %v", full, err)
	}
	// Once a checkpoint covers the events, a verification records it and
	// the next one starts there.
	deadline = time.Now().Add(30 * time.Second)
	for {
		if _, err := srv.Audit.VerifyAuditLog(ctx, &pb.VerifyAuditLogRequest{}); err != nil {
			t.Fatal(err)
		}
		inc, err := srv.Audit.VerifyAuditLog(ctx, &pb.VerifyAuditLogRequest{})
		if err != nil || !inc.Intact {
			t.Fatalf("incremental verify: %v, %v", inc, err)
		}
		if inc.VerifiedFrom > 0 && inc.EventsChecked < full.EventsChecked {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("verification never resumed from a verified checkpoint: %v", inc)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestAuditPruneCommand runs the real `secretsd audit prune` and `audit
// verify --archives` on a log written by a server across one-second
// partitions: the service role may not prune; a role that may archives and
// drops; the history verifies from archives plus table; a deleted segment
// is named, with exit status 1.
func TestAuditPruneCommand(t *testing.T) {
	t.Parallel()
	bin := kekBuildSecretsd(t)
	db := testdb.New(t)
	owner := dbConn(t, db)
	exec(t, owner, `DO $$ DECLARE r record; BEGIN FOR r IN SELECT name FROM audit_partitions LOOP EXECUTE format('DROP TABLE %I', r.name); END LOOP; END $$`)
	exec(t, owner, `DELETE FROM audit_partitions`)
	exec(t, owner, `UPDATE audit_partitioning SET min_retention = interval '0'`) // the owner's floor, lowered for seconds-long retention
	exec(t, owner, `SELECT audit_ensure_partitions(now() + interval '1 minute', interval '1 second', now())`)
	anchorDir, archiveDir := t.TempDir(), t.TempDir()
	anchorURL := (&url.URL{Scheme: "file", Path: anchorDir}).String()
	archiveURL := (&url.URL{Scheme: "file", Path: archiveDir}).String()
	srv := testserver.Start(t, testserver.Options{DatabaseURL: db, Configure: func(c *app.Config) {
		c.AuditCheckpointInterval = 20 * time.Millisecond
		c.AuditCheckpointURL = anchorURL
	}})
	for i := range 6 {
		put(t, srv.Secrets, "PRUNE_A", fmt.Sprintf("v%d", i))
		time.Sleep(500 * time.Millisecond)
	}
	time.Sleep(1100 * time.Millisecond)
	put(t, srv.Secrets, "PRUNE_A", "last")
	waitAnchored(t, owner, anchorURL)
	srv.Stop()
	keyFile := testserver.AuditSigningKeyFile(t)
	service := []string{"DATABASE_URL=" + testdb.ServiceURL(t, db)}
	ownerEnv := []string{"DATABASE_URL=" + db}

	out := kekRun(t, kekCommand(bin, service, "audit", "prune", "--archives", archiveURL, "--older-than", "1ms", "--dry-run"))
	if !strings.Contains(out, "due: audit_events_") {
		t.Errorf("prune --dry-run: %q", out)
	}
	cmd := kekCommand(bin, service, "audit", "prune", "--archives", archiveURL, "--older-than", "1ms", "--audit-signing-key", keyFile)
	if got, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(got), "may not archive and drop") {
		t.Errorf("prune as the service role: %v, %s", err, got)
	}
	out = kekRun(t, kekCommand(bin, ownerEnv, "audit", "prune", "--archives", archiveURL, "--older-than", "1ms", "--audit-signing-key", keyFile))
	if !strings.HasPrefix(out, "archived ") {
		t.Fatalf("prune: %q", out)
	}
	out = kekRun(t, kekCommand(bin, service, "audit", "verify", "--archives", archiveURL, "--checkpoints", anchorURL, "--audit-signing-key", keyFile))
	if !strings.Contains(out, "archived segments and the table") || !strings.Contains(out, "every event is covered by an external checkpoint") {
		t.Errorf("verify --archives: %q", out)
	}
	out = kekRun(t, kekCommand(bin, service, "audit", "verify", "--checkpoints", anchorURL, "--audit-signing-key", keyFile))
	if !strings.Contains(out, "archived and not checked here") {
		t.Errorf("verify of the table: %q", out)
	}
	segments, _ := filepath.Glob(filepath.Join(archiveDir, "audit_events_*.jsonl"))
	if len(segments) < 2 {
		t.Fatalf("segments: %v", segments)
	}
	if err := os.Remove(segments[0]); err != nil {
		t.Fatal(err)
	}
	got, err := kekCommand(bin, service, "audit", "verify", "--archives", archiveURL, "--checkpoints", anchorURL, "--audit-signing-key", keyFile).Output()
	var ee *osexec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(got), filepath.Base(segments[0])) || !strings.Contains(string(got), "missing") {
		t.Errorf("verify with a deleted segment: %v, %q", err, got)
	}
}

// TestAuditMaxDelayRange: --audit-max-delay outside 100ms to 1h is refused
// at start, naming the flag.
func TestAuditMaxDelayRange(t *testing.T) {
	t.Parallel()
	for _, d := range []time.Duration{50 * time.Millisecond, 2 * time.Hour} {
		cfg := app.DefaultConfig()
		cfg.DatabaseURL = testdb.ServiceURL(t, testdb.New(t))
		cfg.AuditMaxDelay = d
		if err := startCfg(t, cfg); err == nil || !strings.Contains(err.Error(), "--audit-max-delay") {
			t.Errorf("--audit-max-delay %v: %v, want refused", d, err)
		}
	}
}
