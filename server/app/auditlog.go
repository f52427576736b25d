package app

import (
	"context"
	"crypto/ed25519"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/orient-bot/secrets/server/auditlog"
	"github.com/orient-bot/secrets/server/blobstore"
	"github.com/prometheus/client_golang/prometheus"
)

// openAuditLog sets up checkpoint signing: the configured key, else (on the
// embedded default) one generated next to the database; with DATABASE_URL a
// key is required unless AuditUnsigned says otherwise. Then the anchor: the
// configured URL, else (embedded) a folder in the data directory.
func (s *Server) openAuditLog(ctx context.Context) error {
	if p := s.cfg.AuditPartitionPeriod; p != 0 && (p < time.Second || p > 366*24*time.Hour) {
		return errors.New("--audit-partition-period: must be between 1s and 366 days (8784h)")
	}
	if d := s.cfg.AuditMaxDelay; d != 0 && (d < 100*time.Millisecond || d > time.Hour) {
		return errors.New("--audit-max-delay: must be between 100ms and 1h")
	}
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
	case s.cfg.AuditUnsigned:
		s.log.Warn("--audit-unsigned: audit checkpoints are not signed, so whoever controls the database can rewrite the whole audit chain unseen")
	default:
		return errors.New("no audit signing key: with DATABASE_URL, --audit-signing-key (SECRETS_AUDIT_SIGNING_KEY) is required " +
			"(create one with: head -c 32 /dev/urandom | base64 > audit-signing.key), or --audit-unsigned to run without one on purpose")
	}
	var pubs []ed25519.PublicKey
	for _, k := range s.cfg.AuditPublicKeys {
		p, err := auditlog.ParsePublicKey(k)
		if err != nil {
			return errors.New("--audit-public-keys: " + err.Error())
		}
		pubs = append(pubs, p)
	}
	if signer != nil {
		pubs = append(pubs, signer.Public())
		s.auditLog.Signer = signer
		s.log.Info("audit checkpoints signed", "key_id", signer.ID())
	}
	s.auditLog.Keys = auditlog.NewKeys(pubs...)

	anchorURL := s.cfg.AuditCheckpointURL
	if anchorURL == "" && s.cluster != nil {
		dir := filepath.Join(filepath.Dir(s.cluster.DataDir()), "audit-checkpoints")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		anchorURL = (&url.URL{Scheme: "file", Path: dir}).String()
	}
	switch {
	case anchorURL == "" && signer != nil:
		s.log.Warn("no --audit-checkpoint-url: signed checkpoints stay in the database only, so the audit chain is only self-attested (whoever controls the database can delete its tail with its checkpoints)")
	case anchorURL != "" && signer == nil:
		return errors.New("--audit-checkpoint-url needs a signing key (--audit-signing-key)")
	case anchorURL != "":
		a, err := auditlog.OpenAnchor(ctx, anchorURL)
		if err != nil {
			return err
		}
		s.auditLog.Anchor = a
		s.log.Info("audit checkpoints anchored outside the database", "url", blobstore.Redact(anchorURL))
	}
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

// newSequencer sets up the audit sequencer and its metrics.
func (s *Server) newSequencer(reg prometheus.Registerer) *auditlog.Sequencer {
	delay := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "secrets_audit_sequencing_delay_seconds",
		Help:    "Time from an audit event's time (its commit to the intake, for accesses) to its chaining by this replica's sequencer, on the database's clock.",
		Buckets: []float64{.001, .002, .005, .01, .02, .03, .05, .075, .1, .15, .25, .5, 1, 2.5, 5, 10},
	})
	reg.MustRegister(delay)
	q := auditlog.NewSequencer(s.store, auditlog.SequencerOptions{
		PartitionPeriod: s.cfg.AuditPartitionPeriod,
		MaxDelay:        s.cfg.AuditMaxDelay,
		Observe:         func(d time.Duration) { delay.Observe(d.Seconds()) },
		Logger:          s.log,
	})
	reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "secrets_audit_sequenced_events_total", Help: "Audit events this replica's sequencer chained.",
		}, func() float64 { return float64(q.Stats().Events) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "secrets_audit_sequencer_rounds_total", Help: "Sequencing rounds of this replica that chained events.",
		}, func() float64 { return float64(q.Stats().Rounds) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "secrets_audit_sequencer_failures_total", Help: "Sequencing rounds that failed (their events stay in the intake for the next round).",
		}, func() float64 { return float64(q.Stats().Failures) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "secrets_audit_reads_held_total", Help: "Access audit groups that waited for a sequencing round because the sequencer was more than --audit-max-delay behind.",
		}, func() float64 { return float64(q.Stats().Held) }))
	return q
}

// registerBatcherMetrics exports the access audits' group commit: groups,
// the callers and events they carried, and the time their commits took.
func registerBatcherMetrics(reg prometheus.Registerer, b *auditlog.Batcher) {
	reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "secrets_audit_access_groups_total", Help: "Access audit groups committed to the intake (one transaction and WAL flush each).",
		}, func() float64 { return float64(b.Stats().Groups) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "secrets_audit_access_group_callers_total", Help: "Audited reads carried by those groups; divided by the groups, the mean group.",
		}, func() float64 { return float64(b.Stats().Callers) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "secrets_audit_access_group_commit_seconds_total", Help: "Time spent committing those groups (round trip and WAL flush); divided by the groups, the mean commit an audited read waits for.",
		}, func() float64 { return b.Stats().Commit.Seconds() }))
}

// finalSequence chains what this replica committed to the intake before
// it stops (another replica, or the next start, would otherwise).
func (s *Server) finalSequence() {
	if s.sequencer == nil || s.store == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.sequencer.Flush(ctx); err != nil {
		s.log.Warn("audit sequencing at shutdown", "error", err)
	}
}

// finalCheckpoint signs the head once more at shutdown, so the anchor
// covers the events of the last interval too.
func (s *Server) finalCheckpoint() {
	if s.auditLog == nil || s.auditLog.Signer == nil || s.store == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := s.auditLog.Checkpoint(ctx); err != nil {
		s.log.Warn("audit checkpoint at shutdown", "error", err)
	}
}
