package app_test

import (
	"bytes"
	"context"
	"net/url"
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
	db := testdb.New(t)
	cfg := app.DefaultConfig()
	cfg.DatabaseURL, cfg.AuditSigningKey = testdb.ServiceURL(t, db), testserver.AuditSigningKeyFile(t)
	cfg.AuditRetention = 24 * time.Hour
	if err := startCfg(t, cfg); err == nil || !strings.Contains(err.Error(), "--audit-retention needs --audit-archive-url") {
		t.Fatalf("retention without an archive: %v", err)
	}
	var log lockedBuffer
	srv := testserver.Start(t, testserver.Options{DatabaseURL: db, Log: &log, Configure: func(c *app.Config) {
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
