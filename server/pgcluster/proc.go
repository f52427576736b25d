package pgcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// This file recovers from what a crash leaves behind: postmaster.pid and the
// socket's .s.PGSQL.<port>.lock. PostgreSQL removes such a lock file itself
// only when the PID inside is dead; it refuses to start when that PID has been
// reused by any live process it may signal (for example the test binary, or
// our own restarted server), and an orphaned postmaster of this data directory
// (left behind by a kill -9 of our process and now shutting down on the
// Pdeathsig SIGINT) must be waited for, not raced.

// procAlive reports whether pid names a live (not zombie) process.
func procAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			if _, serr := os.Stat("/proc/self/stat"); serr == nil {
				return false
			}
		}
		// No usable /proc: ask the kernel. EPERM still means it exists.
		err := syscall.Kill(pid, 0)
		return err == nil || errors.Is(err, syscall.EPERM)
	}
	// A zombie keeps its PID until reaped but runs nothing; PostgreSQL would
	// still count it as alive (kill(pid, 0) succeeds), so it matters here.
	state, _ := statField(b, 3)
	return state != "Z" && state != "X"
}

// statField returns field n (1-based, as in proc(5)) of /proc/<pid>/stat. The
// command name (field 2) may hold spaces, so parsing starts after its ')'.
func statField(stat []byte, n int) (string, bool) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || n < 3 {
		return "", false
	}
	fields := strings.Fields(string(stat[i+1:]))
	if n-3 >= len(fields) {
		return "", false
	}
	return fields[n-3], true
}

// procStartTime is the start time of pid in clock ticks since boot ("0" when
// unknown): with the PID it identifies a process despite PID reuse.
func procStartTime(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "0"
	}
	if v, ok := statField(b, 22); ok {
		return v
	}
	return "0"
}

// isPostgres reports whether pid runs the postgres binary. /proc/<pid>/exe is
// authoritative when readable; otherwise fall back to the command line, which
// is argv[0] for a postmaster and "postgres: ..." for a retitled child.
func isPostgres(pid int) bool {
	if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil {
		base := filepath.Base(strings.TrimSuffix(exe, " (deleted)"))
		return base == "postgres" || base == "postmaster"
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(b) == 0 {
		return false
	}
	argv0, _, _ := strings.Cut(string(b), "\x00")
	if strings.HasPrefix(argv0, "postgres:") {
		return true
	}
	first, _, _ := strings.Cut(argv0, " ")
	base := filepath.Base(first)
	return base == "postgres" || base == "postmaster"
}

// procCwd is the working directory of pid, "" when unreadable (another
// user's process). A postmaster and all its children chdir into the data
// directory, which is what ties a process to a cluster.
func procCwd(pid int) string {
	cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
	if err != nil {
		return ""
	}
	return cwd
}

// dataDirProcesses lists live postgres processes (postmaster or children)
// whose working directory is realDir.
func dataDirProcesses(realDir string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		if procCwd(pid) == realDir && procAlive(pid) && isPostgres(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// orphanWait bounds how long Start waits for a previous server of the same
// data directory to finish shutting down.
const orphanWait = 10 * time.Second

// waitDataDirFree waits until no postgres process runs in realDir.
func waitDataDirFree(ctx context.Context, realDir string, logger *slog.Logger) error {
	deadline := time.Now().Add(orphanWait)
	logged := false
	for {
		pids := dataDirProcesses(realDir)
		if len(pids) == 0 {
			return nil
		}
		if !logged {
			logger.Info("waiting for a previous PostgreSQL of this data directory to exit", "data_dir", realDir, "pids", pids)
			logged = true
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pgcluster: PostgreSQL (pids %v) is still running on data directory %s; "+
				"is another server using it? stop it first", pids, realDir)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pgcluster: waiting for PostgreSQL (pids %v) on %s to exit: %w", pids, realDir, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// clearStaleLock removes the lock file at path when the process it names is
// gone or cannot be a server holding it. Call it after waitDataDirFree.
// socketLock is true for .s.PGSQL.<port>.lock, which another cluster may
// legitimately hold: then the file stays and PostgreSQL reports the conflict.
func clearStaleLock(path, realDataDir string, socketLock bool, logger *slog.Logger) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pgcluster: read %s: %w", path, err)
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, perr := strconv.Atoi(strings.TrimSpace(first))
	if pid < 0 {
		pid = -pid // a standalone backend writes its PID negated
	}
	var reason string
	switch {
	case perr != nil || pid == 0:
		// PostgreSQL writes the file right after creating it; an empty or
		// garbled one is the remnant of a crash during startup.
		reason = "unreadable PID"
	case pid == os.Getpid():
		reason = "PID is this process"
	case !procAlive(pid):
		reason = "process is gone"
	case !isPostgres(pid):
		reason = "PID reused by a process that is not PostgreSQL"
	default:
		cwd := procCwd(pid)
		switch {
		case cwd == realDataDir:
			return fmt.Errorf("pgcluster: PostgreSQL (pid %d) is already running on data directory %s", pid, realDataDir)
		case socketLock || cwd == "":
			return nil // another cluster, or one we cannot inspect: PostgreSQL decides
		default:
			reason = "PID reused by a PostgreSQL of another data directory"
		}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("pgcluster: remove stale %s: %w", path, err)
	}
	logger.Info("removed stale PostgreSQL lock file", "path", path, "pid", pid, "reason", reason)
	return nil
}
