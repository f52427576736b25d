package app

import (
	"context"
	"errors"
	"time"

	"github.com/orient-bot/secrets/server/auditlog"
)

// defaultRetentionInterval is how often the retention job looks for
// partitions that are due.
const defaultRetentionInterval = 10 * time.Minute

// openRetention checks the retention settings at start: retention needs an
// archive to export to and the signing key to sign segments.
func (s *Server) openRetention(ctx context.Context) error {
	switch {
	case s.cfg.AuditRetention < 0:
		return errors.New("--audit-retention must not be negative")
	case s.cfg.AuditRetention == 0:
		if s.cfg.AuditArchiveURL != "" {
			s.log.Info("--audit-archive-url is set but --audit-retention is 0: every event stays in the database, nothing is archived")
		}
		return nil
	case s.cfg.AuditArchiveURL == "":
		return errors.New("--audit-retention needs --audit-archive-url (SECRETS_AUDIT_ARCHIVE_URL): events are dropped from the database only after they are archived there")
	case s.auditLog.Signer == nil:
		return errors.New("--audit-retention needs the audit signing key (--audit-signing-key): archive segments are signed")
	}
	a, err := auditlog.OpenArchive(ctx, s.cfg.AuditArchiveURL)
	if err != nil {
		return err
	}
	s.retention = &auditlog.Retention{Store: s.store, Archive: a, Signer: s.auditLog.Signer, Keys: s.auditLog.Keys, Keep: s.cfg.AuditRetention}
	return nil
}

// retain runs the retention job until ctx ends, if this server's database
// role holds the retention privilege; otherwise it says once what is
// missing.
func (s *Server) retain(ctx context.Context) {
	if s.retention == nil {
		return
	}
	ok, err := s.store.CanRetainAudit(ctx)
	if err != nil {
		s.log.Warn("audit retention: cannot check the privilege", "error", err)
		return
	}
	if !ok {
		s.log.Warn("audit retention is configured but this database role may not archive and drop audit partitions: " +
			"an administrator runs GRANT secrets_retention TO <the service role> (or runs secretsd audit prune with a role that has it); " +
			"until then every event stays in the database")
		return
	}
	interval := s.cfg.AuditRetentionInterval
	if interval <= 0 {
		interval = defaultRetentionInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		began := time.Now()
		res, err := s.retention.Run(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			s.log.Warn("audit retention", "error", err, "dropped", res.Dropped)
		case res.Dropped > 0:
			s.log.Info("audit partitions archived and dropped", "exported", res.Exported, "reused", res.Reused, "dropped", res.Dropped,
				"rows", res.Rows, "elapsed", time.Since(began).Round(time.Millisecond))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
