package migrations

import (
	"fmt"

	"github.com/jackc/pgx/v5"
)

func pgxConfig(connString string) (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig(connString)
	if err != nil {
		// pgx errors can echo the connection string, which may hold a password.
		return nil, fmt.Errorf("migrations: invalid database URL")
	}
	return cfg, nil
}
