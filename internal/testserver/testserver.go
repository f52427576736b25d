// Package testserver starts a real secretsd (server/app) for tests: its own
// database from testdb, a fresh base64key KEK, both listeners on loopback
// ports chosen by the kernel, and a gRPC client connection.
package testserver

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/server/app"
	"github.com/orient-bot/secrets/server/providercheck"
)

// Server is a running test server.
type Server struct {
	*app.Server
	// DatabaseURL is the test database as its owner (a superuser: tests
	// may inspect and tamper with it directly). The server connects as the
	// service role (testdb.ServiceURL).
	DatabaseURL string
	// KEKURL is the server's key-encryption key URL.
	KEKURL string
	// AdminToken is the bootstrap admin token; Conn sends it on every call.
	AdminToken string
	// BaseURL is the HTTP listener's root, e.g. http://127.0.0.1:41234.
	BaseURL string
	Conn    *grpc.ClientConn

	Secrets   pb.SecretServiceClient
	Providers pb.ProviderServiceClient
	Audit     pb.AuditServiceClient
	Tokens    pb.TokenServiceClient

	cancel context.CancelFunc
	done   chan error
}

// Options tweak a test server.
type Options struct {
	// DatabaseURL reuses an existing database (e.g. a second replica);
	// empty gets a fresh one.
	DatabaseURL string
	// ServiceURL is what the server connects with; empty means
	// testdb.ServiceURL(DatabaseURL) (set it for a database testdb did not
	// make, migrated and with its service role).
	ServiceURL string
	// KEKURL reuses a key; empty generates one.
	KEKURL string
	// Log receives the server's log; nil discards it.
	Log io.Writer
	// Configure may adjust the configuration before start.
	Configure func(*app.Config)
	// AdminToken is the bootstrap token to use; empty picks a fixed test
	// value (a database bootstraps once, so replicas share it).
	AdminToken string
}

// DefaultAdminToken is the bootstrap admin token of test servers.
const DefaultAdminToken = "osk_test-admin-token-0123456789abcdef"

// Bearer is per-RPC credentials carrying a token (test transport is
// plaintext loopback).
type Bearer string

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (b Bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials.
func (Bearer) RequireTransportSecurity() bool { return false }

// Dial opens a client connection to s that authenticates with token ("" for
// none).
func (s *Server) Dial(t testing.TB, token string) *grpc.ClientConn {
	t.Helper()
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(Bearer(token)))
	}
	conn, err := grpc.NewClient(s.GRPCAddr(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// NewKEKURL returns a fresh base64key:// URL.
func NewKEKURL(t testing.TB) string {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return "base64key://" + base64.URLEncoding.EncodeToString(k)
}

// auditSeed is the test servers' audit signing key: one for every server,
// so replicas of one database sign with the same key.
var auditSeed = bytes.Repeat([]byte{0x5e}, ed25519.SeedSize)

// AuditSigningKeyFile writes the test servers' audit signing key to a file
// (as --audit-signing-key reads it) and returns its path.
func AuditSigningKeyFile(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "secrets-audit-key-") // not t.TempDir: examples pass a partial testing.TB
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	f := filepath.Join(dir, "audit-signing.key")
	if err := os.WriteFile(f, []byte(base64.StdEncoding.EncodeToString(auditSeed)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// AuditPublicKey is the public half of the test servers' signing key.
func AuditPublicKey() ed25519.PublicKey {
	return ed25519.NewKeyFromSeed(auditSeed).Public().(ed25519.PublicKey)
}

// Start starts a server and stops it at the end of the test.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	if opts.DatabaseURL == "" {
		opts.DatabaseURL = testdb.New(t)
	}
	if opts.KEKURL == "" {
		opts.KEKURL = NewKEKURL(t)
	}
	cfg := app.DefaultConfig()
	cfg.GRPCAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
	if opts.ServiceURL == "" {
		opts.ServiceURL = testdb.ServiceURL(t, opts.DatabaseURL)
	}
	cfg.DatabaseURL, cfg.KEKURL = opts.ServiceURL, opts.KEKURL
	cfg.AuditSigningKey = AuditSigningKeyFile(t)
	cfg.ShutdownTimeout = 5 * time.Second
	if opts.AdminToken == "" {
		opts.AdminToken = DefaultAdminToken
	}
	cfg.BootstrapToken = opts.AdminToken
	// CheckSecret must never reach a real provider from a test: every
	// provider points at a closed loopback port unless Configure says
	// otherwise.
	cfg.ProviderChecks.BaseURLs = map[string]string{}
	for id := range providercheck.DefaultBaseURLs {
		cfg.ProviderChecks.BaseURLs[id] = "https://127.0.0.1:1"
	}
	if opts.Configure != nil {
		opts.Configure(&cfg)
	}
	out := opts.Log
	if out == nil {
		out = io.Discard
	}
	log := slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := app.Start(ctx, cfg, log)
	if err != nil {
		cancel()
		t.Fatalf("start server: %v", err)
	}
	s := &Server{Server: srv, DatabaseURL: opts.DatabaseURL, KEKURL: opts.KEKURL, AdminToken: opts.AdminToken,
		BaseURL: "http://" + srv.HTTPAddr(), cancel: cancel, done: make(chan error, 1)}
	go func() { s.done <- srv.Serve(ctx) }()
	s.Conn, err = grpc.NewClient(srv.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(Bearer(opts.AdminToken)))
	if err != nil {
		t.Fatal(err)
	}
	s.Secrets = pb.NewSecretServiceClient(s.Conn)
	s.Providers = pb.NewProviderServiceClient(s.Conn)
	s.Audit = pb.NewAuditServiceClient(s.Conn)
	s.Tokens = pb.NewTokenServiceClient(s.Conn)
	t.Cleanup(s.Stop)
	return s
}

// Stop stops the server and waits for it (idempotent).
func (s *Server) Stop() {
	if s.cancel == nil {
		return
	}
	s.Conn.Close()
	s.cancel()
	<-s.done
	s.cancel = nil
}
