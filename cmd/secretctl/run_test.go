package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/orient-bot/secrets/client"
	"github.com/orient-bot/secrets/internal/testserver"
)

// childLog reads the test child's log lines.
func childLog(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

func waitLog(t *testing.T, path string, within time.Duration, what string, cond func(lines []string) bool) []string {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		lines := childLog(t, path)
		if cond(lines) {
			return lines
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v, %s; child log:\n%s", within, what, strings.Join(lines, "\n"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func countPrefix(lines []string, prefix string) int {
	n := 0
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}

func childEnvFor(t *testing.T, mode, keys string) (map[string]string, string) {
	log := filepath.Join(t.TempDir(), "child.log")
	return map[string]string{"SECRETCTL_TEST_CHILD": mode, "CHILD_LOG": log, "CHILD_KEYS": keys}, log
}

func putValue(t *testing.T, c *client.Client, key, value string) {
	t.Helper()
	if _, err := c.PutSecret(context.Background(), key, []byte(value)); err != nil {
		t.Fatalf("PutSecret(%s): %v", key, err)
	}
}

func testClient(t *testing.T, srv *testserver.Server) *client.Client {
	t.Helper()
	c, err := client.New(context.Background(), srv.GRPCAddr(), client.WithToken(testserver.DefaultAdminToken))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestRunPassesValuesAndExitStatus(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	c := testClient(t, srv)
	putValue(t, c, "CUSTOM_DB", "from-db")
	env, log := childEnvFor(t, "exit3", "CUSTOM_DB,CUSTOM_ENV_ONLY")
	env["CUSTOM_DB"] = "from-env" // the database wins
	env["CUSTOM_ENV_ONLY"] = "env"
	r := cli(t, context.Background(), srv.GRPCAddr(), "", env, "run", "--keys", "CUSTOM_DB,CUSTOM_ENV_ONLY", "--", os.Args[0])
	if r.code != 3 {
		t.Fatalf("exit status %d, want the child's 3; stderr:\n%s", r.code, r.stderr)
	}
	lines := childLog(t, log)
	if len(lines) != 1 || !strings.HasSuffix(lines[0], "CUSTOM_DB=from-db CUSTOM_ENV_ONLY=env") {
		t.Fatalf("child saw %q", lines)
	}
	// Without --keys: every configured secret.
	env, log = childEnvFor(t, "exit3", "CUSTOM_DB")
	if r := cli(t, context.Background(), srv.GRPCAddr(), "", env, "run", os.Args[0]); r.code != 3 {
		t.Fatalf("run without keys: %+v", r)
	}
	if lines := childLog(t, log); len(lines) != 1 || !strings.HasSuffix(lines[0], "CUSTOM_DB=from-db") {
		t.Fatalf("child saw %q", lines)
	}
	// A named key configured nowhere fails before starting anything.
	r = cli(t, context.Background(), srv.GRPCAddr(), "", env, "run", "--keys", "CUSTOM_NOWHERE", "--", os.Args[0])
	if r.code != 1 || !strings.Contains(r.stderr, "CUSTOM_NOWHERE is not configured") {
		t.Fatalf("missing key: %+v", r)
	}
}

func TestRunWatchRestartsOnRestartRequiredChange(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	c := testClient(t, srv)
	// SLACK_SIGNING_SECRET needs a restart (catalog); GITHUB_TOKEN does not.
	putValue(t, c, "SLACK_SIGNING_SECRET", "sign-1")
	putValue(t, c, "GITHUB_TOKEN", "gh-1")
	env, log := childEnvFor(t, "serve", "SLACK_SIGNING_SECRET,GITHUB_TOKEN")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan result, 1)
	go func() {
		done <- cli(t, ctx, srv.GRPCAddr(), "", env, "run", "--watch", "--keys", "SLACK_SIGNING_SECRET,GITHUB_TOKEN",
			"--consumer", "test-bot/host-1", "--", os.Args[0])
	}()
	lines := waitLog(t, log, 10*time.Second, "child never started", func(l []string) bool { return countPrefix(l, "start") == 1 })
	if !strings.HasSuffix(lines[0], "SLACK_SIGNING_SECRET=sign-1 GITHUB_TOKEN=gh-1") {
		t.Fatalf("first start: %q", lines[0])
	}

	// Not restart-required: SIGHUP, same process.
	putValue(t, c, "GITHUB_TOKEN", "gh-2")
	lines = waitLog(t, log, 5*time.Second, "no SIGHUP after a change", func(l []string) bool { return countPrefix(l, "hangup") == 1 })
	if countPrefix(lines, "start") != 1 || countPrefix(lines, "term") != 0 {
		t.Fatalf("restarted on a change that needs no restart:\n%s", strings.Join(lines, "\n"))
	}

	// Restart-required: SIGTERM, then a new process with the new value.
	putValue(t, c, "SLACK_SIGNING_SECRET", "sign-2")
	lines = waitLog(t, log, 5*time.Second, "no restart", func(l []string) bool { return countPrefix(l, "start") == 2 })
	want := []string{"start", "hangup", "term", "start"}
	var got []string
	for _, l := range lines {
		got = append(got, strings.Fields(l)[0])
	}
	if !slices.Equal(got, want) || !strings.HasSuffix(lines[3], "SLACK_SIGNING_SECRET=sign-2 GITHUB_TOKEN=gh-2") {
		t.Fatalf("child log:\n%s", strings.Join(lines, "\n"))
	}
	// The restarted instance reported the revision it runs with.
	eventually(t, 5*time.Second, func() bool {
		list, _, err := c.ListConsumers(context.Background(), false)
		return err == nil && len(list) == 1 && list[0].Consumer.String() == "test-bot/host-1" && len(list[0].Pending) == 0
	})

	cancel()
	select {
	case r := <-done:
		if r.code != 0 || !strings.Contains(r.stderr, "restarting") {
			t.Fatalf("run ended with %+v; log:\n%s", r, strings.Join(childLog(t, log), "\n"))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not stop")
	}
	if lines := childLog(t, log); !strings.HasPrefix(lines[len(lines)-1], "term") || countPrefix(lines, "term") != 2 {
		t.Fatalf("child not stopped gracefully:\n%s", strings.Join(lines, "\n"))
	}
}

func TestRunWatchKillsChildThatWillNotStop(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	c := testClient(t, srv)
	putValue(t, c, "SLACK_SIGNING_SECRET", "sign-1")
	env, log := childEnvFor(t, "stubborn", "SLACK_SIGNING_SECRET")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan result, 1)
	go func() {
		done <- cli(t, ctx, srv.GRPCAddr(), "", env, "run", "--watch", "--grace", "300ms", "--signal", "none",
			"--keys", "SLACK_SIGNING_SECRET", "--", os.Args[0])
	}()
	waitLog(t, log, 10*time.Second, "child never started", func(l []string) bool { return countPrefix(l, "start") == 1 })
	putValue(t, c, "SLACK_SIGNING_SECRET", "sign-2")
	lines := waitLog(t, log, 5*time.Second, "stubborn child not replaced", func(l []string) bool { return countPrefix(l, "start") == 2 })
	if countPrefix(lines, "term ignored") != 1 || !strings.HasSuffix(lines[len(lines)-1], "sign-2") {
		t.Fatalf("child log:\n%s", strings.Join(lines, "\n"))
	}
	cancel()
	r := <-done
	// Killed after the grace period: 128 + SIGKILL.
	if r.code != 137 || !strings.Contains(r.stderr, "did not stop within 300ms; killing it") {
		t.Fatalf("run ended with %+v", r)
	}
}

func eventually(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %v", d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Not parallel: it signals the test process itself, and every running
// `run` would forward the signal to its child.
func TestRunForwardsSignals(t *testing.T) {
	srv := startServer(t)
	env, log := childEnvFor(t, "serve", "CUSTOM_NONE")
	done := make(chan result, 1)
	go func() {
		done <- cli(t, context.Background(), srv.GRPCAddr(), "", env, "run", "--keys", "CHILD_LOG", "--", os.Args[0])
	}()
	waitLog(t, log, 10*time.Second, "child never started", func(l []string) bool { return countPrefix(l, "start") == 1 })
	if err := syscall.Kill(os.Getpid(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	waitLog(t, log, 5*time.Second, "SIGUSR1 not forwarded", func(l []string) bool { return countPrefix(l, "user defined signal 1") == 1 })
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		// The child stopped on the forwarded SIGTERM with status 0.
		if r.code != 0 || countPrefix(childLog(t, log), "term") != 1 {
			t.Fatalf("run ended with %+v; log %q", r, childLog(t, log))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not end after SIGTERM")
	}
}
