package store

import (
	"context"
	"time"
)

// SecretExpiredAction is the audit action of a published expiry; its actor
// is RotationActor.
const SecretExpiredAction = "SecretExpired"

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
// NotifyRotationsDue it is safe on every replica at once (notifySchedule).
func (s *Store) NotifyExpired(ctx context.Context, limit int) ([]ExpiryNotice, error) {
	ns, err := s.notifySchedule(ctx, limit, expirySchedule)
	out := make([]ExpiryNotice, len(ns))
	for i, n := range ns {
		out[i] = ExpiryNotice{Key: n.key, Expired: n.at, Revision: n.revision}
	}
	return out, err
}
