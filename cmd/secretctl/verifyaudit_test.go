package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/orient-bot/secrets/internal/testserver"
	secretsd "github.com/orient-bot/secrets/server/app"
)

// TestVerifyAuditFull: by default verify-audit resumes after the point an
// earlier run recorded, and its summary says the events before it were not
// re-checked; --full asks the server for the full walk (the request's full
// flag), which checks every event.
func TestVerifyAuditFull(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := testserver.Start(t, testserver.Options{Configure: func(c *secretsd.Config) {
		c.AuditSigningKey = testserver.AuditSigningKeyFile(t)
		c.AuditCheckpointInterval = 20 * time.Millisecond
		c.ShutdownTimeout = time.Second
	}})
	addr := srv.GRPCAddr()
	for _, v := range []string{"a1", "a2", "a3"} {
		if r := cli(t, ctx, addr, v+"\n", nil, "put", "FULL_A"); r.code != 0 {
			t.Fatalf("put: %+v", r)
		}
	}
	time.Sleep(200 * time.Millisecond) // a checkpoint of the head
	verify := func(args ...string) (string, int64) {
		t.Helper()
		r := cli(t, ctx, addr, "", nil, append([]string{"verify-audit"}, args...)...)
		if r.code != 0 {
			t.Fatalf("verify-audit %v: %+v", args, r)
		}
		r2 := cli(t, ctx, addr, "", nil, append([]string{"verify-audit", "-o", "json"}, args...)...)
		var v struct {
			EventsChecked int64 `json:"events_checked"`
		}
		if r2.code != 0 || json.Unmarshal([]byte(r2.stdout), &v) != nil {
			t.Fatalf("verify-audit -o json %v: %+v", args, r2)
		}
		return r.stdout, v.EventsChecked
	}
	verify() // records progress
	inc, _ := verify()
	if !strings.Contains(inc, "not re-checked here") {
		t.Errorf("incremental verify-audit does not say what it did not re-check: %q", inc)
	}
	full, n := verify("--full")
	if strings.Contains(full, "not re-checked") || n < 3 {
		t.Errorf("verify-audit --full: %q, %d events checked; want every event walked", full, n)
	}
}
