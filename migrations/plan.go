package migrations

import (
	"context"
	"fmt"
	"io/fs"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/pressly/goose/v3"
)

// Migration is one embedded migration file.
type Migration struct {
	Version int64
	File    string
	// Up is the SQL that applying it runs (its "+goose Up" section).
	Up string
}

// Plan is what Up would do to a database, found without changing it.
type Plan struct {
	// Applied are the versions the database records as applied.
	Applied []int64
	// Pending are the embedded migrations Up would apply, in order.
	Pending []Migration
	// Unknown are applied versions this binary has no file for: the
	// database was migrated by a newer release (a rolling upgrade in
	// progress). This binary leaves them alone.
	Unknown []int64
	// Missing are pending versions older than the database's newest: goose
	// refuses to apply them out of order, so Up would fail.
	Missing []int64
}

// All returns the embedded migrations in version order.
func All() ([]Migration, error) {
	names, err := fs.Glob(files, "*.sql")
	if err != nil {
		return nil, err
	}
	var out []Migration
	for _, name := range names {
		v, err := goose.NumericComponent(name)
		if err != nil {
			return nil, fmt.Errorf("migrations: %s: %w", name, err)
		}
		b, err := fs.ReadFile(files, name)
		if err != nil {
			return nil, err
		}
		out = append(out, Migration{Version: v, File: name, Up: upSection(string(b))})
	}
	slices.SortFunc(out, func(a, b Migration) int { return int(a.Version - b.Version) })
	return out, nil
}

// upSection returns the lines between "-- +goose Up" and "-- +goose Down".
func upSection(sql string) string {
	var b strings.Builder
	in := false
	for line := range strings.Lines(sql) {
		t := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(t, "-- +goose Up"):
			in = true
			continue
		case strings.HasPrefix(t, "-- +goose Down"):
			in = false
			continue
		case strings.HasPrefix(t, "-- +goose"):
			continue // StatementBegin/End and the like
		}
		if in {
			b.WriteString(line)
		}
	}
	return strings.TrimSpace(b.String())
}

// DryRun reports what Up would apply to the database at connString. It only
// reads: it does not create goose's version table or take the migration lock.
func DryRun(ctx context.Context, connString string) (Plan, error) {
	all, err := All()
	if err != nil {
		return Plan{}, err
	}
	cfg, err := pgxConfig(connString)
	if err != nil {
		return Plan{}, err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return Plan{}, fmt.Errorf("migrations: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var applied []int64
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT to_regclass('goose_db_version') IS NOT NULL`).Scan(&exists); err != nil {
		return Plan{}, fmt.Errorf("migrations: %w", err)
	}
	if exists {
		rows, err := conn.Query(ctx, `SELECT DISTINCT version_id FROM goose_db_version WHERE is_applied AND version_id > 0 ORDER BY 1`)
		if err != nil {
			return Plan{}, fmt.Errorf("migrations: %w", err)
		}
		if applied, err = pgx.CollectRows(rows, pgx.RowTo[int64]); err != nil {
			return Plan{}, fmt.Errorf("migrations: %w", err)
		}
	}
	return plan(all, applied), nil
}

func plan(all []Migration, applied []int64) Plan {
	p := Plan{Applied: applied}
	var maxApplied int64
	for _, v := range applied {
		maxApplied = max(maxApplied, v)
	}
	known := map[int64]bool{}
	for _, m := range all {
		known[m.Version] = true
		if slices.Contains(applied, m.Version) {
			continue
		}
		if m.Version < maxApplied {
			p.Missing = append(p.Missing, m.Version)
		}
		p.Pending = append(p.Pending, m)
	}
	for _, v := range applied {
		if !known[v] {
			p.Unknown = append(p.Unknown, v)
		}
	}
	return p
}
