package migrations_test

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/migrations"
)

func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }

// emptyDatabase creates a database with no schema at all.
func emptyDatabase(t *testing.T) string {
	t.Helper()
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, testdb.Admin(t))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	name := "plan_" + strings.ReplaceAll(strings.ToLower(t.Name()), "/", "_")
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), testdb.Admin(t))
		if err == nil {
			c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
			c.Close(context.Background())
		}
	})
	return testdb.Admin(t) + " dbname=" + name
}

func versions(ms []migrations.Migration) []int64 {
	var out []int64
	for _, m := range ms {
		out = append(out, m.Version)
	}
	return out
}

// TestDryRun: on an empty database every migration is pending (with its Up
// SQL, without its Down SQL) and nothing is written, not even goose's
// version table; after Up nothing is; a version applied by a newer release
// is reported as unknown; a version never applied below the newest as
// missing.
func TestDryRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db := emptyDatabase(t)
	all, err := migrations.All()
	if err != nil || len(all) == 0 {
		t.Fatalf("All: %v, %d migrations", err, len(all))
	}

	p, err := migrations.DryRun(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(versions(p.Pending), versions(all)) || len(p.Applied) != 0 {
		t.Fatalf("empty database: pending %v applied %v, want every migration %v pending", versions(p.Pending), p.Applied, versions(all))
	}
	if !strings.Contains(p.Pending[0].Up, "CREATE TABLE") || strings.Contains(p.Pending[0].Up, "+goose") || strings.Contains(p.Pending[0].Up, "DROP TABLE secrets") {
		t.Errorf("first migration's Up section:\n%s", p.Pending[0].Up)
	}
	conn, err := pgx.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var tables int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE schemaname = 'public'`).Scan(&tables); err != nil || tables != 0 {
		t.Fatalf("a dry run created %d tables (%v)", tables, err)
	}

	if err := migrations.Up(ctx, db); err != nil {
		t.Fatal(err)
	}
	if p, err = migrations.DryRun(ctx, db); err != nil || len(p.Pending) != 0 || len(p.Applied) != len(all) {
		t.Fatalf("after Up: %+v, %v", p, err)
	}

	// A newer release's migration, and a hole below the newest.
	if _, err := conn.Exec(ctx, `INSERT INTO goose_db_version (version_id, is_applied) VALUES (999999, true)`); err != nil {
		t.Fatal(err)
	}
	if p, err = migrations.DryRun(ctx, db); err != nil || !slices.Equal(p.Unknown, []int64{999999}) || len(p.Pending) != 0 {
		t.Fatalf("with a newer release's migration: %+v, %v", p, err)
	}
	if _, err := conn.Exec(ctx, `DELETE FROM goose_db_version WHERE version_id = $1`, all[1].Version); err != nil {
		t.Fatal(err)
	}
	if p, err = migrations.DryRun(ctx, db); err != nil || !slices.Equal(p.Missing, []int64{all[1].Version}) {
		t.Fatalf("with a hole: %+v, %v", p, err)
	}
}
