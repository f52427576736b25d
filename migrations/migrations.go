// Package migrations owns the database schema: SQL files embedded into the
// binary and applied with goose under a PostgreSQL advisory lock, so several
// replicas can start at once without racing each other.
package migrations

import (
	"context"
	"database/sql"
	"embed"
	"fmt"

	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

//go:embed *.sql
var files embed.FS

// newProvider builds a goose provider over db with a session advisory lock.
func newProvider(db *sql.DB) (*goose.Provider, error) {
	locker, err := lock.NewPostgresSessionLocker()
	if err != nil {
		return nil, err
	}
	return goose.NewProvider(goose.DialectPostgres, db, files, goose.WithSessionLocker(locker))
}

// Up applies every pending migration to the database at connString.
func Up(ctx context.Context, connString string) error {
	db, err := open(connString)
	if err != nil {
		return err
	}
	defer db.Close()
	p, err := newProvider(db)
	if err != nil {
		return fmt.Errorf("migrations: %w", err)
	}
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("migrations: apply: %w", err)
	}
	return nil
}

// Pending reports whether the database at connString lacks any migration.
func Pending(ctx context.Context, connString string) (bool, error) {
	db, err := open(connString)
	if err != nil {
		return false, err
	}
	defer db.Close()
	p, err := newProvider(db)
	if err != nil {
		return false, err
	}
	return p.HasPending(ctx)
}

func open(connString string) (*sql.DB, error) {
	cfg, err := pgxConfig(connString)
	if err != nil {
		return nil, err
	}
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(2)
	return db, nil
}
