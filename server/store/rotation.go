package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Rotation reminders and expiry, after GCP Secret Manager's Secret.rotation
// and expire_time. Unlike GCP, a due rotation stays due (ListSecrets'
// rotation_due, the dashboard) until a new version answers it: the reminder
// is published once, and the schedule moves on with the new version.

// RotationDueAction is the audit action of a published rotation reminder;
// its actor is RotationActor.
const (
	RotationDueAction = "RotationDue"
	RotationActor     = "secretsd"
)

// errNotDue rolls back a reminder that another replica (or an earlier run)
// already published, or whose schedule moved meanwhile.
var errNotDue = errors.New("rotation not due or already notified")

// nextAfterNewVersion is the next rotation time once a new version is
// written at now: now plus the period; without a period, a one-off
// reminder that has passed is answered (cleared), a future one is kept.
func nextAfterNewVersion(cur Secret, now time.Time) time.Time {
	switch {
	case cur.RotationPeriod > 0:
		return now.Add(cur.RotationPeriod)
	case !cur.NextRotationTime.IsZero() && !cur.NextRotationTime.After(now):
		return time.Time{}
	}
	return cur.NextRotationTime
}

// applySchedule applies an update's rotation fields to cur and reports
// whether the next rotation time was set (so its reminder may be published
// again).
func applySchedule(cur *Secret, p UpdateParams, now time.Time) (bool, error) {
	// A field sent back unchanged (a client returning what it read with
	// another field edited) changes nothing: the schedule stays.
	rescheduled := false
	if p.RotationPeriod != nil && *p.RotationPeriod != cur.RotationPeriod {
		cur.RotationPeriod = *p.RotationPeriod
		if p.NextRotationTime == nil {
			// A new period starts now; no period, no recurring reminder.
			cur.NextRotationTime = time.Time{}
			if cur.RotationPeriod > 0 {
				cur.NextRotationTime = now.Add(cur.RotationPeriod)
			}
			rescheduled = true
		}
	}
	if p.NextRotationTime != nil && !p.NextRotationTime.Equal(cur.NextRotationTime) {
		cur.NextRotationTime = *p.NextRotationTime
		rescheduled = true
	}
	if cur.RotationPeriod > 0 && cur.NextRotationTime.IsZero() {
		return false, fmt.Errorf("next_rotation_time: required while rotation_period is set (clear rotation_period too): %w", ErrInvalidArgument)
	}
	if p.ExpireTime != nil {
		cur.ExpireTime = *p.ExpireTime
	}
	cur.setFlags(now)
	return rescheduled, nil
}

func expiredError(key string, at time.Time) error {
	return fmt.Errorf("secret %s expired at %s: %w", key, at.UTC().Format(time.RFC3339), ErrFailedPrecondition)
}

// RotationReminder is one published ROTATION_DUE event.
type RotationReminder struct {
	Key      string
	Due      time.Time
	Revision int64
}

// NotifyRotationsDue publishes one ROTATION_DUE change (audited, on the
// change stream) for each secret whose next rotation time has passed and
// was not notified yet, at most limit per call. It is safe to run on every
// replica at once: each reminder commits only by moving the secret's
// rotation_notified_for marker to its due time in a conditional UPDATE
// inside the write's transaction, so whichever replica commits first
// publishes and the others roll back.
func (s *Store) NotifyRotationsDue(ctx context.Context, limit int) ([]RotationReminder, error) {
	rows, err := s.pool.Query(ctx, `SELECT key FROM secrets
		WHERE next_rotation_time <= now() AND rotation_notified_for IS DISTINCT FROM next_rotation_time
		ORDER BY next_rotation_time, key LIMIT $1`, limit)
	if err != nil {
		return nil, classify(err)
	}
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, classify(err)
	}
	var out []RotationReminder
	meta := Meta{Actor: RotationActor, Action: RotationDueAction}
	for _, key := range keys {
		r, err := write(ctx, s, meta, func(ctx context.Context, w *writer) (RotationReminder, change, error) {
			var (
				category string
				version  int64
				due      time.Time
			)
			err := w.tx.QueryRow(ctx, `UPDATE secrets SET rotation_notified_for = next_rotation_time
				WHERE key = $1 AND next_rotation_time <= $2 AND rotation_notified_for IS DISTINCT FROM next_rotation_time
				RETURNING category, current_version, next_rotation_time`, key, w.now).Scan(&category, &version, &due)
			if errors.Is(err, pgx.ErrNoRows) {
				return RotationReminder{}, change{}, errNotDue
			}
			if err != nil {
				return RotationReminder{}, change{}, err
			}
			return RotationReminder{Key: key, Due: due, Revision: w.rev},
				change{kind: ChangeRotationDue, key: key, version: version, category: category,
					detail: "next_rotation_time=" + due.UTC().Format(time.RFC3339)},
				nil
		})
		if errors.Is(err, errNotDue) {
			continue
		}
		if err != nil {
			return out, err
		}
		out = append(out, r)
	}
	return out, nil
}

// RotationCounts is how many secrets are due for rotation and how many
// have expired, now.
type RotationCounts struct {
	Due, Expired int64
}

// CountRotation counts due and expired secrets (for the metric).
func (s *Store) CountRotation(ctx context.Context) (RotationCounts, error) {
	var c RotationCounts
	err := s.pool.QueryRow(ctx, `SELECT
			count(*) FILTER (WHERE next_rotation_time <= now()),
			count(*) FILTER (WHERE expire_time <= now())
		FROM secrets WHERE next_rotation_time IS NOT NULL OR expire_time IS NOT NULL`).Scan(&c.Due, &c.Expired)
	return c, classify(err)
}
