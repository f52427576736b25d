package pgcluster

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

const testPrefix = "pgcluster-test-"

// newDir returns a fresh folder the postgres account can traverse.
func newDir(t *testing.T) string {
	t.Helper()
	dir, err := TempDir(testPrefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func start(t *testing.T, opts Options) *Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	began := time.Now()
	c, err := Start(ctx, opts)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Logf("Start took %v", time.Since(began))
	t.Cleanup(func() {
		select {
		case <-c.Wait(): // already stopped (or killed) by the test
		default:
			stop(t, c)
		}
	})
	return c
}

func stop(t *testing.T, c *Cluster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.Stop(ctx); err != nil {
		t.Errorf("Stop: %v", err)
	}
	select {
	case <-c.Wait():
	default:
		t.Error("Stop returned before the postmaster exited")
	}
}

func exec1(t *testing.T, c *Cluster, sql string, args ...any) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, c.ConnString("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatal(err)
	}
}

func queryString(t *testing.T, c *Cluster, sql string) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, c.ConnString("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var s string
	if err := conn.QueryRow(ctx, sql).Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestFindBinaries(t *testing.T) {
	dir, err := FindBinaries()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"initdb", "postgres"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("FindBinaries() = %s: %v", dir, err)
		}
	}
}

func TestDurableRestart(t *testing.T) {
	t.Parallel()
	dataDir := filepath.Join(newDir(t), "data")
	opts := Options{DataDir: dataDir, Durable: true}

	c := start(t, opts)
	exec1(t, c, "CREATE TABLE kept (v text)")
	exec1(t, c, "INSERT INTO kept VALUES ($1)", "survives restart")
	stop(t, c)
	if _, err := os.Stat(filepath.Join(dataDir, "postmaster.pid")); !os.IsNotExist(err) {
		t.Errorf("postmaster.pid after Stop: %v", err)
	}
	if s := queryStringMust(t, opts); s != "survives restart" {
		t.Errorf("after restart got %q", s)
	}
	if got := queryString(t, start(t, opts), "SHOW fsync"); got != "on" {
		t.Errorf("durable cluster has fsync=%s", got)
	}
}

func queryStringMust(t *testing.T, opts Options) string {
	c := start(t, opts)
	defer stop(t, c)
	return queryString(t, c, "SELECT v FROM kept")
}

// A bogus postmaster.pid and socket lock naming a live process that is not
// PostgreSQL (this test binary) must not prevent a start: PostgreSQL alone
// would refuse, since that PID is alive.
func TestStaleLockFiles(t *testing.T) {
	t.Parallel()
	dir := newDir(t)
	opts := Options{DataDir: filepath.Join(dir, "data"), SocketDir: filepath.Join(dir, "sock"), Port: 5433}
	c := start(t, opts)
	exec1(t, c, "SELECT 1")
	stop(t, c)

	bogus := fmt.Sprintf("%d\n%s\n1700000000\n5433\n%s\n\n  5433001    32768\nready   \n", os.Getpid(), opts.DataDir, opts.SocketDir)
	for _, p := range []string{filepath.Join(opts.DataDir, "postmaster.pid"), filepath.Join(opts.SocketDir, ".s.PGSQL.5433.lock")} {
		if err := os.WriteFile(p, []byte(bogus), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var logged strings.Builder
	opts.Logger = slog.New(slog.NewTextHandler(&logged, nil))
	c = start(t, opts)
	exec1(t, c, "SELECT 1")
	if n := strings.Count(logged.String(), "removed stale PostgreSQL lock file"); n != 2 {
		t.Errorf("removed %d stale lock files, want 2; log:\n%s", n, logged.String())
	}
	opts.Logger = nil

	// The postmaster dying on its own closes Wait.
	if err := c.process.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Wait():
	case <-time.After(10 * time.Second):
		t.Fatal("Wait not closed after the postmaster died")
	}
	// It left its lock files with a dead PID (and possibly orphans briefly).
	c = start(t, opts)
	exec1(t, c, "SELECT 1")
}

// A second Start on a data directory whose server is still shutting down
// (as after a kill -9 of our process) waits for it. The long path also makes
// Start choose a socket folder under /tmp.
func TestWaitsForPreviousServer(t *testing.T) {
	t.Parallel()
	dataDir := filepath.Join(newDir(t), strings.Repeat("long-directory-name-", 5), "data")
	first := start(t, Options{DataDir: dataDir})
	if !strings.HasPrefix(first.SocketDir(), "/tmp/"+socketPrefix) {
		t.Errorf("socket dir %s, want one under /tmp", first.SocketDir())
	}
	go func() {
		time.Sleep(300 * time.Millisecond)
		first.Stop(context.Background())
	}()
	second := start(t, Options{DataDir: dataDir})
	select {
	case <-first.Wait():
	default:
		t.Fatal("second cluster started while the first was running")
	}
	exec1(t, second, "SELECT 1")
	if _, err := os.Stat(first.SocketDir()); !os.IsNotExist(err) {
		t.Errorf("socket dir of stopped cluster: %v", err)
	}
}

func TestUnreachableDataDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("only root switches to the postgres user")
	}
	private := filepath.Join(newDir(t), "private")
	if err := os.Mkdir(private, 0o700); err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(private, "data")
	_, err := Start(context.Background(), Options{DataDir: dataDir})
	if err == nil || !strings.Contains(err.Error(), "directory "+private+" ") || !strings.Contains(err.Error(), dataDir) {
		t.Fatalf("Start = %v, want an error naming %s", err, private)
	}
	t.Log(err)
}

func TestSweep(t *testing.T) {
	const prefix = "pgcluster-sweeptest-"
	live, err := TempDir(prefix)
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(live)
	// A PID that just exited stands for a SIGKILLed test binary.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := fmt.Sprintf("/tmp/%s%d-%s-42", prefix, cmd.Process.Pid, "12345")
	if err := os.MkdirAll(filepath.Join(dead, "data"), 0o755); err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dead)

	removed, err := Sweep(prefix)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 1 || removed[0] != dead {
		t.Errorf("Sweep removed %v, want [%s]", removed, dead)
	}
	if _, err := os.Stat(live); err != nil {
		t.Errorf("live folder: %v", err)
	}
}

func TestConnStringQuoting(t *testing.T) {
	c := &Cluster{socketDir: "/tmp/a b'c", port: 5432}
	cfg, err := pgx.ParseConfig(c.ConnString("db x"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Host != "/tmp/a b'c" || cfg.Database != "db x" || cfg.Port != 5432 || cfg.User != "postgres" {
		t.Errorf("parsed %q %q %d %q", cfg.Host, cfg.Database, cfg.Port, cfg.User)
	}
}

// TestServerEnvKeepsSecretsOut: initdb and postgres get the search path and
// locale, never secretsd's KEK, tokens or cloud credentials (a database
// superuser can read the server's environment), nor PG* variables.
func TestServerEnvKeepsSecretsOut(t *testing.T) {
	for name, value := range map[string]string{
		"SECRETS_KEK_URL": "base64key://c2VjcmV0", "SECRETS_BOOTSTRAP_TOKEN": "boot", "DATABASE_URL": "postgres://x",
		"AWS_SECRET_ACCESS_KEY": "aws", "VAULT_TOKEN": "vault", "PGPORT": "1", "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8",
	} {
		t.Setenv(name, value)
	}
	got := map[string]bool{}
	for _, kv := range serverEnv() {
		name, _, _ := strings.Cut(kv, "=")
		got[name] = true
	}
	for _, name := range []string{"SECRETS_KEK_URL", "SECRETS_BOOTSTRAP_TOKEN", "DATABASE_URL", "AWS_SECRET_ACCESS_KEY", "VAULT_TOKEN", "PGPORT"} {
		if got[name] {
			t.Errorf("%s passed to the database server", name)
		}
	}
	for _, name := range []string{"PATH", "LC_ALL", "LANG"} {
		if !got[name] {
			t.Errorf("%s not passed to the database server", name)
		}
	}
}
