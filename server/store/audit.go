package store

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// AuditFilter selects audit events; zero fields match everything.
type AuditFilter struct {
	Key    string
	Actor  string
	Action string
	Start  time.Time // inclusive
	End    time.Time // exclusive
	// Before is the sequence of the last event of the previous page; 0 to start.
	Before int64
	Limit  int
}

// ListAudit returns audit events, newest first.
func (s *Store) ListAudit(ctx context.Context, f AuditFilter) ([]AuditEvent, error) {
	var start, end *time.Time
	if !f.Start.IsZero() {
		start = &f.Start
	}
	if !f.End.IsZero() {
		end = &f.End
	}
	rows, err := s.pool.Query(ctx, `SELECT `+auditColumns+`
		FROM audit_events
		WHERE ($1 = '' OR key = $1) AND ($2 = '' OR actor = $2) AND ($3 = '' OR action = $3)
			AND ($4::timestamptz IS NULL OR time >= $4) AND ($5::timestamptz IS NULL OR time < $5)
			AND ($6 = 0 OR sequence < $6)
		ORDER BY sequence DESC LIMIT $7`, f.Key, f.Actor, f.Action, start, end, f.Before, f.Limit)
	if err != nil {
		return nil, classify(err)
	}
	events, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (AuditEvent, error) { return scanAudit(r) })
	return events, classify(err)
}

const auditColumns = `sequence, time, actor, action, key, version, outcome, request_id, peer, revision, detail,
	COALESCE(prev_hash, ''), COALESCE(hash, ''), value_hmac`

func scanAudit(r pgx.Row) (AuditEvent, error) {
	var e AuditEvent
	err := r.Scan(&e.Sequence, &e.Time, &e.Actor, &e.Action, &e.Key, &e.Version, &e.Outcome, &e.RequestID, &e.Peer,
		&e.Revision, &e.Detail, &e.PrevHash, &e.Hash, &e.ValueHMAC)
	return e, err
}

// WritesWithValueMAC returns the successful writes whose value HMAC is mac
// (optionally of one key), oldest first, at most limit.
func (s *Store) WritesWithValueMAC(ctx context.Context, mac []byte, key string, limit int) ([]AuditEvent, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+auditColumns+`
		FROM audit_events
		WHERE value_hmac = $1 AND ($2 = '' OR key = $2) AND outcome = $3
		ORDER BY sequence LIMIT $4`, mac, key, OutcomeOK, limit)
	if err != nil {
		return nil, classify(err)
	}
	events, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (AuditEvent, error) { return scanAudit(r) })
	return events, classify(err)
}
