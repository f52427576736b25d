package pgcluster

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// installHint is the command that brings the server binaries on Debian/Ubuntu.
const installHint = "apt-get install -y postgresql"

// debianRoot is where Debian and Ubuntu install one bin directory per major version.
const debianRoot = "/usr/lib/postgresql"

// FindBinaries returns the directory holding initdb and postgres: the bindir
// reported by the pg_config found on PATH, else the highest-versioned
// /usr/lib/postgresql/<major>/bin. It verifies that both programs exist there,
// since pg_config alone (libpq-dev) does not bring the server.
func FindBinaries() (string, error) {
	if pgConfig, err := exec.LookPath("pg_config"); err == nil {
		if out, err := exec.Command(pgConfig, "--bindir").Output(); err == nil {
			if dir := strings.TrimSpace(string(out)); hasServer(dir) {
				return dir, nil
			}
		}
	}
	if dirs := debianBinDirs(); len(dirs) > 0 {
		return dirs[0], nil
	}
	// Last resort: initdb and postgres side by side on PATH.
	if initdb, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(initdb); err == nil && hasServer(filepath.Dir(real)) {
			return filepath.Dir(real), nil
		}
	}
	return "", errors.New("pgcluster: PostgreSQL server binaries (initdb, postgres) not found " +
		"(looked in `pg_config --bindir` and " + debianRoot + "/*/bin); install them with `" +
		installHint + "` (needs root on Debian/Ubuntu), or run with an external database")
}

// binariesForVersion prefers the bin directory of the major version an existing
// cluster was created with (PG_VERSION), so a machine with several majors
// installed keeps starting it with a compatible server.
func binariesForVersion(major string) (string, bool) {
	if !isVersion(major) {
		return "", false
	}
	dir := filepath.Join(debianRoot, major, "bin")
	if hasServer(dir) {
		return dir, true
	}
	return "", false
}

func isVersion(s string) bool {
	_, err := strconv.ParseFloat(s, 64)
	return err == nil
}

// debianBinDirs lists /usr/lib/postgresql/<major>/bin holding a server, highest
// major first.
func debianBinDirs() []string {
	entries, err := os.ReadDir(debianRoot)
	if err != nil {
		return nil
	}
	type cand struct {
		version float64
		dir     string
	}
	var cands []cand
	for _, e := range entries {
		v, err := strconv.ParseFloat(e.Name(), 64)
		if err != nil {
			continue
		}
		dir := filepath.Join(debianRoot, e.Name(), "bin")
		if hasServer(dir) {
			cands = append(cands, cand{v, dir})
		}
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].version > cands[j].version })
	dirs := make([]string, len(cands))
	for i, c := range cands {
		dirs[i] = c.dir
	}
	return dirs
}

func hasServer(dir string) bool {
	if dir == "" {
		return false
	}
	for _, name := range []string{"initdb", "postgres"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}
