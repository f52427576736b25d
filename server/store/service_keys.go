package store

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
)

// ServiceKey returns the sealed service key called name, creating it from
// create (which seals a fresh random key) when it does not exist yet. Racing
// replicas agree on the first one inserted.
func (s *Store) ServiceKey(ctx context.Context, name string, create func() (Sealed, error)) (Sealed, error) {
	read := func() (Sealed, error) {
		var k Sealed
		err := s.pool.QueryRow(ctx, `SELECT ciphertext, wrapped_dek, kek_id FROM service_keys WHERE name = $1`, name).
			Scan(&k.Ciphertext, &k.WrappedDEK, &k.KEKID)
		return k, err
	}
	k, err := read()
	if err == nil || !errors.Is(err, pgx.ErrNoRows) {
		return k, classify(err)
	}
	fresh, err := create()
	if err != nil {
		return Sealed{}, err
	}
	if _, err := s.pool.Exec(ctx, `INSERT INTO service_keys (name, ciphertext, wrapped_dek, kek_id, create_time)
		VALUES ($1, $2, $3, $4, now()) ON CONFLICT (name) DO NOTHING`, name, fresh.Ciphertext, fresh.WrappedDEK, fresh.KEKID); err != nil {
		return Sealed{}, classify(err)
	}
	k, err = read()
	return k, classify(err)
}
