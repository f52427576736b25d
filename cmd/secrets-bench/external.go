package main

// Phases that drive external programs: pgbench (the database's point-read
// ceiling), wrk (REST), `go test -bench` (the client cache) and the secretsd
// binary itself (start-up time).

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/orient-bot/secrets/server/pgcluster"
)

//go:embed access.lua
var accessLua []byte

// wholeSeconds rounds d to whole seconds, at least 1 (pgbench -T, wrk -d).
func wholeSeconds(d time.Duration) int { return max(1, int(d.Round(time.Second)/time.Second)) }

// asPostgres makes cmd run as the postgres OS user when we are root (as the
// cluster does: pgcluster runs it so).
func asPostgres(cmd *exec.Cmd) error {
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return err
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}}
	cmd.Dir = "/"
	return nil
}

var tpsRe = regexp.MustCompile(`(?m)^tps = ([0-9.]+) \(without initial connection time\)`)

// pgbenchPhase runs `pgbench -S` (select-only, one primary-key read per
// transaction) and then pgbench's TPC-B-like default script (the write
// ceiling) on the same durable cluster, over the unix socket, after
// `pgbench -i -s 10` (1 in the quick run) in its own database.
func (b *bench) pgbenchPhase(ctx context.Context) error {
	bin := ""
	if dir, err := pgcluster.FindBinaries(); err == nil {
		if _, err := os.Stat(filepath.Join(dir, "pgbench")); err == nil {
			bin = filepath.Join(dir, "pgbench")
		}
	}
	if bin == "" {
		p, err := exec.LookPath("pgbench")
		if err != nil {
			b.note("pgbench not found (apt-get install -y postgresql-15): pgbench_select_tps and pgbench_tpcb_c16_tps skipped")
			return nil
		}
		bin = p
	}
	conn := []string{"-h", b.cluster.SocketDir, "-p", strconv.Itoa(b.cluster.Port), "-U", "postgres"}
	run := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, bin, append(append(args, conn...), b.cluster.BenchDB)...)
		cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C"}
		if err := asPostgres(cmd); err != nil {
			return "", err
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("pgbench %s: %v: %s", strings.Join(args, " "), err, lastLines(out, 5))
		}
		return string(out), nil
	}
	scale := strconv.Itoa(b.cfg.pgbenchScale)
	b.progress("ceiling: pgbench -i -s " + scale + " (durable cluster)")
	if _, err := run("-i", "-s", scale, "-q"); err != nil {
		return err
	}
	secs := strconv.Itoa(wholeSeconds(b.cfg.duration))
	b.progress("ceiling: pgbench -S -c 16 -j 2 -T " + secs + " over the unix socket")
	if b.cfg.warmup > 0 {
		if _, err := run("-S", "-c", "16", "-j", "2", "-T", strconv.Itoa(wholeSeconds(b.cfg.warmup))); err != nil {
			return err
		}
	}
	out, err := run("-S", "-c", "16", "-j", "2", "-T", secs)
	if err != nil {
		return err
	}
	m := tpsRe.FindStringSubmatch(out)
	if m == nil {
		return fmt.Errorf("pgbench: no tps line in: %s", lastLines([]byte(out), 5))
	}
	tps, _ := strconv.ParseFloat(m[1], 64)
	b.progressf("  pgbench -S: %.0f tps", tps)
	b.res.PgbenchSelectTPS = num1(tps)

	// The write ceiling: pgbench's built-in TPC-B-like script (three
	// updates, a select and an insert per durable commit) at the
	// concurrency of the PutSecret c16 phase. At a scale below 16 the
	// clients also queue on the branch rows.
	b.progress("ceiling: pgbench (TPC-B) -c 16 -j 2 -T " + secs + " over the unix socket, scale " + scale)
	if b.cfg.warmup > 0 {
		if _, err := run("-c", "16", "-j", "2", "-T", strconv.Itoa(wholeSeconds(b.cfg.warmup))); err != nil {
			return err
		}
	}
	out, err = run("-c", "16", "-j", "2", "-T", secs)
	if err != nil {
		return err
	}
	if m = tpsRe.FindStringSubmatch(out); m == nil {
		return fmt.Errorf("pgbench: no tps line in: %s", lastLines([]byte(out), 5))
	}
	tps, _ = strconv.ParseFloat(m[1], 64)
	b.progressf("  pgbench TPC-B: %.0f tps", tps)
	b.res.PgbenchTPCBTPS = num1(tps)
	return nil
}

var (
	wrkRPSRe     = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkPctRe     = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([0-9.]+)(us|ms|s|m)\s*$`)
	wrkNon2xxRe  = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
	wrkSocketErr = regexp.MustCompile(`Socket errors: .*`)
)

// restPhase measures GET /v1/secrets/{key}/versions/latest:access through
// the REST gateway with wrk, 16 connections, a random seeded key per
// request.
func (b *bench) restPhase(ctx context.Context) error {
	wrk, err := exec.LookPath("wrk")
	if err != nil {
		b.note("wrk not found (scripts/ensure-bench-tools.sh installs it as root): rest_access_c16_* skipped")
		return nil
	}
	script := filepath.Join(b.tmp, "access.lua")
	if err := os.WriteFile(script, accessLua, 0o644); err != nil {
		return err
	}
	url := "http://" + b.replicas[0].HTTP
	run := func(d time.Duration, latency bool) (string, error) {
		args := []string{"-t2", "-c16", fmt.Sprintf("-d%ds", wholeSeconds(d)), "-s", script,
			"-H", "Authorization: Bearer " + b.token}
		if latency {
			args = append(args, "--latency")
		}
		cmd := exec.CommandContext(ctx, wrk, append(args, url)...)
		cmd.Env = append(os.Environ(), "BENCH_KEYS="+strconv.Itoa(b.cfg.keys))
		out, err := cmd.CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("wrk: %v: %s", err, lastLines(out, 5))
		}
		return string(out), nil
	}
	b.progress("REST: wrk -t2 -c16 GET /v1/secrets/{key}/versions/latest:access")
	if b.cfg.warmup > 0 {
		if _, err := run(b.cfg.warmup/2, false); err != nil {
			return err
		}
	}
	var stopProfile func()
	if b.cfg.profileDir != "" {
		if stopProfile, err = b.startProfile("rest-c16", "REST access c16", min(10*time.Second, b.cfg.duration)); err != nil {
			return err
		}
	}
	var out string
	cpu := b.cpuDuring(func() { out, err = run(b.cfg.duration, true) })
	if stopProfile != nil {
		stopProfile()
	}
	if err != nil {
		return err
	}
	b.res.CPU["rest_c16"] = cpu
	b.progressf("  rest_c16: %s", cpu)
	m := wrkRPSRe.FindStringSubmatch(out)
	if m == nil {
		return fmt.Errorf("wrk: no Requests/sec in: %s", lastLines([]byte(out), 8))
	}
	rps, _ := strconv.ParseFloat(m[1], 64)
	pct := map[string]float64{}
	for _, p := range wrkPctRe.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(p[2], 64)
		pct[p[1]] = v * map[string]float64{"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[p[3]]
	}
	if n := wrkNon2xxRe.FindStringSubmatch(out); n != nil {
		b.note("REST: wrk saw " + n[1] + " non-2xx responses: rest_access_c16_rps counts them")
	}
	if s := wrkSocketErr.FindString(out); s != "" {
		b.note("REST: wrk " + s)
	}
	b.res.RestAccessC16RPS = num1(rps)
	b.res.RestAccessC16P50ms = num3(pct["50"])
	b.res.RestAccessC16P99ms = num3(pct["99"])
	b.progressf("  REST c16: %.0f req/s, p50 %.2fms, p99 %.2fms", rps, pct["50"], pct["99"])
	return nil
}

// prebuild compiles what the last phases run (the secretsd binary and the
// client package's test binary) while the servers are being set up, so the
// compilers do not run during a measured phase. wait returns the build
// errors.
func (b *bench) prebuild(ctx context.Context) (wait func() error) {
	done := make(chan error, 1)
	if b.root == "" {
		done <- errors.New("module root not found")
		return func() error { return <-done }
	}
	go func() {
		var errs []error
		for _, args := range [][]string{
			{"build", "-o", filepath.Join(b.tmp, "secretsd"), "./cmd/secretsd"},
			{"test", "-c", "-o", filepath.Join(b.tmp, "client.test"), "./client"},
		} {
			cmd := exec.CommandContext(ctx, "go", args...)
			cmd.Dir = b.root
			if out, err := cmd.CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("go %s: %v: %s", strings.Join(args, " "), err, lastLines(out, 10)))
			}
		}
		done <- errors.Join(errs...)
	}()
	var err error
	var once sync.Once
	return func() error { once.Do(func() { err = <-done }); return err }
}

var cacheBenchRe = regexp.MustCompile(`(?m)^BenchmarkCacheGet\S*\s+\d+\s+([0-9.]+) ns/op(?:\s+([0-9.]+) B/op\s+([0-9.]+) allocs/op)?`)

// cachePhase runs the client library's cache benchmark (Get of a cached
// key: no network), as `go test -run '^$' -bench BenchmarkCacheGet
// -benchmem ./client` would, from the test binary built by prebuild. The
// benchmark function starts a test server on each invocation and Go invokes
// it about five times with the default -benchtime; the quick run asks for a
// fixed iteration count instead (two invocations).
func (b *bench) cachePhase(ctx context.Context) error {
	if b.root == "" {
		b.note("module root not found: cache_get_* skipped")
		return nil
	}
	b.progress("client cache: go test -run '^$' -bench BenchmarkCacheGet -benchmem ./client")
	args := []string{"-test.run", "^$", "-test.bench", "BenchmarkCacheGet", "-test.benchmem"}
	if b.cfg.quick {
		args = append(args, "-test.benchtime", "10000000x")
	}
	cmd := exec.CommandContext(ctx, filepath.Join(b.tmp, "client.test"), args...)
	cmd.Dir = filepath.Join(b.root, "client") // go test runs a test in its package folder
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go test -bench: %v: %s", err, lastLines(out, 10))
	}
	m := cacheBenchRe.FindStringSubmatch(string(out))
	if m == nil || m[3] == "" {
		return fmt.Errorf("no BenchmarkCacheGet result in: %s", lastLines(out, 10))
	}
	ns, _ := strconv.ParseFloat(m[1], 64)
	bytesOp, _ := strconv.ParseFloat(m[2], 64)
	allocs, _ := strconv.ParseFloat(m[3], 64)
	b.res.CacheGetNs, b.res.CacheGetBytes, b.res.CacheGetAllocs = num3(ns), num1(bytesOp), num1(allocs)
	b.progressf("  cache Get: %.1f ns/op, %.0f B/op, %.0f allocs/op", ns, bytesOp, allocs)
	return nil
}

var servingRe = regexp.MustCompile(`msg="?secretsd serving"? .*\bhttp=(\S+)`)

// startupPhase starts cmd/secretsd (built by prebuild) on a fresh --data-dir (the
// embedded default: initdb, migrations, development KEK) and times exec to
// a 200 from /readyz; then SIGTERM, and the same again on the same folder.
func (b *bench) startupPhase(ctx context.Context) error {
	if b.root == "" {
		b.note("module root not found: embedded_start_s and restart_start_s skipped")
		return nil
	}
	bin := filepath.Join(b.tmp, "secretsd") // built by prebuild
	dataDir := filepath.Join(b.tmp, "embedded")
	logFile, err := os.Create(filepath.Join(b.tmp, "secretsd.log"))
	if err != nil {
		return err
	}
	defer logFile.Close()
	for i, field := range []**float64{&b.res.EmbeddedStartS, &b.res.RestartStartS} {
		what := []string{"fresh --data-dir (initdb, migrations)", "restart on the same --data-dir"}[i]
		b.progress("start-up: secretsd on a " + what)
		d, err := timeSecretsd(ctx, bin, dataDir, logFile)
		if err != nil {
			return fmt.Errorf("%s: %w (log: %s)", what, err, logFile.Name())
		}
		*field = num3(d.Seconds())
		b.progressf("  ready in %.3fs", d.Seconds())
	}
	return nil
}

// timeSecretsd starts bin on dataDir, waits for /readyz to answer 200, and
// stops it with SIGTERM; it returns the time from exec to ready.
func timeSecretsd(ctx context.Context, bin, dataDir string, log io.Writer) (time.Duration, error) {
	cmd := exec.Command(bin, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--data-dir", dataDir)
	cmd.Env = cleanEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	pipe, err := cmd.StderrPipe()
	if err != nil {
		return 0, err
	}
	began := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	addr := make(chan string, 1)
	exited := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(pipe)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			fmt.Fprintln(log, sc.Text())
			if m := servingRe.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case addr <- m[1]:
				default:
				}
			}
		}
		io.Copy(io.Discard, pipe)
		exited <- cmd.Wait()
	}()
	stop := func() error {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			return err
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-exited
			return errors.New("still running 30 s after SIGTERM")
		}
	}
	var httpAddr string
	select {
	case httpAddr = <-addr:
	case err := <-exited:
		return 0, fmt.Errorf("secretsd exited during start-up: %v", err)
	case <-time.After(2 * time.Minute):
		stop()
		return 0, errors.New("secretsd did not log \"secretsd serving\" in 2 minutes")
	case <-ctx.Done():
		stop()
		return 0, ctx.Err()
	}
	client := &http.Client{Timeout: 2 * time.Second}
	var ready time.Duration
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(5 * time.Millisecond) {
		resp, err := client.Get("http://" + httpAddr + "/readyz")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				ready = time.Since(began)
				break
			}
		}
		if time.Now().After(deadline) {
			stop()
			return 0, errors.New("/readyz not 200 within a minute")
		}
	}
	if err := stop(); err != nil {
		return ready, fmt.Errorf("after SIGTERM: %w", err)
	}
	return ready, nil
}

// cleanEnv is the environment without the server's settings, so that the
// embedded default and its development KEK are used.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if name == "DATABASE_URL" || strings.HasPrefix(name, "SECRETS_") || strings.HasPrefix(name, "PG") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// lastLines returns the last n lines of out, for error messages.
func lastLines(out []byte, n int) string {
	lines := bytes.Split(bytes.TrimSpace(out), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
