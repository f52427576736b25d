package pgcluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// tmpRoot is where throwaway folders go. Not os.TempDir(): $TMPDIR may be long
// (unix socket paths are limited to 107 bytes) or private to the current user
// (the postgres account must traverse it).
const tmpRoot = "/tmp"

// TempDir creates a fresh folder /tmp/<prefix><pid>-<starttime>-<random>, mode
// 0755 so that the cluster's run user can traverse it. The name records the
// creating process so that Sweep can tell leftovers of dead processes from
// folders in use. The caller removes it.
func TempDir(prefix string) (string, error) {
	if strings.ContainsRune(prefix, os.PathSeparator) {
		return "", fmt.Errorf("pgcluster: bad temp prefix %q", prefix)
	}
	pid := os.Getpid()
	dir, err := os.MkdirTemp(tmpRoot, fmt.Sprintf("%s%d-%s-", prefix, pid, procStartTime(pid)))
	if err != nil {
		return "", fmt.Errorf("pgcluster: %w", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		os.Remove(dir)
		return "", fmt.Errorf("pgcluster: %w", err)
	}
	return dir, nil
}

// Sweep removes folders made by TempDir(prefix) whose creating process no
// longer exists (a SIGKILLed test binary cannot clean up after itself). It
// returns the folders removed; failures to remove one are joined into err.
func Sweep(prefix string) (removed []string, err error) {
	if prefix == "" || strings.ContainsRune(prefix, os.PathSeparator) {
		return nil, fmt.Errorf("pgcluster: bad sweep prefix %q", prefix)
	}
	entries, err := os.ReadDir(tmpRoot)
	if err != nil {
		return nil, fmt.Errorf("pgcluster: sweep: %w", err)
	}
	var errs []error
	for _, e := range entries {
		name, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok || !e.IsDir() { // IsDir is false for symlinks: never follow one
			continue
		}
		parts := strings.Split(name, "-")
		if len(parts) != 3 {
			continue
		}
		pid, perr := strconv.Atoi(parts[0])
		if perr != nil || pid <= 0 || !isDigits(parts[1]) || !isDigits(parts[2]) {
			continue
		}
		if procAlive(pid) && (parts[1] == "0" || procStartTime(pid) == parts[1]) {
			continue // still in use
		}
		path := filepath.Join(tmpRoot, e.Name())
		if rerr := os.RemoveAll(path); rerr != nil {
			errs = append(errs, rerr)
			continue
		}
		removed = append(removed, path)
	}
	return removed, errors.Join(errs...)
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}
