package main

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestRotationCommands: secretctl sets, shows and clears a rotation
// schedule, applies the catalog's proposal on request, refuses bad input,
// and list --rotation-due shows due secrets only.
func TestRotationCommands(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	addr := srv.GRPCAddr()
	ctx := context.Background()
	run := func(wantCode int, stdin string, args ...string) result {
		t.Helper()
		r := cli(t, ctx, addr, stdin, nil, args...)
		if r.code != wantCode {
			t.Fatalf("secretctl %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, wantCode, r.stdout, r.stderr)
		}
		return r
	}
	// row is the first data row of a table, single-spaced.
	row := func(table string) string {
		lines := strings.Split(table, "\n")
		if len(lines) < 2 {
			return ""
		}
		return strings.Join(strings.Fields(lines[1]), " ")
	}
	run(0, "v1\n", "put", "CUSTOM_ROT", "--rotation-period", "30d")
	run(0, "ghp_x\n", "put", "GITHUB_TOKEN")
	run(0, "v1\n", "put", "CUSTOM_OTHER")

	if r := run(0, "", "rotation", "CUSTOM_ROT"); !strings.Contains(r.stdout, "30d") {
		t.Fatalf("rotation show: %s", r.stdout)
	}
	if r := run(0, "", "rotation", "GITHUB_TOKEN", "--suggested"); !strings.HasPrefix(row(r.stdout), "GITHUB_TOKEN 90d ") {
		t.Fatalf("rotation --suggested: %s", r.stdout)
	}
	if r := run(0, "", "rotation", "CUSTOM_OTHER", "--period", "2160h", "-o", "json"); !strings.Contains(r.stdout, `"rotationPeriod": "7776000s"`) {
		t.Fatalf("rotation --period -o json: %s", r.stdout)
	}
	if r := run(0, "", "rotation", "CUSTOM_OTHER", "--clear"); row(r.stdout) != "CUSTOM_OTHER - - - - -" {
		t.Fatalf("rotation --clear: %s", r.stdout)
	}
	if r := run(2, "", "rotation", "CUSTOM_OTHER", "--period", "soon"); !strings.Contains(r.stderr, "--period") {
		t.Fatalf("bad period: %s", r.stderr)
	}
	if r := run(1, "", "rotation", "CUSTOM_OTHER", "--period", "30m"); !strings.Contains(r.stderr, "rotation_period") {
		t.Fatalf("period under an hour: %s", r.stderr)
	}

	// Nothing is due yet; then time passes for CUSTOM_ROT.
	if r := run(0, "", "list", "--rotation-due"); strings.Contains(r.stdout, "CUSTOM_") {
		t.Fatalf("list --rotation-due before: %s", r.stdout)
	}
	conn, err := pgx.Connect(ctx, srv.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `UPDATE secrets SET next_rotation_time = now() - interval '1 hour' WHERE key = 'CUSTOM_ROT'`); err != nil {
		t.Fatal(err)
	}
	r := run(0, "", "list", "--rotation-due")
	if !strings.Contains(r.stdout, "CUSTOM_ROT") || !strings.Contains(r.stdout, "due") || strings.Contains(r.stdout, "GITHUB_TOKEN") {
		t.Fatalf("list --rotation-due after: %s", r.stdout)
	}
}
