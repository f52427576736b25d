// Command secrets-bench is the load tool behind `make bench`. It starts real
// servers on loopback itself and prints a table of figures, then writes them
// as JSON (default bench/results.json; the path is printed last).
//
// Layout: the servers run in a child process (this binary re-executed with a
// hidden subcommand, see host.go): a private PostgreSQL cluster, durable
// (fsync on, as in production), in a temp folder; secretsd replicas started
// with app.Start on that cluster (2 replicas = two app.Start on the same
// database URL and KEK); and a bare grpc.Server for the transport's ceiling.
// This process is the load generator (generated gRPC stubs, the bootstrap
// admin token on every call) and runs pgbench, wrk, `go test -bench` and the
// secretsd binary. The machine's cores are shared by all of them: every load
// phase runs for a fixed duration after a warm-up.
//
// BENCH_QUICK=1 runs the same phases with small counts (under a minute);
// BENCH_PROFILE=dir saves CPU profiles of the servers during the access c16,
// REST access c16 and put c16 phases (10 s each) and the largest change-stream phase (writes
// and delivery) and prints their top functions.
package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/orient-bot/secrets/server/app"
	"github.com/orient-bot/secrets/server/pgcluster"
)

type config struct {
	quick        bool
	duration     time.Duration // per load phase
	warmup       time.Duration
	conns        int // client connections of the unary load phases
	keys         int
	pgbenchScale int
	watchSmall   int
	watchLarge   int
	watchConns   int
	watchWrites  int
	watchSpacing time.Duration
	idleConns    int
	// catchUpChanges is the change log's size for the catch-up phase.
	catchUpChanges int
	out            string
	profileDir     string
	skip           map[string]bool
}

type bench struct {
	cfg        config
	res        *results
	began      time.Time
	tmp        string
	root       string // module root ("" if unknown)
	host       *host
	cluster    hostReply
	replicas   []hostReply
	kek, token string
	profiles   []profile
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == hostSubcommand {
		raiseNoFile()
		if err := runHost(); err != nil {
			fmt.Fprintln(os.Stderr, "secrets-bench host:", err)
			os.Exit(1)
		}
		return
	}
	cfg := parseFlags()
	if err := run(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "secrets-bench:", err)
		os.Exit(1)
	}
}

func parseFlags() config {
	quick := os.Getenv("BENCH_QUICK") != "" && os.Getenv("BENCH_QUICK") != "0"
	for _, a := range os.Args[1:] { // -quick sets the defaults the other flags override
		switch a {
		case "-quick", "--quick", "-quick=true", "--quick=true":
			quick = true
		case "-quick=false", "--quick=false":
			quick = false
		}
	}
	c := config{
		quick: quick, duration: 15 * time.Second, warmup: 3 * time.Second, conns: 4, keys: 1000,
		watchSmall: 1000, watchLarge: 10000, watchConns: 100, watchWrites: 50, watchSpacing: 100 * time.Millisecond,
		idleConns: 1000, out: "bench/results.json", profileDir: os.Getenv("BENCH_PROFILE"),
		pgbenchScale: 10, catchUpChanges: 1_000_000,
	}
	if quick {
		c.duration, c.warmup = 2*time.Second, time.Second
		c.watchSmall, c.watchLarge, c.watchWrites = 200, 1000, 10
		c.idleConns = 500
		// Seeding costs one durable commit per secret, and pgbench -i
		// seconds per scale unit: smaller in the quick run.
		c.keys, c.pgbenchScale = 200, 1
		c.catchUpChanges = 100_000
	}
	flag.BoolVar(&c.quick, "quick", c.quick, "small counts (also BENCH_QUICK=1); the flags below override")
	flag.DurationVar(&c.duration, "duration", c.duration, "measured duration of each load phase")
	flag.DurationVar(&c.warmup, "warmup", c.warmup, "warm-up before each load phase")
	flag.IntVar(&c.conns, "conns", c.conns, "client gRPC connections shared by the workers of the unary phases")
	flag.IntVar(&c.keys, "keys", c.keys, "number of seeded secrets")
	flag.IntVar(&c.catchUpChanges, "catchup-changes", c.catchUpChanges, "change-log entries the catch-up phase's streams resume over")
	flag.IntVar(&c.pgbenchScale, "pgbench-scale", c.pgbenchScale, "pgbench -i -s scale")
	flag.IntVar(&c.watchSmall, "watch-small", c.watchSmall, "watch streams of the first change-stream phase (watch_1k_*)")
	flag.IntVar(&c.watchLarge, "watch-large", c.watchLarge, "watch streams of the second change-stream phase (watch_10k_*)")
	flag.IntVar(&c.watchConns, "watch-conns", c.watchConns, "client connections carrying the watch streams")
	flag.IntVar(&c.watchWrites, "watch-writes", c.watchWrites, "writes per change-stream phase")
	flag.DurationVar(&c.watchSpacing, "watch-spacing", c.watchSpacing, "time between those writes")
	flag.IntVar(&c.idleConns, "idle-conns", c.idleConns, "idle connections of the per-connection memory phase")
	flag.StringVar(&c.out, "out", c.out, "JSON output file")
	flag.StringVar(&c.profileDir, "profile", c.profileDir, "save server CPU profiles (access c16, REST access c16, put c16, largest watch phase) here (also BENCH_PROFILE)")
	skip := flag.String("skip", "", "comma-separated phases to skip: "+strings.Join(phaseNames, ","))
	only := flag.String("only", "", "comma-separated phases to run, skipping the others (e.g. -only watch for the change-stream phases alone)")
	flag.Parse()
	c.keys = max(c.keys, 20) // BatchAccessSecrets reads 20 distinct keys
	c.conns = max(c.conns, 1)
	c.watchConns = max(c.watchConns, 2)
	c.idleConns, c.watchSmall, c.watchLarge = max(c.idleConns, 2), max(c.watchSmall, 1), max(c.watchLarge, 1)
	if perConn := (c.watchLarge + c.watchConns - 1) / c.watchConns; perConn > app.MaxStreamsPerConn {
		fmt.Fprintf(os.Stderr, "secrets-bench: -watch-large %d over -watch-conns %d is %d streams a connection; the server allows %d (raise -watch-conns)\n",
			c.watchLarge, c.watchConns, perConn, app.MaxStreamsPerConn)
		os.Exit(2)
	}
	c.watchWrites = max(c.watchWrites, 1)
	c.skip = map[string]bool{}
	for _, s := range strings.Split(*skip, ",") {
		if s = strings.TrimSpace(s); s != "" {
			c.skip[s] = true
		}
	}
	if *only != "" {
		run := map[string]bool{}
		for _, s := range strings.Split(*only, ",") {
			if s = strings.TrimSpace(s); !slices.Contains(phaseNames, s) {
				fmt.Fprintf(os.Stderr, "secrets-bench: -only: unknown phase %q (phases: %s)\n", s, strings.Join(phaseNames, ","))
				os.Exit(2)
			}
			run[s] = true
		}
		for _, p := range phaseNames {
			if !run[p] {
				c.skip[p] = true
			}
		}
	}
	return c
}

// phaseNames are the phases, in the order they run.
var phaseNames = []string{"echo", "pgbench", "access", "batch", "rest", "put", "watch", "catchup", "rotation", "audit", "cache", "startup"}

func run(cfg config) (err error) {
	raiseNoFile()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	b := &bench{cfg: cfg, res: newResults(cfg), began: time.Now(), root: moduleRoot()}
	if la := b.res.LoadAvgStart; la > float64(b.res.Cores) {
		b.note(fmt.Sprintf("the machine was busy at the start (load average %.1f on %d cores): "+
			"figures are lower and noisier than on an idle machine", la, b.res.Cores))
	}

	// Leftovers of a killed run go first; then a fresh folder the postgres
	// user can traverse.
	pgcluster.Sweep("secrets-bench-")
	if b.tmp, err = pgcluster.TempDir("secrets-bench-"); err != nil {
		return err
	}
	defer os.RemoveAll(b.tmp)

	b.progress("setup: durable PostgreSQL cluster and a secretsd replica (app.Start) in a server host process; " +
		"building secretsd and the client's test binary meanwhile")
	waitBuild := b.prebuild(ctx)
	defer waitBuild()
	if b.host, err = startHost(); err != nil {
		return err
	}
	hostClosed := false
	closeHost := func() {
		if !hostClosed {
			hostClosed = true
			b.host.close()
		}
	}
	defer closeHost()
	if b.cluster, err = b.host.call(hostCmd{Op: "cluster", Dir: b.tmp}); err != nil {
		return err
	}
	b.kek, b.token = newKEK(), "osk_bench-admin-"+randomHex(16)
	if err := b.startReplica(); err != nil {
		return err
	}

	buildErr := waitBuild()
	if buildErr != nil {
		b.note("build failed: " + buildErr.Error())
		b.cfg.skip["cache"], b.cfg.skip["startup"] = true, true
	}
	b.phase(ctx, "echo", b.echoPhase)
	b.phase(ctx, "pgbench", b.pgbenchPhase)
	clients, closeClients, err := b.secretClients(ctx)
	if err != nil {
		return err
	}
	if err := b.seed(ctx, clients); err != nil {
		return err
	}
	// Each phase of audited calls is followed by the sequencer chaining
	// what it left in the audit intake, timed: a phase is measured on its
	// own load, not on the previous one's audit work (batch20 at c16 leaves
	// ~100,000 events).
	b.phase(ctx, "access", func(ctx context.Context) error { return b.accessPhase(ctx, clients) })
	b.drainIntake(ctx, "access")
	b.phase(ctx, "batch", func(ctx context.Context) error { return b.batchPhase(ctx, clients) })
	b.drainIntake(ctx, "batch")
	b.phase(ctx, "rest", b.restPhase)
	b.drainIntake(ctx, "rest")
	b.phase(ctx, "put", func(ctx context.Context) error { return b.putPhase(ctx, clients) })
	b.drainIntake(ctx, "put")
	closeClients()
	b.phase(ctx, "watch", b.watchPhases)
	b.phase(ctx, "catchup", b.catchUpPhase)
	b.phase(ctx, "rotation", b.rotationPhase) // it re-wraps the database's data keys
	b.phase(ctx, "audit", b.auditPhase)       // on a database of its own, and the bench's audit table as the phases left it
	closeHost()

	b.phase(ctx, "cache", b.cachePhase)
	b.phase(ctx, "startup", b.startupPhase)
	if ctx.Err() != nil {
		return ctx.Err()
	}

	var busy []string
	for _, name := range slices.Sorted(maps.Keys(b.res.CPU)) {
		if o := b.res.CPU[name].Other; o >= 0.25 {
			busy = append(busy, fmt.Sprintf("%s %.2f", name, o))
		}
	}
	if len(busy) > 0 {
		b.note("other processes took CPU during measured runs (cores: " + strings.Join(busy, ", ") +
			"): those figures are skewed low; run again on a quiet machine")
	}
	b.res.TotalSeconds = round1(time.Since(b.began).Seconds())
	b.res.LoadAvgEnd = loadAvg()
	b.reportProfiles()
	b.printTable()
	return b.writeJSON()
}

// phase runs one phase unless skipped; a failure is noted (its fields stay
// null) and the run goes on.
func (b *bench) phase(ctx context.Context, name string, fn func(context.Context) error) {
	if b.cfg.skip[name] || ctx.Err() != nil {
		return
	}
	if err := fn(ctx); err != nil {
		b.note(fmt.Sprintf("%s phase failed: %v", name, err))
		b.progress("  FAILED: " + err.Error())
	}
}

// intakeDrain is what a phase left in the audit intake and how long the
// sequencer took to chain it.
type intakeDrain struct {
	Events  int64   `json:"events"`
	Seconds float64 `json:"seconds"`
}

// drainIntake waits, at most two minutes, until the audit intake is empty
// after the phase that just ran, and records what it waited for.
func (b *bench) drainIntake(ctx context.Context, phase string) {
	if b.cfg.skip[phase] || ctx.Err() != nil {
		return
	}
	began := time.Now()
	first := int64(-1)
	for {
		r, err := b.host.call(hostCmd{Op: "intake", DSN: b.cluster.DSN})
		if err != nil {
			b.note(fmt.Sprintf("%s: audit intake not read: %v", phase, err))
			return
		}
		if first < 0 {
			first = r.Waiting
		}
		if r.Waiting == 0 {
			break
		}
		if time.Since(began) > 2*time.Minute {
			b.note(fmt.Sprintf("%s: %d audit events still waiting to be chained after 2 minutes", phase, r.Waiting))
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
	d := intakeDrain{Events: first, Seconds: round1(time.Since(began).Seconds())}
	b.res.IntakeDrain[phase] = d
	if first > 0 {
		b.progressf("  %s: %d audit events were waiting to be chained; chained in %.1f s", phase, d.Events, d.Seconds)
	}
}

// startReplica starts one more secretsd on the shared database and KEK.
func (b *bench) startReplica() error {
	r, err := b.host.call(hostCmd{Op: "app", DSN: b.cluster.DSN, KEK: b.kek, Token: b.token,
		LogPath: filepath.Join(b.tmp, "server.log")})
	if err != nil {
		return err
	}
	b.replicas = append(b.replicas, r)
	return nil
}

// watchPhases: per-connection memory, then the two change-stream phases,
// over 2 replicas.
func (b *bench) watchPhases(ctx context.Context) error {
	for len(b.replicas) < 2 {
		b.progress("setup: second secretsd replica on the same database and KEK")
		if err := b.startReplica(); err != nil {
			return err
		}
	}
	per, err := b.idleConnPhase(ctx, b.cfg.idleConns)
	if err != nil {
		return err
	}
	b.res.WatchBytesPerIdleConnection = num1(per)
	small, err := b.watchPhase(ctx, b.cfg.watchSmall, false)
	if err != nil {
		return err
	}
	b.res.Watch1kP50ms, b.res.Watch1kP99ms = num3(msf(small.P50)), num3(msf(small.P99))
	b.res.Watch1kLagged = num1(small.Lagged)
	b.res.CPU["watch_1k"] = small.CPU
	large, err := b.watchPhase(ctx, b.cfg.watchLarge, false)
	if err != nil {
		return err
	}
	b.res.Watch10kP50ms, b.res.Watch10kP99ms = num3(msf(large.P50)), num3(msf(large.P99))
	b.res.Watch10kLagged = num1(large.Lagged)
	b.res.CPU["watch_10k"] = large.CPU
	b.res.WatchBytesPerIdleWatcher = num1(large.BytesPerStream)
	b.res.WatchSmallBytesPerIdleWatcher = num1(small.BytesPerStream)
	framed, err := b.watchPhase(ctx, b.cfg.watchLarge, true)
	if err != nil {
		// The grpc-go figures stand; this one is missing, and says why.
		b.note(fmt.Sprintf("watch %d, frame-level receivers: %v", b.cfg.watchLarge, err))
		return nil
	}
	b.res.Watch10kFramesP50ms, b.res.Watch10kFramesP99ms = num3(msf(framed.P50)), num3(msf(framed.P99))
	b.res.CPU["watch_10k_frames"] = framed.CPU
	return nil
}

func (b *bench) progress(msg string) {
	fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(b.began).Seconds(), msg)
}

func (b *bench) progressf(format string, args ...any) { b.progress(fmt.Sprintf(format, args...)) }

func (b *bench) detail(name string, r loadResult) { b.progressf("  %s: %s", name, r) }

func (b *bench) note(msg string) { b.res.Notes = append(b.res.Notes, msg) }

// raiseNoFile lifts the open-file limit for 10,000 streams and 1,000
// connections: to 1<<20 when allowed (root), else to the hard limit.
func raiseNoFile() {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return
	}
	if want := uint64(1 << 20); r.Max < want {
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: want}) == nil {
			return
		}
	}
	r.Cur = r.Max
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r)
}

// moduleRoot is the folder of this module's go.mod ("" when not run from
// inside it).
func moduleRoot() string {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return ""
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return ""
	}
	return filepath.Dir(gomod)
}

func newKEK() string {
	k := make([]byte, 32)
	rand.Read(k)
	return "base64key://" + base64.URLEncoding.EncodeToString(k)
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func (b *bench) writeJSON() error {
	if dir := filepath.Dir(b.cfg.out); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	data, err := json.MarshalIndent(b.res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(b.cfg.out, append(data, '\n'), 0o644); err != nil {
		return err
	}
	abs, _ := filepath.Abs(b.cfg.out)
	fmt.Println(abs)
	return nil
}

// goVersion is the toolchain that built this binary.
func goVersion() string { return runtime.Version() }
