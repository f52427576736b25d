package app

import (
	"context"
	"path/filepath"
	"time"

	"github.com/orient-bot/secrets/server/auditlog"
)

// openAuditLog sets up checkpoint signing: the configured key, else (on the
// embedded default) one generated next to the database, else none — with a
// warning, since then a rewrite of the whole chain goes unseen.
func (s *Server) openAuditLog() error {
	s.auditLog = &auditlog.Log{Store: s.store}
	var signer *auditlog.Signer
	switch {
	case s.cfg.AuditSigningKey != "":
		var err error
		if signer, err = auditlog.LoadSigner(s.cfg.AuditSigningKey); err != nil {
			return err
		}
	case s.cluster != nil:
		file := filepath.Join(filepath.Dir(s.cluster.DataDir()), "audit-signing.key")
		var err error
		var created bool
		if signer, created, err = auditlog.GenerateSigner(file); err != nil {
			return err
		}
		if created {
			s.log.Warn("generated an audit checkpoint signing key next to the database; keep a copy elsewhere and use --audit-signing-key in production", "file", file)
		}
	default:
		s.log.Warn("no --audit-signing-key: audit checkpoints are not signed, so a rewrite of the whole audit chain would go unseen")
		return nil
	}
	s.auditLog.Signer, s.auditLog.Public = signer, signer.Public()
	s.log.Info("audit checkpoints signed", "key_id", signer.ID())
	return nil
}

// checkpoints signs the audit chain head periodically until ctx ends.
func (s *Server) checkpoints(ctx context.Context) {
	if s.auditLog.Signer == nil {
		return
	}
	interval := s.cfg.AuditCheckpointInterval
	if interval <= 0 {
		interval = time.Minute
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if seq, err := s.auditLog.Checkpoint(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("audit checkpoint", "error", err)
			} else if seq > 0 {
				s.log.Debug("audit checkpoint signed", "sequence", seq)
			}
		}
	}
}
