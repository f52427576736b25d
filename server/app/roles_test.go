package app_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/internal/testserver"
	"github.com/orient-bot/secrets/server/app"
)

// startCfg starts a server with cfg on loopback ports; it returns the
// start error, or stops the server at the end of the test.
func startCfg(t *testing.T, cfg app.Config) error {
	t.Helper()
	cfg.GRPCAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
	if cfg.KEKURL == "" {
		cfg.KEKURL = testserver.NewKEKURL(t)
	}
	srv, err := app.Start(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err == nil {
		srv.Serve(canceled())
	}
	return err
}

// TestStartRefusesOwnerRole: a DATABASE_URL that could rewrite the audit
// log (here the superuser that owns the tables) is refused unless
// --allow-owner-role says so; the service role starts.
func TestStartRefusesOwnerRole(t *testing.T) {
	t.Parallel()
	db := testdb.New(t)
	cfg := app.DefaultConfig()
	cfg.DatabaseURL, cfg.AuditSigningKey, cfg.KEKURL = db, testserver.AuditSigningKeyFile(t), testserver.NewKEKURL(t)
	if err := startCfg(t, cfg); err == nil || !strings.Contains(err.Error(), "--allow-owner-role") {
		t.Fatalf("start as the owner: %v", err)
	}
	cfg.AllowOwnerRole = true
	if err := startCfg(t, cfg); err != nil {
		t.Fatalf("start as the owner with --allow-owner-role: %v", err)
	}
	cfg.AllowOwnerRole, cfg.DatabaseURL = false, testdb.ServiceURL(t, db)
	if err := startCfg(t, cfg); err != nil {
		t.Fatalf("start as the service role: %v", err)
	}
}

// TestStartRequiresSigningKey: with DATABASE_URL, no signing key is
// refused unless --audit-unsigned; an external anchor needs a key.
func TestStartRequiresSigningKey(t *testing.T) {
	t.Parallel()
	cfg := app.DefaultConfig()
	cfg.DatabaseURL, cfg.KEKURL = testdb.ServiceURL(t, testdb.New(t)), testserver.NewKEKURL(t)
	if err := startCfg(t, cfg); err == nil || !strings.Contains(err.Error(), "--audit-unsigned") {
		t.Fatalf("start without a signing key: %v", err)
	}
	cfg.AuditCheckpointURL = "file://" + t.TempDir()
	cfg.AuditUnsigned = true
	if err := startCfg(t, cfg); err == nil || !strings.Contains(err.Error(), "signing key") {
		t.Fatalf("anchor without a signing key: %v", err)
	}
	cfg.AuditCheckpointURL = ""
	if err := startCfg(t, cfg); err != nil {
		t.Fatalf("start with --audit-unsigned: %v", err)
	}
	cfg.AuditUnsigned, cfg.AuditSigningKey = false, randomKeyFile(t)
	cfg.AuditPublicKeys = []string{"not base64!"}
	if err := startCfg(t, cfg); err == nil || !strings.Contains(err.Error(), "--audit-public-keys") {
		t.Fatalf("a malformed earlier public key: %v", err)
	}
}

// TestMatchValue: the leak check finds every write of a value, and only
// those; auditors and admins may ask, readers may not; the question is
// audited without the value or its HMAC.
func TestMatchValue(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := testserver.Start(t, testserver.Options{})
	leaked := "sk-ant-leaked-0123456789"
	put(t, srv.Secrets, "ANTHROPIC_API_KEY", "sk-ant-other")
	put(t, srv.Secrets, "ANTHROPIC_API_KEY", leaked)
	put(t, srv.Secrets, "BACKUP_KEY", leaked)
	put(t, srv.Secrets, "BACKUP_KEY", "something else")

	res, err := srv.Audit.MatchValue(ctx, &pb.MatchValueRequest{Value: []byte(leaked)})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range res.Matches {
		got = append(got, fmt.Sprintf("%s@%d", m.Key, m.Version))
		if m.Actor == "" || m.Sequence == 0 || m.Time == nil {
			t.Errorf("match without its write's details: %v", m)
		}
	}
	if strings.Join(got, ",") != "ANTHROPIC_API_KEY@2,BACKUP_KEY@1" {
		t.Errorf("matches %v, want ANTHROPIC_API_KEY@2,BACKUP_KEY@1", got)
	}
	if res, err := srv.Audit.MatchValue(ctx, &pb.MatchValueRequest{Value: []byte(leaked), Key: "BACKUP_KEY"}); err != nil || len(res.Matches) != 1 {
		t.Errorf("one key: %v, %v", res, err)
	}
	if res, err := srv.Audit.MatchValue(ctx, &pb.MatchValueRequest{Value: []byte("never stored")}); err != nil || len(res.Matches) != 0 {
		t.Errorf("a value never stored: %v, %v", res, err)
	}
	for _, bad := range []*pb.MatchValueRequest{{}, {Value: bytes.Repeat([]byte("x"), 64<<10+1)}, {Value: []byte("x"), Key: "bad key"}} {
		if _, err := srv.Audit.MatchValue(ctx, bad); status.Code(err) != codes.InvalidArgument {
			t.Errorf("MatchValue(%d bytes, key %q): %v, want INVALID_ARGUMENT", len(bad.Value), bad.Key, err)
		}
	}
	auditor := pb.NewAuditServiceClient(srv.Dial(t, createToken(t, srv, "leak-auditor", "auditor")))
	if res, err := auditor.MatchValue(ctx, &pb.MatchValueRequest{Value: []byte(leaked)}); err != nil || len(res.Matches) != 2 {
		t.Errorf("auditor: %v, %v", res, err)
	}
	reader := pb.NewAuditServiceClient(srv.Dial(t, createToken(t, srv, "leak-reader", "reader")))
	if _, err := reader.MatchValue(ctx, &pb.MatchValueRequest{Value: []byte(leaked)}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("reader: %v, want PERMISSION_DENIED", err)
	}
	// Audited: who asked and how many matched; never the candidate.
	events, err := srv.Audit.ListAuditEvents(ctx, &pb.ListAuditEventsRequest{Action: "MatchValue"})
	if err != nil {
		t.Fatal(err)
	}
	var ok []*pb.AuditEvent
	for _, e := range events.Events {
		if e.Outcome == "OK" {
			ok = append(ok, e)
		}
	}
	if len(ok) != 4 || ok[0].Actor != "leak-auditor" || ok[0].Detail != "matches: 2" || len(ok[0].ValueHmac) != 0 {
		t.Errorf("MatchValue audit events: %v", ok)
	}
	dump := dumpDatabase(t, srv.DatabaseURL)
	for _, enc := range []string{"leaked-0123456789", base64.StdEncoding.EncodeToString([]byte(leaked))} {
		if strings.Contains(dump, enc) {
			t.Errorf("the candidate value (%q) is in the database", enc)
		}
	}
}
