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
// was not notified yet, at most limit per call (see notifySchedule for why
// every replica may run it at once).
func (s *Store) NotifyRotationsDue(ctx context.Context, limit int) ([]RotationReminder, error) {
	ns, err := s.notifySchedule(ctx, limit, rotationSchedule)
	out := make([]RotationReminder, len(ns))
	for i, n := range ns {
		out[i] = RotationReminder{Key: n.key, Due: n.at, Revision: n.revision}
	}
	return out, err
}

// schedule is a time column of secrets whose passing is published once:
// its marker column holds the time last published. The names are
// constants of this package, never input.
type schedule struct {
	column, marker string
	action         string
	kind           ChangeKind
	// restart: the event carries the secret's restart flag (a value
	// change for its consumers) rather than none.
	restart bool
}

var (
	rotationSchedule = schedule{column: "next_rotation_time", marker: "rotation_notified_for", action: RotationDueAction, kind: ChangeRotationDue}
	expirySchedule   = schedule{column: "expire_time", marker: "expiry_notified_for", action: SecretExpiredAction, kind: ChangeSecretExpired, restart: true}
)

type scheduleNotice struct {
	key      string
	at       time.Time
	revision int64
}

// errAlreadyNotified rolls back an event that another replica (or an
// earlier run) already published, or whose time moved meanwhile.
var errAlreadyNotified = errors.New("not due or already notified")

// notifySchedule publishes one change of sched's kind, audited, for each
// secret whose sched time has passed and was not published yet, at most
// limit per call. It is safe on every replica at once: each event commits
// only by moving the secret's marker to its time in a conditional UPDATE
// inside the write's transaction, so whichever replica commits first
// publishes and the others roll back. A different time that passes later
// is published again.
func (s *Store) notifySchedule(ctx context.Context, limit int, sched schedule) ([]scheduleNotice, error) {
	rows, err := s.pool.Query(ctx, `SELECT key FROM secrets
		WHERE `+sched.column+` <= now() AND `+sched.marker+` IS DISTINCT FROM `+sched.column+`
		ORDER BY `+sched.column+`, key LIMIT $1`, limit)
	if err != nil {
		return nil, classify(err)
	}
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, classify(err)
	}
	var out []scheduleNotice
	meta := Meta{Actor: RotationActor, Action: sched.action}
	for _, key := range keys {
		n, err := write(ctx, s, meta, func(ctx context.Context, w *writer) (scheduleNotice, change, error) {
			var (
				category string
				version  int64
				restart  bool
				at       time.Time
			)
			err := w.tx.QueryRow(ctx, `UPDATE secrets SET `+sched.marker+` = `+sched.column+`
				WHERE key = $1 AND `+sched.column+` <= $2 AND `+sched.marker+` IS DISTINCT FROM `+sched.column+`
				RETURNING category, current_version, restart_required, `+sched.column, key, w.now).Scan(&category, &version, &restart, &at)
			if errors.Is(err, pgx.ErrNoRows) {
				return scheduleNotice{}, change{}, errAlreadyNotified
			}
			if err != nil {
				return scheduleNotice{}, change{}, err
			}
			return scheduleNotice{key: key, at: at, revision: w.rev},
				change{kind: sched.kind, key: key, version: version, category: category, restartRequired: sched.restart && restart,
					detail: sched.column + "=" + at.UTC().Format(time.RFC3339)},
				nil
		})
		if errors.Is(err, errAlreadyNotified) {
			continue
		}
		if err != nil {
			return out, err
		}
		out = append(out, n)
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
