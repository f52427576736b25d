package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/orient-bot/secrets/internal/testserver"
	"github.com/orient-bot/secrets/server/catalog"
)

// cliNoPanic runs secretctl like cli, turning a panic into a test failure
// (a panic would end the whole test binary).
func cliNoPanic(t *testing.T, ctx context.Context, addr string, args ...string) (r result) {
	t.Helper()
	defer func() {
		if p := recover(); p != nil {
			t.Errorf("secretctl %s panicked: %v", strings.Join(args, " "), p)
			r = result{code: -1}
		}
	}()
	return cli(t, ctx, addr, "", nil, args...)
}

// Flags that make no sense are usage errors (exit 2) that change nothing,
// not panics, silent no-ops or tokens that never expire.
func TestUsageErrors(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	addr := srv.GRPCAddr()
	c := testClient(t, srv)
	putValue(t, c, "CUSTOM_ROT", "v1")
	etag := func() string {
		t.Helper()
		s, err := c.GetSecret(context.Background(), "CUSTOM_ROT")
		if err != nil {
			t.Fatal(err)
		}
		return s.Etag
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"audit", "--follow", "--interval", "0"}, "--interval must be a positive duration"},
		{[]string{"audit", "--follow", "--interval", "-1s"}, "--interval must be a positive duration"},
		{[]string{"tokens", "create", "tmp", "--role", "reader", "--expires", "-1h"}, "--expires must be a positive duration"},
		{[]string{"rotation", "CUSTOM_ROT", "--etag", etag()}, "--etag guards a change"},
	} {
		// A bounded context: a follow that is not refused would run on.
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		r := cliNoPanic(t, ctx, addr, tc.args...)
		cancel()
		if r.code != 2 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("secretctl %s: exit %d, stderr %q; want exit 2 and %q", strings.Join(tc.args, " "), r.code, r.stderr, tc.want)
		}
	}
	if r := cli(t, context.Background(), addr, "", nil, "tokens", "list"); strings.Contains(r.stdout, "tmp") {
		t.Errorf("a token was created:\n%s", r.stdout)
	}
	// --expires 0 is still the documented "never".
	if r := cli(t, context.Background(), addr, "", nil, "tokens", "create", "forever", "--role", "reader", "--expires", "0"); r.code != 0 {
		t.Errorf("--expires 0: %+v", r)
	}
}

// put --from-file reads at most one byte past the service's limit and
// says what the limit is.
func TestPutFromFileBounded(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := readValueFile(big); err == nil || !strings.Contains(err.Error(), "larger than 65536 bytes") {
		t.Errorf("a 1 MiB file: %v", err)
	}
	// A device that never ends is refused too, not read forever.
	done := make(chan error, 1)
	go func() { _, err := readValueFile("/dev/zero"); done <- err }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "larger than") {
			t.Errorf("/dev/zero: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("reading /dev/zero did not stop")
	}
	exact := filepath.Join(dir, "exact")
	if err := os.WriteFile(exact, make([]byte, catalog.MaxValueSize), 0o600); err != nil {
		t.Fatal(err)
	}
	if v, err := readValueFile(exact); err != nil || len(v) != catalog.MaxValueSize {
		t.Errorf("a file of exactly the limit: %d bytes, %v", len(v), err)
	}
	// Through the command: exit 1, the limit named, nothing connected to.
	r := cli(t, context.Background(), "127.0.0.1:1", "", nil, "put", "CUSTOM_BIG", "--from-file", big)
	if r.code != 1 || !strings.Contains(r.stderr, "the most a secret's value may hold") {
		t.Errorf("put --from-file of 1 MiB: %+v", r)
	}
}

// startCLI runs secretctl until ctx ends; out shows its output meanwhile.
func startCLI(t *testing.T, ctx context.Context, addr string, args ...string) (out *syncBuffer, done <-chan int) {
	t.Helper()
	out = &syncBuffer{}
	var errOut syncBuffer
	ch := make(chan int, 1)
	lookup := func(k string) (string, bool) {
		switch k {
		case "SECRETS_ADDR":
			return addr, true
		case "SECRETS_TOKEN":
			return testserver.DefaultAdminToken, true
		}
		return "", false
	}
	go func() { ch <- execute(ctx, args, strings.NewReader(""), out, &errOut, lookup) }()
	t.Cleanup(func() {
		if errOut.String() != "" {
			t.Logf("stderr: %s", errOut.String())
		}
	})
	return out, ch
}

// audit --follow prints an event that is chained after the ones it has
// printed but carries an earlier time (another replica's clock, a write
// batch committing after later reads): the cursor is the sequence.
func TestAuditFollowPrintsLateEvents(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	c := testClient(t, srv)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out, done := startCLI(t, ctx, srv.GRPCAddr(), "audit", "--follow", "--interval", "50ms", "--action", "PutSecret", "-o", "json")
	printed := func(key string) func() bool {
		return func() bool { return strings.Contains(out.String(), `"key": "`+key+`"`) }
	}
	putValue(t, c, "CUSTOM_FIRST", "a")
	eventually(t, 10*time.Second, printed("CUSTOM_FIRST"))

	// Committed now, an hour earlier by its clock.
	conn, err := pgx.Connect(context.Background(), srv.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), `INSERT INTO audit_intake (time, actor, action, key, version, outcome)
		VALUES (now() - interval '1 hour', 'replica-b', 'PutSecret', 'CUSTOM_LATE', 1, 'OK')`); err != nil {
		t.Fatal(err)
	}
	putValue(t, c, "CUSTOM_AFTER", "b")
	eventually(t, 10*time.Second, printed("CUSTOM_AFTER"))
	eventually(t, 5*time.Second, printed("CUSTOM_LATE"))
	time.Sleep(200 * time.Millisecond) // a few more polls: nothing twice
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("follow ended with %d", code)
	}
	for _, key := range []string{"CUSTOM_FIRST", "CUSTOM_LATE", "CUSTOM_AFTER"} {
		if n := strings.Count(out.String(), `"key": "`+key+`"`); n != 1 {
			t.Errorf("%s printed %d times:\n%s", key, n, out.String())
		}
	}
}
