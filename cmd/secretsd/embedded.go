package main

import (
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

	"github.com/orient-bot/secrets/server/pgcluster"
)

// embeddedDatabase connects a command (secretsd audit) to the embedded
// default's database in dataDir: through the socket of the cluster a
// running secretsd serves, or else by starting the cluster for the command
// (stop stops it again). It never creates a cluster.
func embeddedDatabase(ctx context.Context, dataDir string, log *slog.Logger) (dsn string, stop func(), err error) {
	dir, err := filepath.Abs(dataDir)
	if err != nil {
		return "", nil, err
	}
	pgdata := filepath.Join(dir, "postgres")
	if _, err := os.Stat(filepath.Join(pgdata, "PG_VERSION")); err != nil {
		return "", nil, fmt.Errorf("no embedded database in %s (set DATABASE_URL, or --data-dir / SECRETS_DATA_DIR to where secretsd keeps it)", dir)
	}
	if dsn, ok := runningCluster(pgdata); ok {
		return dsn, func() {}, nil
	}
	cluster, err := pgcluster.Start(ctx, pgcluster.Options{DataDir: pgdata, Durable: true, Logger: log})
	if err != nil {
		return "", nil, fmt.Errorf("embedded PostgreSQL: %w", err)
	}
	return cluster.ConnString("postgres"), func() { _ = cluster.Stop(context.Background()) }, nil
}

// runningCluster reads postmaster.pid (PostgreSQL's own lock file: PID,
// data directory, start time, port, socket directory, …) and returns the
// connection string of the live server it names.
func runningCluster(pgdata string) (string, bool) {
	b, err := os.ReadFile(filepath.Join(pgdata, "postmaster.pid"))
	if err != nil {
		return "", false
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 5 {
		return "", false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(lines[0]))
	if err != nil || pid <= 0 {
		return "", false
	}
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return "", false // a stale lock: the cluster is not running
	}
	port, err := strconv.Atoi(strings.TrimSpace(lines[3]))
	socketDir := strings.TrimSpace(lines[4])
	if err != nil || socketDir == "" {
		return "", false
	}
	if _, err := os.Stat(filepath.Join(socketDir, ".s.PGSQL."+strconv.Itoa(port))); errors.Is(err, fs.ErrNotExist) {
		return "", false
	}
	return fmt.Sprintf("host='%s' port=%d user=postgres dbname=postgres sslmode=disable", strings.ReplaceAll(socketDir, "'", `\'`), port), true
}
