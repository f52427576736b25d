package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
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

// childStart bounds a wait for the test child to (re)start: an exec of
// this test binary, which under the race detector and CI's parallel
// packages has taken several seconds on two cores.
const childStart = 30 * time.Second

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
		done <- cli(t, ctx, srv.GRPCAddr(), "", env, "run", "--watch", "--signal", "HUP", "--keys", "SLACK_SIGNING_SECRET,GITHUB_TOKEN",
			"--consumer", "test-bot/host-1", "--", os.Args[0])
	}()
	lines := waitLog(t, log, childStart, "child never started", func(l []string) bool { return countPrefix(l, "start") == 1 })
	if !strings.HasSuffix(lines[0], "SLACK_SIGNING_SECRET=sign-1 GITHUB_TOKEN=gh-1") {
		t.Fatalf("first start: %q", lines[0])
	}

	// Not restart-required, and the command reloads on SIGHUP: SIGHUP,
	// same process.
	putValue(t, c, "GITHUB_TOKEN", "gh-2")
	lines = waitLog(t, log, 5*time.Second, "no SIGHUP after a change", func(l []string) bool { return countPrefix(l, "hangup") == 1 })
	if countPrefix(lines, "start") != 1 || countPrefix(lines, "term") != 0 {
		t.Fatalf("restarted on a change that needs no restart:\n%s", strings.Join(lines, "\n"))
	}

	// Restart-required: SIGTERM, then a new process with the new value.
	putValue(t, c, "SLACK_SIGNING_SECRET", "sign-2")
	lines = waitLog(t, log, childStart, "no restart", func(l []string) bool { return countPrefix(l, "start") == 2 })
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
	waitLog(t, log, childStart, "child never started", func(l []string) bool { return countPrefix(l, "start") == 1 })
	putValue(t, c, "SLACK_SIGNING_SECRET", "sign-2")
	lines := waitLog(t, log, childStart, "stubborn child not replaced", func(l []string) bool { return countPrefix(l, "start") == 2 })
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
	waitLog(t, log, childStart, "child never started", func(l []string) bool { return countPrefix(l, "start") == 1 })
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

// alive reports whether pid is a running process (not gone, not a zombie).
func alive(pid int) bool {
	st := procState(pid)
	return st != "" && st != "Z"
}

// pidOf returns the pid logged on the n-th (from 1) line starting with prefix.
func pidOf(t *testing.T, lines []string, prefix string, n int) int {
	t.Helper()
	for _, l := range lines {
		if strings.HasPrefix(l, prefix+" ") {
			if n--; n == 0 {
				pid, err := strconv.Atoi(strings.Fields(strings.TrimPrefix(l, prefix+" "))[0])
				if err != nil {
					t.Fatal(err)
				}
				return pid
			}
		}
	}
	t.Fatalf("no line %d starting with %q in\n%s", n, prefix, strings.Join(lines, "\n"))
	return 0
}

func events(lines []string) string {
	var out []string
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) > 1 && f[0] == "term" && f[1] == "ignored" {
			out = append(out, "term-ignored")
			continue
		}
		out = append(out, f[0])
	}
	return strings.Join(out, " ")
}

// shell wraps the test child in `sh -c`, so that it runs as run's
// grandchild (the shell does not exec it: it waits, then runs `true`).
func shell(args ...string) []string {
	return append([]string{"sh", "-c", `"$0"; true`, os.Args[0]}, args...)
}

// runWatch starts `secretctl run --watch` with extra flags in the
// background; stop ends it and returns its result.
func runWatch(t *testing.T, srv *testserver.Server, env map[string]string, args ...string) (stop func() result) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan result, 1)
	go func() { done <- cli(t, ctx, srv.GRPCAddr(), "", env, append([]string{"run", "--watch"}, args...)...) }()
	t.Cleanup(cancel)
	return func() result {
		cancel()
		select {
		case r := <-done:
			return r
		case <-time.After(10 * time.Second):
			t.Fatal("run did not stop")
			return result{}
		}
	}
}

// TestRunWatchRestartsWholeGroup: without --signal, a change to any
// injected secret (here one that is not restart-required) restarts the
// command, and the restart ends the whole process group: the command's own
// child (the grandchild of run) is stopped, not orphaned.
func TestRunWatchRestartsWholeGroup(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	c := testClient(t, srv)
	putValue(t, c, "GITHUB_TOKEN", "gh-1")
	env, log := childEnvFor(t, "serve", "GITHUB_TOKEN")
	stop := runWatch(t, srv, env, append([]string{"--keys", "GITHUB_TOKEN", "--"}, shell()...)...)
	lines := waitLog(t, log, childStart, "child never started", func(l []string) bool { return countPrefix(l, "start") == 1 })
	first := pidOf(t, lines, "start", 1)

	putValue(t, c, "GITHUB_TOKEN", "gh-2")
	lines = waitLog(t, log, childStart, "no restart", func(l []string) bool { return countPrefix(l, "start") == 2 })
	if got := events(lines); got != "start term start" || !strings.HasSuffix(lines[2], "GITHUB_TOKEN=gh-2") {
		t.Fatalf("child log:\n%s", strings.Join(lines, "\n"))
	}
	if pidOf(t, lines, "term", 1) != first || alive(first) {
		t.Fatalf("the first instance (pid %d) was not stopped by the restart:\n%s", first, strings.Join(lines, "\n"))
	}
	second := pidOf(t, lines, "start", 2)
	r := stop()
	if !alive(second) && countPrefix(childLog(t, log), "term") == 2 && !strings.Contains(r.stderr, "did not stop within") {
		return
	}
	t.Fatalf("stopping run left the grandchild %d running (alive %v); run: %+v; log:\n%s", second, alive(second), r,
		strings.Join(childLog(t, log), "\n"))
}

// TestRunWatchReloadSignalKillsShell: with --signal HUP, a change that needs
// no restart sends SIGHUP to the whole group; the shell in front of the
// command dies of it, which restarts the command (after stopping what the
// shell left running) instead of ending run with 129.
func TestRunWatchReloadSignalKillsShell(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	c := testClient(t, srv)
	putValue(t, c, "GITHUB_TOKEN", "gh-1")
	env, log := childEnvFor(t, "serve", "GITHUB_TOKEN")
	stop := runWatch(t, srv, env, append([]string{"--signal", "HUP", "--keys", "GITHUB_TOKEN", "--"}, shell()...)...)
	lines := waitLog(t, log, childStart, "child never started", func(l []string) bool { return countPrefix(l, "start") == 1 })
	first := pidOf(t, lines, "start", 1)

	putValue(t, c, "GITHUB_TOKEN", "gh-2")
	lines = waitLog(t, log, childStart, "no restart after the shell died of SIGHUP", func(l []string) bool { return countPrefix(l, "start") == 2 })
	if got := events(lines); got != "start hangup term start" || !strings.HasSuffix(lines[3], "GITHUB_TOKEN=gh-2") {
		t.Fatalf("child log:\n%s", strings.Join(lines, "\n"))
	}
	if alive(first) {
		t.Fatalf("the first instance %d is still running", first)
	}
	// The shell's child, orphaned when the shell died, is stopped without
	// waiting for init to reap it: no grace period, no SIGKILL.
	if r := stop(); !strings.Contains(r.stderr, "ended on SIGHUP; restarting it") || strings.Contains(r.stderr, "did not stop within") {
		t.Fatalf("run: %+v", r)
	}
}

// TestRunWatchKillsStubbornGrandchild: a grandchild that ignores SIGTERM is
// killed with the group after the grace period, though the shell in front
// of it exited at once.
func TestRunWatchKillsStubbornGrandchild(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	c := testClient(t, srv)
	putValue(t, c, "GITHUB_TOKEN", "gh-1")
	env, log := childEnvFor(t, "stubborn", "GITHUB_TOKEN")
	stop := runWatch(t, srv, env, append([]string{"--grace", "300ms", "--keys", "GITHUB_TOKEN", "--"}, shell()...)...)
	lines := waitLog(t, log, childStart, "child never started", func(l []string) bool { return countPrefix(l, "start") == 1 })
	first := pidOf(t, lines, "start", 1)
	putValue(t, c, "GITHUB_TOKEN", "gh-2")
	lines = waitLog(t, log, childStart, "no restart", func(l []string) bool { return countPrefix(l, "start") == 2 })
	if got := events(lines); got != "start term-ignored start" || alive(first) {
		t.Fatalf("first instance %d alive %v; child log:\n%s", first, alive(first), strings.Join(lines, "\n"))
	}
	second := pidOf(t, lines, "start", 2)
	r := stop()
	if alive(second) || !strings.Contains(r.stderr, "did not stop within 300ms") {
		t.Fatalf("second instance %d alive %v; run: %+v", second, alive(second), r)
	}
}

// TestRunLeavesNoOrphans: when the command exits on its own, what it left
// running in its group is stopped before run exits with its status.
func TestRunLeavesNoOrphans(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	env, log := childEnvFor(t, "serve", "CUSTOM_NONE")
	// The shell starts the child in the background and exits with 5.
	r := cli(t, context.Background(), srv.GRPCAddr(), "", env, "run", "--keys", "CHILD_LOG", "--",
		"sh", "-c", `"$0" & while [ ! -s "$CHILD_LOG" ]; do sleep 0.01; done; exit 5`, os.Args[0])
	if r.code != 5 {
		t.Fatalf("run: %+v", r)
	}
	lines := childLog(t, log)
	if got := events(lines); got != "start term" || alive(pidOf(t, lines, "start", 1)) {
		t.Fatalf("background child not stopped when the command exited:\n%s", strings.Join(lines, "\n"))
	}
}

// TestGroupAliveIgnoresZombies: a group whose members have all exited is
// gone, though one of them is not reaped yet: its parent is alive outside
// the group and does not reap it (as an init that reaps late does), or it
// is run's own (run is PID 1 in a container, or a subreaper), and run
// reaps it. Either way a restart does not wait out the grace period.
func TestGroupAliveIgnoresZombies(t *testing.T) {
	t.Parallel()
	// newGroup starts a leader in a group of its own.
	newGroup := func(t *testing.T) *exec.Cmd {
		leader := exec.Command("sleep", "60")
		leader.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := leader.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = syscall.Kill(-leader.Process.Pid, syscall.SIGKILL) })
		return leader
	}
	// endLeader kills and reaps the leader, leaving zombie the only member.
	endLeader := func(t *testing.T, leader *exec.Cmd, zombie int) *child {
		t.Helper()
		c := &child{cmd: leader, group: true}
		if !c.groupAlive() {
			t.Fatal("a group with a running leader is not alive")
		}
		_ = leader.Process.Kill()
		_ = leader.Wait()
		c.done = true
		deadline := time.Now().Add(10 * time.Second)
		for procState(zombie) != "Z" {
			if time.Now().After(deadline) {
				t.Fatalf("process %d never became a zombie (state %q)", zombie, procState(zombie))
			}
			time.Sleep(5 * time.Millisecond)
		}
		return c
	}

	t.Run("parent outside the group", func(t *testing.T) {
		t.Parallel()
		leader := newGroup(t)
		log := filepath.Join(t.TempDir(), "parent.log")
		parent := exec.Command(os.Args[0])
		parent.Env = append(os.Environ(), "SECRETCTL_TEST_CHILD=zombie-parent", "CHILD_LOG="+log,
			"ZOMBIE_PGID="+strconv.Itoa(leader.Process.Pid))
		if err := parent.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = parent.Process.Kill(); _ = parent.Wait() })
		lines := waitLog(t, log, 10*time.Second, "no zombie made", func(l []string) bool { return countPrefix(l, "zombie") == 1 })
		zombie := pidOf(t, lines, "zombie", 1)
		c := endLeader(t, leader, zombie)
		if c.groupAlive() {
			t.Errorf("a group of one zombie (%d, its parent outside the group) is alive", zombie)
		}
	})

	t.Run("run's own orphan", func(t *testing.T) {
		t.Parallel()
		leader := newGroup(t)
		z := exec.Command("true")
		z.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pgid: leader.Process.Pid}
		if err := z.Start(); err != nil {
			t.Fatal(err)
		}
		c := endLeader(t, leader, z.Process.Pid)
		if c.groupAlive() {
			t.Errorf("a group of one zombie (%d, run's child) is alive", z.Process.Pid)
		}
		if st := procState(z.Process.Pid); st != "" {
			t.Errorf("run's zombie %d not reaped (state %q)", z.Process.Pid, st)
		}
	})
}

// procState is a process's state letter from /proc ("" once it is gone).
func procState(pid int) string {
	state, _, _ := procStat(strconv.Itoa(pid))
	return state
}
