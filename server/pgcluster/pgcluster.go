// Package pgcluster starts and stops a private PostgreSQL cluster from the
// machine's server binaries: the server's durable embedded database, and the
// throwaway clusters of the test harness. The cluster listens on a unix socket
// only (trust authentication, guarded by the socket directory's permissions)
// and is a child process of ours, so its lifetime is ours.
package pgcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Options configures Start.
type Options struct {
	// DataDir is the cluster directory (PGDATA). It is created and initdb'd if
	// missing or empty, and reused if it already holds a cluster.
	DataDir string
	// SocketDir is where the unix socket goes. "" chooses DataDir, or a short
	// folder under /tmp when the socket path would exceed 107 bytes. A folder
	// Start creates is owned by the run user, mode 0700 when Durable (trust
	// authentication: only that user and root may connect) else 0755, and is
	// removed when the server exits.
	SocketDir string
	// Port only names the socket (.s.PGSQL.<port>); 0 means 5432. TCP is never
	// opened (listen_addresses='').
	Port int
	// Durable keeps PostgreSQL's crash-safe defaults. False (tests) turns off
	// fsync, synchronous_commit and full_page_writes.
	Durable bool
	// Logger receives progress lines; nil discards them.
	Logger *slog.Logger
	// ExtraConfig holds extra server settings passed as -c name=value.
	ExtraConfig map[string]string
	// BinDir holds initdb and postgres; "" means FindBinaries (or, for an
	// existing cluster, the installed bin directory of its major version).
	BinDir string
}

// Cluster is a running postmaster started by Start.
type Cluster struct {
	dataDir      string
	socketDir    string
	ownSocketDir bool // created by Start; removed once the server exits
	port         int
	logPath      string
	logOffset    int64 // where this run's output starts in logPath
	logger       *slog.Logger

	process  *os.Process
	done     chan struct{}
	exitErr  error // valid once done is closed
	stopping atomic.Bool
}

// maxSocketPath is the longest unix socket path (sun_path holds 108 bytes with
// the terminating NUL).
const maxSocketPath = 107

// Defaults for the waits in Start and Stop.
const (
	readyTimeout = 30 * time.Second
	stopGrace    = 10 * time.Second
	quitGrace    = 5 * time.Second
	logRotateAt  = 8 << 20
)

// Start initializes the cluster if needed, starts the postmaster and waits
// until it accepts connections: until ctx's deadline, or 30 s when ctx has
// none (a durable cluster recovering from a crash may need longer: give it a
// deadline).
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	began := time.Now()
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if opts.DataDir == "" {
		return nil, errors.New("pgcluster: no data directory")
	}
	dataDir, err := filepath.Abs(opts.DataDir)
	if err != nil {
		return nil, fmt.Errorf("pgcluster: %w", err)
	}
	port := opts.Port
	if port == 0 {
		port = 5432
	}
	if port < 1 || port > 65535 {
		return nil, fmt.Errorf("pgcluster: bad port %d", port)
	}
	ru, err := lookupRunUser()
	if err != nil {
		return nil, err
	}

	state, err := inspectDataDir(dataDir)
	if err != nil {
		return nil, err
	}
	binDir := opts.BinDir
	if binDir == "" && state == dirCluster {
		if v, err := os.ReadFile(filepath.Join(dataDir, "PG_VERSION")); err == nil {
			binDir, _ = binariesForVersion(strings.TrimSpace(string(v)))
		}
	}
	if binDir == "" {
		if binDir, err = FindBinaries(); err != nil {
			return nil, err
		}
	}

	if err := prepareDataDir(ctx, dataDir, state, binDir, ru, opts.Durable, logger); err != nil {
		return nil, err
	}
	// /proc shows a process's cwd with symlinks resolved.
	realDataDir, err := filepath.EvalSymlinks(dataDir)
	if err != nil {
		return nil, fmt.Errorf("pgcluster: %w", err)
	}

	socketDir, ownSocketDir, err := prepareSocketDir(opts.SocketDir, dataDir, port, ru, opts.Durable)
	if err != nil {
		return nil, err
	}
	c := &Cluster{
		dataDir: dataDir, socketDir: socketDir, ownSocketDir: ownSocketDir, port: port,
		logPath: filepath.Join(dataDir, "postgres.log"), logger: logger,
		done: make(chan struct{}),
	}
	started := false
	defer func() {
		if !started && ownSocketDir {
			os.RemoveAll(socketDir)
		}
	}()

	if err := waitDataDirFree(ctx, realDataDir, logger); err != nil {
		return nil, err
	}
	if err := clearStaleLock(filepath.Join(dataDir, "postmaster.pid"), realDataDir, false, logger); err != nil {
		return nil, err
	}
	if err := clearStaleLock(filepath.Join(socketDir, socketName(port)+".lock"), realDataDir, true, logger); err != nil {
		return nil, err
	}

	logFile, err := c.openLog(ru)
	if err != nil {
		return nil, err
	}
	defer logFile.Close() // the child holds its own descriptor

	args := []string{"-D", dataDir, "-k", socketDir, "-p", strconv.Itoa(port), "-c", "listen_addresses="}
	if !opts.Durable {
		args = append(args, "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
	}
	for _, k := range slices.Sorted(maps.Keys(opts.ExtraConfig)) {
		args = append(args, "-c", k+"="+opts.ExtraConfig[k])
	}
	cmd := exec.Command(filepath.Join(binDir, "postgres"), args...)
	cmd.Dir = dataDir
	cmd.Env = serverEnv()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: ru.cred,
		// Own process group: a Ctrl-C on the terminal reaches only us, and we
		// shut the database down after the server has drained.
		Setpgid: true,
		// If we die (even by SIGKILL) the kernel sends the postmaster SIGINT,
		// a fast shutdown, instead of leaving an orphan holding the data dir.
		Pdeathsig: syscall.SIGINT,
	}
	if err := c.run(cmd); err != nil {
		return nil, fmt.Errorf("pgcluster: start postgres: %w", err)
	}
	started = true

	if err := c.waitReady(ctx); err != nil {
		stopCtx, cancel := context.WithTimeout(context.Background(), quitGrace)
		defer cancel()
		c.Stop(stopCtx)
		return nil, fmt.Errorf("%w%s", err, c.logTail())
	}
	logger.Info("PostgreSQL ready in "+time.Since(began).Round(time.Millisecond).String(),
		"data_dir", dataDir, "socket_dir", socketDir, "pid", c.process.Pid)
	return c, nil
}

// run starts cmd and reaps it when it exits.
//
// Pdeathsig fires when the *thread* that forked the child exits, not the
// process; Go may run the fork on any thread, and the runtime ends a thread
// when a goroutine locked to it returns. So the fork happens on a goroutine
// locked to its thread that stays alive, blocked in cmd.Wait, for the whole
// life of the postmaster: the signal then comes exactly when our process dies
// (or after the postmaster is gone, when it no longer matters).
func (c *Cluster) run(cmd *exec.Cmd) error {
	startErr := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: see above
		if err := cmd.Start(); err != nil {
			startErr <- err
			return
		}
		c.process = cmd.Process
		startErr <- nil
		err := cmd.Wait()
		c.exitErr = err
		if c.ownSocketDir {
			os.RemoveAll(c.socketDir)
		}
		if !c.stopping.Load() {
			c.logger.Error("PostgreSQL exited unexpectedly", "data_dir", c.dataDir, "err", err)
		}
		close(c.done)
	}()
	return <-startErr
}

// waitReady polls with pgx until the server answers.
func (c *Cluster) waitReady(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, readyTimeout)
		defer cancel()
	}
	connString := c.ConnString("postgres")
	delay := 5 * time.Millisecond
	for {
		attemptCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgx.Connect(attemptCtx, connString)
		cancel()
		if err == nil {
			conn.Close(ctx)
			return nil
		}
		select {
		case <-c.done:
			return fmt.Errorf("pgcluster: postgres exited during startup (%v)", c.exitErr)
		case <-ctx.Done():
			return fmt.Errorf("pgcluster: postgres not ready: %w (last error: %v)", ctx.Err(), err)
		case <-time.After(delay):
		}
		delay = min(delay*2, 100*time.Millisecond)
	}
}

// ConnString returns a keyword/value connection string for database dbname
// over the cluster's unix socket, as the postgres superuser. It holds no
// password (authentication is trust over a socket in a private directory).
func (c *Cluster) ConnString(dbname string) string {
	return fmt.Sprintf("host=%s port=%d user=postgres dbname=%s sslmode=disable",
		quoteValue(c.socketDir), c.port, quoteValue(dbname))
}

// ConnStringAs is ConnString for another role (trust authentication over
// the socket: no password either).
func (c *Cluster) ConnStringAs(user, dbname string) string {
	return fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable",
		quoteValue(c.socketDir), c.port, quoteValue(user), quoteValue(dbname))
}

// DataDir returns the absolute cluster directory.
func (c *Cluster) DataDir() string { return c.dataDir }

// SocketDir returns the directory holding the unix socket.
func (c *Cluster) SocketDir() string { return c.socketDir }

// Port returns the port number naming the socket.
func (c *Cluster) Port() int { return c.port }

// LogPath returns the file receiving the server's output.
func (c *Cluster) LogPath() string { return c.logPath }

// Wait returns a channel closed when the postmaster has exited, for any reason.
func (c *Cluster) Wait() <-chan struct{} { return c.done }

// Stop shuts the server down and returns only once the postmaster has exited.
// It asks for a fast shutdown (SIGINT: disconnect clients, checkpoint); after
// ctx is done or 10 s, whichever comes first, an immediate shutdown (SIGQUIT:
// crash recovery at next start); 5 s later it kills the process group.
// Calling it again, or after the server died, just reports how it ended.
func (c *Cluster) Stop(ctx context.Context) error {
	c.stopping.Store(true)
	select {
	case <-c.done:
		return c.exitResult()
	default:
	}
	c.process.Signal(syscall.SIGINT)

	grace := time.NewTimer(stopGrace)
	defer grace.Stop()
	select {
	case <-c.done:
		return c.exitResult()
	case <-ctx.Done():
	case <-grace.C:
	}
	c.logger.Warn("PostgreSQL did not shut down in time; sending SIGQUIT (immediate shutdown)", "data_dir", c.dataDir)
	c.process.Signal(syscall.SIGQUIT)
	select {
	case <-c.done:
		return errors.New("pgcluster: fast shutdown timed out; PostgreSQL stopped by immediate shutdown")
	case <-time.After(quitGrace):
	}
	c.logger.Error("PostgreSQL ignored SIGQUIT; killing its process group", "data_dir", c.dataDir)
	syscall.Kill(-c.process.Pid, syscall.SIGKILL)
	<-c.done
	return errors.New("pgcluster: PostgreSQL did not shut down; killed")
}

func (c *Cluster) exitResult() error {
	if c.exitErr != nil {
		return fmt.Errorf("pgcluster: postgres exited: %w", c.exitErr)
	}
	return nil
}

// dirState classifies a data directory before Start touches it.
type dirState int

const (
	dirMissing dirState = iota
	dirEmpty
	dirCluster
)

func inspectDataDir(dir string) (dirState, error) {
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return dirMissing, nil
	case err != nil:
		return 0, fmt.Errorf("pgcluster: data directory: %w", err)
	case len(entries) == 0:
		return dirEmpty, nil
	}
	if _, err := os.Stat(filepath.Join(dir, "PG_VERSION")); err != nil {
		return 0, fmt.Errorf("pgcluster: data directory %s is not empty and holds no PostgreSQL cluster (no PG_VERSION)", dir)
	}
	return dirCluster, nil
}

// prepareDataDir makes dataDir hold a cluster owned by the run user.
func prepareDataDir(ctx context.Context, dataDir string, state dirState, binDir string, ru runUser, durable bool, logger *slog.Logger) error {
	parent := filepath.Dir(dataDir)
	switch state {
	case dirMissing:
		if err := os.MkdirAll(parent, 0o755); err != nil {
			return fmt.Errorf("pgcluster: %w", err)
		}
		if err := ru.checkTraverse(parent, dataDir, "data directory"); err != nil {
			return err
		}
		// initdb into a sibling and rename: a crash mid-initdb must not leave
		// a half-made cluster that a later Start would take for a real one.
		tmp := dataDir + ".initdb-tmp"
		if err := os.RemoveAll(tmp); err != nil {
			return fmt.Errorf("pgcluster: %w", err)
		}
		if err := os.Mkdir(tmp, 0o700); err != nil {
			return fmt.Errorf("pgcluster: %w", err)
		}
		if err := ru.chown(tmp); err != nil {
			os.RemoveAll(tmp)
			return fmt.Errorf("pgcluster: %w", err)
		}
		logger.Info("initializing PostgreSQL cluster in " + dataDir)
		if err := initdb(ctx, binDir, tmp, parent, ru, durable); err != nil {
			os.RemoveAll(tmp)
			return err
		}
		if err := os.Rename(tmp, dataDir); err != nil {
			os.RemoveAll(tmp)
			return fmt.Errorf("pgcluster: %w", err)
		}
		return ru.chownTree(dataDir)
	case dirEmpty:
		// Possibly a mount point, so initdb in place (it removes what it made
		// if it fails).
		if err := ru.checkTraverse(parent, dataDir, "data directory"); err != nil {
			return err
		}
		if err := os.Chmod(dataDir, 0o700); err != nil {
			return fmt.Errorf("pgcluster: %w", err)
		}
		if err := ru.chown(dataDir); err != nil {
			return fmt.Errorf("pgcluster: %w", err)
		}
		logger.Info("initializing PostgreSQL cluster in " + dataDir)
		if err := initdb(ctx, binDir, dataDir, parent, ru, durable); err != nil {
			return err
		}
		return ru.chownTree(dataDir)
	default:
		if err := ru.checkTraverse(parent, dataDir, "data directory"); err != nil {
			return err
		}
		fi, err := os.Stat(dataDir)
		if err != nil {
			return fmt.Errorf("pgcluster: %w", err)
		}
		if o := owner(fi); o != ru.uid {
			return fmt.Errorf("pgcluster: data directory %s is owned by uid %d, but PostgreSQL runs as %s (uid %d); "+
				"chown -R it to %s", dataDir, o, ru.name, ru.uid, ru.name)
		}
		// PostgreSQL refuses a data directory readable by others.
		if fi.Mode().Perm()&0o027 != 0 {
			if err := os.Chmod(dataDir, 0o700); err != nil {
				return fmt.Errorf("pgcluster: %w", err)
			}
		}
		return nil
	}
}

func initdb(ctx context.Context, binDir, dir, workDir string, ru runUser, durable bool) error {
	args := []string{"-D", dir, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C.UTF-8"}
	if !durable {
		args = append(args, "--no-sync")
	}
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "initdb"), args...)
	cmd.Dir = workDir
	cmd.Env = serverEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: ru.cred, Setpgid: true}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("pgcluster: initdb %s: %w\n%s", dir, err, tail(out, 20))
	}
	return nil
}

// prepareSocketDir returns the socket directory and whether Start created it.
func prepareSocketDir(socketDir, dataDir string, port int, ru runUser, durable bool) (string, bool, error) {
	name := socketName(port)
	// Test clusters may be reached by other local tools; a durable one only by
	// its run user (and root).
	mode := os.FileMode(0o700)
	if !durable {
		mode = 0o755
	}
	if socketDir == "" {
		if len(filepath.Join(dataDir, name)) <= maxSocketPath {
			return dataDir, false, nil
		}
		Sweep(socketPrefix) // leftovers of killed processes; best effort
		dir, err := TempDir(socketPrefix)
		if err != nil {
			return "", false, err
		}
		if err := setOwnerMode(dir, mode, ru); err != nil {
			os.RemoveAll(dir)
			return "", false, err
		}
		return dir, true, nil
	}
	dir, err := filepath.Abs(socketDir)
	if err != nil {
		return "", false, fmt.Errorf("pgcluster: %w", err)
	}
	if n := len(filepath.Join(dir, name)); n > maxSocketPath {
		return "", false, fmt.Errorf("pgcluster: socket directory %s is too long (socket path of %d bytes, limit %d)", dir, n, maxSocketPath)
	}
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, mode); err != nil {
			return "", false, fmt.Errorf("pgcluster: socket directory: %w", err)
		}
		if err := setOwnerMode(dir, mode, ru); err != nil {
			return "", false, err
		}
	}
	if err := ru.checkTraverse(dir, dir, "socket directory"); err != nil {
		return "", false, err
	}
	return dir, false, nil
}

// setOwnerMode gives a socket folder we made to the run user, with mode.
func setOwnerMode(dir string, mode os.FileMode, ru runUser) error {
	if err := os.Chmod(dir, mode); err != nil {
		return fmt.Errorf("pgcluster: socket directory: %w", err)
	}
	if err := ru.chown(dir); err != nil {
		return fmt.Errorf("pgcluster: socket directory: %w", err)
	}
	return nil
}

// socketPrefix names the socket folders Start makes under /tmp.
const socketPrefix = "pgcluster-sock-"

func socketName(port int) string { return ".s.PGSQL." + strconv.Itoa(port) }

// openLog opens the server log for appending, rotating it first when large.
func (c *Cluster) openLog(ru runUser) (*os.File, error) {
	if fi, err := os.Stat(c.logPath); err == nil && fi.Size() > logRotateAt {
		os.Rename(c.logPath, c.logPath+".1")
	}
	f, err := os.OpenFile(c.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("pgcluster: server log: %w", err)
	}
	if err := ru.chown(c.logPath); err != nil {
		f.Close()
		return nil, fmt.Errorf("pgcluster: server log: %w", err)
	}
	if fi, err := f.Stat(); err == nil {
		c.logOffset = fi.Size()
	}
	return f, nil
}

// logTail returns the end of this run's server output, for error messages.
func (c *Cluster) logTail() string {
	f, err := os.Open(c.logPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	const max = 4 << 10
	start := c.logOffset
	if fi, err := f.Stat(); err == nil && fi.Size()-start > max {
		start = fi.Size() - max
	}
	b, err := io.ReadAll(io.NewSectionReader(f, start, max))
	if err != nil || len(bytes.TrimSpace(b)) == 0 {
		return ""
	}
	return "\nPostgreSQL log (" + c.logPath + "):\n" + tail(b, 20)
}

// tail returns the last n lines of b.
func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// serverEnv is what initdb and postgres get of our environment: the
// search path, locale, time zone and temporary directory, nothing else. Not
// libpq/server variables (PGDATA, PGPORT, ...), so that only the explicit
// arguments decide; and not secretsd's own (SECRETS_KEK_URL, the bootstrap
// token, KMS credentials): the server may run as another user, and a
// database superuser can read its environment (COPY … FROM PROGRAM 'env').
func serverEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case name == "PATH", name == "HOME", name == "TZ", name == "TMPDIR", name == "LANG", name == "LANGUAGE",
			strings.HasPrefix(name, "LC_"):
			env = append(env, kv)
		}
	}
	return env
}

// quoteValue quotes a keyword/value connection string value when needed.
func quoteValue(s string) string {
	if s != "" && !strings.ContainsAny(s, ` '\`) {
		return s
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}
