package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// AccessVersion reads the sealed value of a version (0 = the newest) and the
// revision it reflects. A disabled or destroyed version is
// ErrFailedPrecondition.
func (s *Store) AccessVersion(ctx context.Context, key string, version int64) (SealedVersion, int64, error) {
	var (
		exists  bool
		v       SealedVersion
		state   *VersionState
		kekID   *string
		rev     int64
		current int64
		vnum    *int64
		expire  *time.Time
		expired bool
	)
	err := s.pool.QueryRow(ctx, `SELECT s.current_version, v.version, v.state, v.ciphertext, v.wrapped_dek, v.kek_id,
			(SELECT revision FROM revision_counter), s.expire_time, COALESCE(s.expire_time <= now(), false)
		FROM secrets s LEFT JOIN secret_versions v
			ON v.key = s.key AND v.version = CASE WHEN $2 = 0 THEN s.current_version ELSE $2 END
		WHERE s.key = $1`, key, version,
	).Scan(&current, &vnum, &state, &v.Sealed.Ciphertext, &v.Sealed.WrappedDEK, &kekID, &rev, &expire, &expired)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		exists = false
	case err != nil:
		return SealedVersion{}, 0, classify(err)
	default:
		exists = true
	}
	if !exists {
		return SealedVersion{}, 0, fmt.Errorf("secret %s: %w", key, ErrNotFound)
	}
	if state == nil || vnum == nil {
		return SealedVersion{}, rev, fmt.Errorf("version %d of secret %s: %w", version, key, ErrNotFound)
	}
	v.Key, v.Version = key, *vnum
	if expire != nil {
		v.ExpireTime = *expire
	}
	if err := accessible(key, v.Version, *state, v.ExpireTime, expired); err != nil {
		return SealedVersion{}, rev, err
	}
	v.Sealed.KEKID = *kekID
	return v, rev, nil
}

// accessible refuses a version that is not enabled, or a secret past its
// expire time (expired, by the database's clock), alike.
func accessible(key string, version int64, state VersionState, expireTime time.Time, expired bool) error {
	if state != StateEnabled {
		return fmt.Errorf("version %d of secret %s is %s: %w", version, key, state, ErrFailedPrecondition)
	}
	if expired {
		return expiredError(key, expireTime)
	}
	return nil
}

// BatchItem is one key's result in BatchAccess: a sealed value or an error.
type BatchItem struct {
	SealedVersion
	Err error
}

// BatchAccess reads the newest versions of several keys in one statement (one
// snapshot), in the order asked.
func (s *Store) BatchAccess(ctx context.Context, keys []string) ([]BatchItem, int64, error) {
	rows, err := s.pool.Query(ctx, `SELECT k.key, s.current_version, v.state, v.ciphertext, v.wrapped_dek, v.kek_id,
			(SELECT revision FROM revision_counter), s.expire_time, COALESCE(s.expire_time <= now(), false)
		FROM unnest($1::text[]) AS k(key)
		LEFT JOIN secrets s ON s.key = k.key
		LEFT JOIN secret_versions v ON v.key = s.key AND v.version = s.current_version`, keys)
	if err != nil {
		return nil, 0, classify(err)
	}
	defer rows.Close()
	found := make(map[string]BatchItem, len(keys))
	var rev int64
	for rows.Next() {
		var (
			key     string
			current *int64
			state   *VersionState
			kekID   *string
			item    BatchItem
			expire  *time.Time
			expired bool
		)
		if err := rows.Scan(&key, &current, &state, &item.Sealed.Ciphertext, &item.Sealed.WrappedDEK, &kekID, &rev, &expire, &expired); err != nil {
			return nil, 0, classify(err)
		}
		item.Key = key
		switch {
		case current == nil || state == nil:
			item.Err = fmt.Errorf("secret %s: %w", key, ErrNotFound)
		default:
			item.Version = *current
			if expire != nil {
				item.ExpireTime = *expire
			}
			item.Err = accessible(key, item.Version, *state, item.ExpireTime, expired)
			if item.Err == nil {
				item.Sealed.KEKID = *kekID
			}
		}
		found[key] = item
	}
	if err := rows.Err(); err != nil {
		return nil, 0, classify(err)
	}
	out := make([]BatchItem, len(keys))
	for i, k := range keys {
		out[i] = found[k]
	}
	return out, rev, nil
}
