package main

import (
	"context"
	"strings"
	"testing"
)

func TestTokensCommands(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	ctx := context.Background()
	addr := srv.GRPCAddr()
	r := cli(t, ctx, addr, "", nil, "tokens", "create", "slack-bot", "--role", "reader", "--key-pattern", "SLACK_*")
	token := strings.TrimSpace(r.stdout)
	if r.code != 0 || !strings.HasPrefix(token, "osk_") || strings.Contains(r.stderr, token) {
		t.Fatalf("create: code %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	r = cli(t, ctx, addr, "", nil, "tokens", "list")
	if r.code != 0 || !strings.Contains(r.stdout, "slack-bot") || !strings.Contains(r.stdout, "SLACK_*") || strings.Contains(r.stdout, token) {
		t.Fatalf("tokens list: %+v", r)
	}
	r = cli(t, ctx, addr, "", nil, "tokens", "revoke", "slack-bot")
	if r.code != 0 || !strings.Contains(r.stdout, "revoked slack-bot") {
		t.Fatalf("revoke: %+v", r)
	}
	r = cli(t, ctx, addr, "", nil, "tokens", "revoke", "slack-bot")
	if r.code == 0 {
		t.Fatalf("revoking twice succeeded: %+v", r)
	}
	r = cli(t, ctx, addr, "", nil, "verify-audit")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "intact up to sequence") || !strings.Contains(r.stdout, "self-attested") {
		t.Fatalf("verify-audit: %+v", r)
	}
	// The leak check: the candidate on stdin, exit 1 when it matches.
	r = cli(t, ctx, addr, "xoxb-leaked-token\n", nil, "put", "SLACK_BOT_TOKEN")
	if r.code != 0 {
		t.Fatalf("put: %+v", r)
	}
	r = cli(t, ctx, addr, "xoxb-leaked-token\n", nil, "audit", "match-value")
	if r.code != 1 || !strings.Contains(r.stdout, "SLACK_BOT_TOKEN") || strings.Contains(r.stdout+r.stderr, "leaked") {
		t.Fatalf("audit match-value of a stored value: %+v", r)
	}
	r = cli(t, ctx, addr, "xoxb-never-stored", nil, "audit", "match-value", "--key", "SLACK_BOT_TOKEN")
	if r.code != 0 || !strings.Contains(r.stdout, "no secret version") {
		t.Fatalf("audit match-value of another value: %+v", r)
	}
}
