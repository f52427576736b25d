package main

// The server host: a child process (this binary re-executed with the hidden
// subcommand hostSubcommand) that runs everything under test — the private
// PostgreSQL cluster, the secretsd replicas (app.Start, in-process in the
// child) and the no-op echo server — while the parent process generates the
// load. Keeping the servers in their own process means
//
//   - runtime.ReadMemStats in the host measures the servers' heap only (the
//     client side of 10,000 watch streams lives in the parent), so the
//     per-stream and per-connection figures are the server's share;
//   - a CPU profile of the host shows server work only;
//   - the load generator's allocations and GC do not run in the server's
//     runtime, as with a real deployment (both still share the 2 cores).
//
// The parent drives the host with one JSON command per line on the child's
// stdin; each gets one JSON reply line on stdout. End of stdin (the parent
// died) shuts everything down, PostgreSQL included.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/orient-bot/secrets/migrations"
	"github.com/orient-bot/secrets/server/app"
	"github.com/orient-bot/secrets/server/auditlog"
	"github.com/orient-bot/secrets/server/pgcluster"
)

const hostSubcommand = "__host"

type hostCmd struct {
	Op      string `json:"op"`
	Dir     string `json:"dir,omitempty"`     // cluster: temp folder
	DSN     string `json:"dsn,omitempty"`     // app
	KEK     string `json:"kek,omitempty"`     // app
	Token   string `json:"token,omitempty"`   // app
	Path    string `json:"path,omitempty"`    // profile-start
	LogPath string `json:"logPath,omitempty"` // app: server log file
	N       int    `json:"n,omitempty"`       // seed-changes: change-log entries
}

type hostReply struct {
	Err        string `json:"err,omitempty"`
	DSN        string `json:"dsn,omitempty"`
	BenchDB    string `json:"benchDB,omitempty"`
	SocketDir  string `json:"socketDir,omitempty"`
	Port       int    `json:"port,omitempty"`
	GRPC       string `json:"grpc,omitempty"`
	HTTP       string `json:"http,omitempty"`
	Heap       uint64 `json:"heap,omitempty"`  // HeapInuse+StackInuse after GC
	Stack      uint64 `json:"stack,omitempty"` // StackInuse (goroutine stacks), part of Heap
	Goroutines int    `json:"goroutines,omitempty"`
	// intake: audit events waiting to be chained.
	Waiting int64 `json:"waiting,omitempty"`
	// WAL fsyncs so far and their total time, bytes and full-page images
	// written (pg_stat_wal).
	WALSyncs  int64   `json:"walSyncs,omitempty"`
	WALSyncMs float64 `json:"walSyncMs,omitempty"`
	WALBytes  int64   `json:"walBytes,omitempty"`
	WALFPI    int64   `json:"walFPI,omitempty"`
	// seed-changes: the change log's oldest and newest revision.
	Oldest   int64 `json:"oldest,omitempty"`
	Revision int64 `json:"revision,omitempty"`
}

// hostState is what the child runs.
type hostState struct {
	cluster *pgcluster.Cluster
	apps    []*runningApp
	echo    *grpc.Server
	prof    *os.File
	logFile *os.File
}

type runningApp struct {
	cancel context.CancelFunc
	done   chan error
}

// runHost is the child's main loop.
func runHost() error {
	h := &hostState{}
	defer h.shutdown()
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 64<<10), 1<<20)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var c hostCmd
		if err := json.Unmarshal(in.Bytes(), &c); err != nil {
			return err
		}
		r, err := h.do(c)
		if err != nil {
			r = hostReply{Err: err.Error()}
		}
		if err := out.Encode(r); err != nil {
			return err
		}
		if c.Op == "quit" {
			return nil
		}
	}
	return in.Err()
}

func (h *hostState) do(c hostCmd) (hostReply, error) {
	ctx := context.Background()
	switch c.Op {
	case "cluster":
		return h.startCluster(ctx, c.Dir)
	case "app":
		return h.startApp(ctx, c)
	case "echo":
		return h.startEcho()
	case "seed-changes":
		return seedChanges(ctx, c.DSN, c.N)
	case "stop-apps":
		h.stopApps()
		return hostReply{}, nil
	case "mem":
		// Twice: the first cycle may leave finalizer-freed objects behind.
		runtime.GC()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return hostReply{Heap: m.HeapInuse + m.StackInuse, Stack: m.StackInuse, Goroutines: runtime.NumGoroutine()}, nil
	case "intake":
		// Audit events committed but not yet chained (the service's
		// database, c.DSN).
		conn, err := pgx.Connect(ctx, c.DSN)
		if err != nil {
			return hostReply{}, err
		}
		defer conn.Close(ctx)
		var r hostReply
		err = conn.QueryRow(ctx, `SELECT count(*) FROM audit_intake`).Scan(&r.Waiting)
		return r, err
	case "wal":
		if h.cluster == nil {
			return hostReply{}, errors.New("no cluster")
		}
		conn, err := pgx.Connect(ctx, h.cluster.ConnString("postgres"))
		if err != nil {
			return hostReply{}, err
		}
		defer conn.Close(ctx)
		var r hostReply
		err = conn.QueryRow(ctx, `SELECT wal_sync, wal_sync_time, wal_bytes::bigint, wal_fpi FROM pg_stat_wal`).
			Scan(&r.WALSyncs, &r.WALSyncMs, &r.WALBytes, &r.WALFPI)
		return r, err
	case "profile-start":
		f, err := os.Create(c.Path)
		if err != nil {
			return hostReply{}, err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return hostReply{}, err
		}
		h.prof = f
		return hostReply{}, nil
	case "profile-stop":
		if h.prof == nil {
			return hostReply{}, errors.New("no profile running")
		}
		pprof.StopCPUProfile()
		err := h.prof.Close()
		h.prof = nil
		return hostReply{}, err
	case "quit":
		h.shutdown()
		return hostReply{}, nil
	}
	return hostReply{}, fmt.Errorf("unknown op %q", c.Op)
}

// startCluster starts a durable (fsync on) private cluster in dir and creates
// the service's database and pgbench's.
func (h *hostState) startCluster(ctx context.Context, dir string) (hostReply, error) {
	if h.cluster != nil {
		return hostReply{}, errors.New("cluster already running")
	}
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	// track_wal_io_timing only adds timing to pg_stat_wal (to report the
	// WAL fsyncs behind the audited reads); everything else is the default.
	c, err := pgcluster.Start(sctx, pgcluster.Options{DataDir: filepath.Join(dir, "postgres"), Durable: true,
		ExtraConfig: map[string]string{"track_wal_io_timing": "on"}})
	if err != nil {
		return hostReply{}, err
	}
	h.cluster = c
	conn, err := pgx.Connect(sctx, c.ConnString("postgres"))
	if err != nil {
		return hostReply{}, err
	}
	defer conn.Close(ctx)
	for _, db := range []string{"secrets", "pgbench"} {
		if _, err := conn.Exec(sctx, "CREATE DATABASE "+db); err != nil {
			return hostReply{}, fmt.Errorf("create database %s: %w", db, err)
		}
	}
	return hostReply{DSN: c.ConnString("secrets"), BenchDB: "pgbench", SocketDir: c.SocketDir(), Port: c.Port()}, nil
}

// startApp starts one secretsd replica on loopback ports with the documented
// defaults (info-level logging, to a file, as secretsd logs to stderr).
func (h *hostState) startApp(ctx context.Context, c hostCmd) (hostReply, error) {
	cfg := app.DefaultConfig()
	cfg.GRPCAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
	// As in production: the schema migrated by its owner, the service
	// connected as the least-privileged role (the last user= wins).
	mctx, mcancel := context.WithTimeout(ctx, time.Minute)
	defer mcancel()
	if err := migrations.Up(mctx, c.DSN); err != nil {
		return hostReply{}, err
	}
	if _, err := migrations.EnsureServiceRole(mctx, c.DSN, migrations.DefaultServiceRole); err != nil {
		return hostReply{}, err
	}
	cfg.DatabaseURL, cfg.KEKURL, cfg.BootstrapToken = c.DSN+" user="+migrations.DefaultServiceRole, c.KEK, c.Token
	cfg.BootstrapOut = io.Discard
	cfg.ShutdownTimeout = 5 * time.Second
	// The fan-out phases open up to 10,000 streams with one token: the
	// per-token bound (--max-streams-per-token, 100 by default) is lifted,
	// as an operator serving that many watchers of one identity would.
	cfg.MaxStreamsPerToken = 0
	// A signing key, as the embedded default has: checkpoints are part of
	// the production workload.
	keyFile := filepath.Join(filepath.Dir(c.LogPath), "audit-signing.key")
	if _, _, err := auditlog.GenerateSigner(keyFile); err != nil {
		return hostReply{}, err
	}
	cfg.AuditSigningKey = keyFile
	if h.logFile == nil {
		f, err := os.OpenFile(c.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return hostReply{}, err
		}
		h.logFile = f
	}
	log := slog.New(slog.NewTextHandler(h.logFile, &slog.HandlerOptions{Level: slog.LevelInfo}))
	actx, cancel := context.WithCancel(context.Background())
	srv, err := app.Start(actx, cfg, log)
	if err != nil {
		cancel()
		return hostReply{}, err
	}
	a := &runningApp{cancel: cancel, done: make(chan error, 1)}
	go func() { a.done <- srv.Serve(actx) }()
	h.apps = append(h.apps, a)
	return hostReply{GRPC: srv.GRPCAddr(), HTTP: srv.HTTPAddr()}, nil
}

// startEcho starts the ceiling: a bare grpc.Server with only the health
// service (no interceptors, no auth, no database).
func (h *hostState) startEcho() (hostReply, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return hostReply{}, err
	}
	s := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(s, hs)
	go s.Serve(lis)
	h.echo = s
	return hostReply{GRPC: lis.Addr().String()}, nil
}

func (h *hostState) stopApps() {
	var wg sync.WaitGroup
	for _, a := range h.apps {
		wg.Add(1)
		go func() { defer wg.Done(); a.cancel(); <-a.done }()
	}
	wg.Wait()
	h.apps = nil
}

func (h *hostState) shutdown() {
	if h.prof != nil {
		pprof.StopCPUProfile()
		h.prof.Close()
		h.prof = nil
	}
	if h.echo != nil {
		h.echo.Stop()
		h.echo = nil
	}
	h.stopApps()
	if h.cluster != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := h.cluster.Stop(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "secrets-bench host: stopping PostgreSQL:", err)
		}
		h.cluster = nil
	}
	if h.logFile != nil {
		h.logFile.Close()
		h.logFile = nil
	}
}

// host is the parent's handle on the child.
type host struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
	mu  sync.Mutex
}

func startHost() (*host, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, hostSubcommand)
	cmd.Stderr = os.Stderr
	// If we exit, the host sees its stdin close and shuts down cleanly;
	// Pdeathsig covers a SIGKILL of the parent as well (its PostgreSQL then
	// follows through pgcluster's own Pdeathsig).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	h := &host{cmd: cmd, in: in, out: bufio.NewScanner(outPipe)}
	h.out.Buffer(make([]byte, 64<<10), 1<<20)
	return h, nil
}

func (h *host) call(c hostCmd) (hostReply, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	b, _ := json.Marshal(c)
	if _, err := h.in.Write(append(b, '\n')); err != nil {
		return hostReply{}, fmt.Errorf("host %s: %w", c.Op, err)
	}
	if !h.out.Scan() {
		return hostReply{}, fmt.Errorf("host %s: no reply (%v)", c.Op, h.out.Err())
	}
	var r hostReply
	if err := json.Unmarshal(h.out.Bytes(), &r); err != nil {
		return hostReply{}, fmt.Errorf("host %s: %w", c.Op, err)
	}
	if r.Err != "" {
		return r, fmt.Errorf("host %s: %s", c.Op, r.Err)
	}
	return r, nil
}

// mem returns the host's heap and stacks in use after a GC.
func (h *host) mem() (uint64, error) {
	r, err := h.call(hostCmd{Op: "mem"})
	return r.Heap, err
}

// memStack is mem and the part of it that is goroutine stacks.
func (h *host) memStack() (total, stack uint64, err error) {
	r, err := h.call(hostCmd{Op: "mem"})
	return r.Heap, r.Stack, err
}

// close stops everything in the host and waits for it to exit.
func (h *host) close() {
	h.call(hostCmd{Op: "quit"})
	h.in.Close()
	waited := make(chan struct{})
	go func() { h.cmd.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(45 * time.Second):
		h.cmd.Process.Kill()
		<-waited
	}
}
