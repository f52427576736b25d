package store

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
)

// SecretExpiredAction is the audit action of a published expiry; its actor
// is RotationActor.
const SecretExpiredAction = "SecretExpired"

// errNotExpired rolls back an expiry event that another replica (or an
// earlier run) already published, or whose expire time moved meanwhile.
var errNotExpired = errors.New("secret not expired or already notified")

// ExpiryNotice is one published SECRET_EXPIRED event.
type ExpiryNotice struct {
	Key      string
	Expired  time.Time
	Revision int64
}

// NotifyExpired publishes one SECRET_EXPIRED change (audited, on the change
// stream) for each secret whose expire time has passed and was not notified
// yet, at most limit per call, so that clients drop a value they cached
// before it expired. Its restart_required is the secret's restart flag: an
// expired value is a value change for its consumers. Like
// NotifyRotationsDue it is safe on every replica at once: each event
// commits only by moving the secret's expiry_notified_for marker to its
// expire time in a conditional UPDATE inside the write's transaction, so
// whichever replica commits first publishes and the others roll back. A
// different expire time that passes later is published again.
func (s *Store) NotifyExpired(ctx context.Context, limit int) ([]ExpiryNotice, error) {
	rows, err := s.pool.Query(ctx, `SELECT key FROM secrets
		WHERE expire_time <= now() AND expiry_notified_for IS DISTINCT FROM expire_time
		ORDER BY expire_time, key LIMIT $1`, limit)
	if err != nil {
		return nil, classify(err)
	}
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, classify(err)
	}
	var out []ExpiryNotice
	meta := Meta{Actor: RotationActor, Action: SecretExpiredAction}
	for _, key := range keys {
		n, err := write(ctx, s, meta, func(ctx context.Context, w *writer) (ExpiryNotice, change, error) {
			var (
				category string
				version  int64
				restart  bool
				expired  time.Time
			)
			err := w.tx.QueryRow(ctx, `UPDATE secrets SET expiry_notified_for = expire_time
				WHERE key = $1 AND expire_time <= $2 AND expiry_notified_for IS DISTINCT FROM expire_time
				RETURNING category, current_version, restart_required, expire_time`, key, w.now).Scan(&category, &version, &restart, &expired)
			if errors.Is(err, pgx.ErrNoRows) {
				return ExpiryNotice{}, change{}, errNotExpired
			}
			if err != nil {
				return ExpiryNotice{}, change{}, err
			}
			return ExpiryNotice{Key: key, Expired: expired, Revision: w.rev},
				change{kind: ChangeSecretExpired, key: key, version: version, category: category, restartRequired: restart,
					detail: "expire_time=" + expired.UTC().Format(time.RFC3339)},
				nil
		})
		if errors.Is(err, errNotExpired) {
			continue
		}
		if err != nil {
			return out, err
		}
		out = append(out, n)
	}
	return out, nil
}
