package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/orient-bot/secrets/client"
	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/internal/testserver"
	secretsd "github.com/orient-bot/secrets/server/app"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

func TestMain(m *testing.M) {
	// The test binary doubles as secretctl itself, for tests that need it
	// in a process of its own (on a terminal), ...
	if os.Getenv("SECRETCTL_TEST_MAIN") != "" {
		os.Unsetenv("SECRETCTL_TEST_MAIN") // not for the child it runs
		main()
	}
	// ... and as the program that run starts.
	if mode := os.Getenv("SECRETCTL_TEST_CHILD"); mode != "" {
		os.Exit(testChild(mode))
	}
	os.Exit(testdb.Main(m))
}

// testChild records its start (pid and the values of CHILD_KEYS) and the
// signals it gets in CHILD_LOG. Modes: "serve" stops on SIGTERM, "stubborn"
// ignores it, "exit3" exits with status 3 at once, "interrupt" also records
// SIGINT and SIGWINCH and exits 1 s after its first SIGINT (a graceful
// stop, during which a second SIGINT would be seen).
func testChild(mode string) int {
	logf := func(format string, args ...any) {
		f, err := os.OpenFile(os.Getenv("CHILD_LOG"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
		if err != nil {
			panic(err)
		}
		fmt.Fprintf(f, format+"\n", args...)
		f.Close()
	}
	var vals []string
	for _, k := range strings.Split(os.Getenv("CHILD_KEYS"), ",") {
		vals = append(vals, k+"="+os.Getenv(k))
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGUSR1)
	if mode == "interrupt" {
		signal.Notify(sigs, syscall.SIGINT, syscall.SIGWINCH)
	}
	var stopped <-chan time.Time
	logf("start %d %s", os.Getpid(), strings.Join(vals, " "))
	if mode == "exit3" {
		return 3
	}
	if mode == "zombie-parent" {
		// Leaves a child in group ZOMBIE_PGID that exits and is never
		// reaped: a zombie whose parent is outside the group.
		pg, _ := strconv.Atoi(os.Getenv("ZOMBIE_PGID"))
		z := exec.Command("true")
		z.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pgid: pg}
		if err := z.Start(); err != nil {
			logf("error %v", err)
			return 1
		}
		logf("zombie %d", z.Process.Pid)
	}
	deadline := time.After(60 * time.Second) // never outlive a failed test by much
	for {
		select {
		case s := <-sigs:
			switch {
			case s == syscall.SIGTERM && mode == "stubborn":
				logf("term ignored %d", os.Getpid())
			case s == syscall.SIGTERM:
				logf("term %d", os.Getpid())
				return 0
			default:
				logf("%s %d", s, os.Getpid())
				if s == syscall.SIGINT && stopped == nil {
					stopped = time.After(time.Second)
				}
			}
		case <-stopped:
			logf("stopped %d", os.Getpid())
			return 0
		case <-deadline:
			return 9
		}
	}
}

func startServer(t *testing.T) *testserver.Server {
	t.Helper()
	return testserver.Start(t, testserver.Options{Configure: func(c *secretsd.Config) {
		c.WatchPollInterval = 200 * time.Millisecond
		c.WatchProgressInterval = 300 * time.Millisecond
		c.ShutdownTimeout = time.Second
	}})
}

type result struct {
	stdout, stderr string
	code           int
}

// cli runs secretctl in-process against addr.
func cli(t *testing.T, ctx context.Context, addr, stdin string, env map[string]string, args ...string) result {
	t.Helper()
	var out, errOut syncBuffer
	lookup := func(k string) (string, bool) {
		switch k {
		case "SECRETS_ADDR":
			return addr, true
		case "SECRETS_TOKEN":
			return testserver.DefaultAdminToken, true
		}
		v, ok := env[k]
		return v, ok
	}
	code := execute(ctx, args, strings.NewReader(stdin), &out, &errOut, lookup, func(a *app) {
		a.extraClientOpts = []client.Option{client.WithRetry(client.RetryPolicy{MaxAttempts: 2, InitialBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})}
		a.environ = func() []string {
			base := os.Environ()
			for k, v := range env {
				base = append(base, k+"="+v)
			}
			return base
		}
		a.defaultGrace = 2 * time.Second
	})
	return result{out.String(), errOut.String(), code}
}

// syncBuffer is a bytes.Buffer safe for concurrent writers: run's own
// messages and the copy of its child's output. (A bare bytes.Buffer given
// to exec is filled through ReadFrom, which would drop the other writes.)
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var normalizers = []struct {
	re   *regexp.Regexp
	repl string
}{
	{regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)`), "<TIME>"},
	{regexp.MustCompile(`"etag": "[^"]*"`), `"etag": "<ETAG>"`},
	{regexp.MustCompile(`"kekId": "[^"]*"`), `"kekId": "<KEK>"`},
	{regexp.MustCompile(`"requestId": "[^"]*"`), `"requestId": "<ID>"`},
	{regexp.MustCompile(`127\.0\.0\.1:\d+`), "<PEER>"},
	{regexp.MustCompile(`("(revision|loadedRevision)": |revision )\d+`), "${1}<REV>"},
	// Column widths follow the replaced text; compare cells, not padding.
	{regexp.MustCompile(`(\S) {2,}`), "$1  "},
}

func normalize(s string) string {
	for _, n := range normalizers {
		s = n.re.ReplaceAllString(s, n.repl)
	}
	return s
}

// golden compares got with testdata/name.golden (rewritten with -update).
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	got = normalize(got)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if string(want) != got {
		t.Errorf("%s differs from %s:\n--- want\n%s\n--- got\n%s", name, path, want, got)
	}
}
