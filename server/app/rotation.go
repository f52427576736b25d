package app

import (
	"context"
	"time"
)

// rotationBatch bounds the reminders one check publishes; the rest follow
// at the next check.
const rotationBatch = 1000

// rotationReminders publishes a ROTATION_DUE change for every rotation that
// fell due and a SECRET_EXPIRED change for every secret whose expire time
// passed (the store makes each one exactly-once across replicas), and
// refreshes the due/expired gauge, every RotationCheckInterval.
func (s *Server) rotationReminders(ctx context.Context) {
	interval := s.cfg.RotationCheckInterval
	if interval <= 0 {
		interval = time.Minute
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if sent, err := s.store.NotifyRotationsDue(ctx, rotationBatch); err != nil && ctx.Err() == nil {
			s.log.Warn("rotation reminders failed", "error", err)
		} else {
			for _, r := range sent {
				s.log.Info("rotation due", "key", r.Key, "due", r.Due, "revision", r.Revision)
			}
		}
		if sent, err := s.store.NotifyExpired(ctx, rotationBatch); err != nil && ctx.Err() == nil {
			s.log.Warn("expiry notices failed", "error", err)
		} else {
			for _, n := range sent {
				s.log.Info("secret expired", "key", n.Key, "expire_time", n.Expired, "revision", n.Revision)
			}
		}
		if c, err := s.store.CountRotation(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("rotation count failed", "error", err)
		} else if err == nil {
			s.rotationGauge.WithLabelValues("due").Set(float64(c.Due))
			s.rotationGauge.WithLabelValues("expired").Set(float64(c.Expired))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
