package app

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/orient-bot/secrets/internal/testdb"
)

// These tests are not parallel: goleak compares the process's goroutines,
// and parallel tests start only after every sequential one has ended.

func newKEKURL(t *testing.T) string {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return "base64key://" + base64.URLEncoding.EncodeToString(k)
}

func lifecycleConfig(t *testing.T) Config {
	cfg := DefaultConfig()
	cfg.GRPCAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
	cfg.DatabaseURL, cfg.KEKURL = testdb.ServiceURL(t, testdb.New(t)), newKEKURL(t)
	// The service role and a signing key, as a production start needs.
	cfg.AuditSigningKey = filepath.Join(t.TempDir(), "audit-signing.key")
	if err := os.WriteFile(cfg.AuditSigningKey, []byte(base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.ShutdownTimeout = 5 * time.Second
	// Every background loop runs, with a read cache and signed checkpoints.
	cfg.MaintenanceInterval = 10 * time.Millisecond
	cfg.AuditCheckpointInterval = 10 * time.Millisecond
	cfg.ReadCacheEntries = 100
	return cfg
}

// TestNoGoroutineLeakWhenListenerFailsAtStart: Start fails on a port in use
// and leaves nothing running.
func TestNoGoroutineLeakWhenListenerFailsAtStart(t *testing.T) {
	cfg := lifecycleConfig(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	cfg.HTTPAddr = busy.Addr().String()
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	if _, err := Start(context.Background(), cfg, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "HTTP listener") {
		t.Fatalf("Start on a busy port: %v", err)
	}
}

// TestNoGoroutineLeakWhenListenerFailsWhileServing: a listener that fails
// while serving ends Serve (its context still live) and every background
// goroutine — hub, read cache, maintenance, checkpoints, token and denial
// flushers — ends with it.
func TestNoGoroutineLeakWhenListenerFailsWhileServing(t *testing.T) {
	cfg := lifecycleConfig(t)
	ignore := goleak.IgnoreCurrent()
	s, err := Start(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	// Serve's context stays live until the check is over: what ends has to
	// be ended by Serve itself.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	// Let the loops run a few rounds, then break the HTTP listener.
	time.Sleep(100 * time.Millisecond)
	s.httpLis.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Serve returned nil after its listener failed")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Serve did not end after its listener failed")
	}
	goleak.VerifyNone(t, ignore)
}

// TestNoGoroutineLeakAfterShutdown: an ordinary shutdown joins everything.
func TestNoGoroutineLeakAfterShutdown(t *testing.T) {
	cfg := lifecycleConfig(t)
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	s, err := Start(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	time.Sleep(100 * time.Millisecond)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
