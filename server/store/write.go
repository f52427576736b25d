package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// change is what one write did: it becomes the change-log entry and the audit
// event of the write's revision.
type change struct {
	kind            ChangeKind
	key             string
	version         int64
	category        string
	restartRequired bool
	detail          string
	valueHMAC       []byte
}

// writer is handed to a write's body: the open transaction, the revision the
// change commits as, and the transaction's time.
type writer struct {
	tx   pgx.Tx
	rev  int64
	now  time.Time
	meta Meta
}

// write runs body in one transaction that first takes the next revision from
// the counter row (serializing writers, so revision order is commit order),
// then records the change-log entry, the audit event and, with a request id,
// the idempotency record, and wakes watchers — all committed together or not
// at all. A retry carrying a request id already committed returns the first
// result (R is stored as JSON; it never holds a value).
func write[R any](ctx context.Context, s *Store, meta Meta, body func(ctx context.Context, w *writer) (R, change, error), pre ...func(context.Context) error) (R, error) {
	var zero R
	if meta.RequestID != "" {
		if r, ok, err := replay[R](ctx, s, meta); err != nil || ok {
			return r, err
		}
	}
	// Cheap checks that can fail a write without taking the revision
	// counter (a stale etag under contention would otherwise queue behind
	// every writer just to be refused). The body checks again under the lock.
	for _, check := range pre {
		if err := check(ctx); err != nil {
			return zero, classify(err)
		}
	}
	var result R
	var committed int64
	err := s.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		w := &writer{tx: tx, meta: meta}
		if err := tx.QueryRow(ctx,
			`UPDATE revision_counter SET revision = revision + 1 RETURNING revision, now()`,
		).Scan(&w.rev, &w.now); err != nil {
			return err
		}
		r, c, err := body(ctx, w)
		if err != nil {
			return err
		}
		b := &pgx.Batch{}
		b.Queue(`INSERT INTO change_log (revision, time, kind, key, version, category, restart_required, detail)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
			w.rev, w.now, c.kind, c.key, c.version, c.category, c.restartRequired, c.detail)
		if meta.RequestID != "" {
			encoded, err := json.Marshal(r)
			if err != nil {
				return fmt.Errorf("encode idempotent result: %w", err)
			}
			b.Queue(`INSERT INTO idempotency (request_id, method, request_hash, response, create_time)
				VALUES ($1, $2, $3, $4, $5)`, meta.RequestID, meta.Action, meta.RequestHash, encoded, w.now)
		}
		b.Queue(`SELECT pg_notify($1, ($2::bigint)::text)`, NotifyChannel, w.rev)
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return err
		}
		// Into the audit intake: no lock, the sequencer chains it.
		if err := appendAudit(ctx, tx, []AuditEvent{{Time: w.now, Actor: meta.Actor, Action: meta.Action, Key: c.key,
			Version: c.version, Outcome: OutcomeOK, RequestID: meta.RequestID, Peer: meta.Peer, Revision: w.rev,
			Detail: c.detail, ValueHMAC: c.valueHMAC}}); err != nil {
			return err
		}
		result, committed = r, w.rev
		return nil
	})
	if err == nil {
		// Before the answer leaves, so that a read on this replica waits
		// for the change (a failed write notes nothing: its revision is
		// reused by the next write).
		s.noteWrite(committed)
	}
	if err != nil {
		if meta.RequestID != "" && isUniqueViolation(err, "idempotency_pkey") {
			// A concurrent attempt with the same request id committed first.
			if r, ok, rerr := replay[R](ctx, s, meta); rerr != nil || ok {
				return r, rerr
			}
		}
		return zero, err
	}
	return result, nil
}

func (s *Store) noteWrite(rev int64) {
	for {
		cur := s.lastWrite.Load()
		if rev <= cur || s.lastWrite.CompareAndSwap(cur, rev) {
			return
		}
	}
}

// LastWriteRevision is the highest revision a write through this store has
// committed. Reads served from memory must reflect it, so a client reads
// its own writes.
func (s *Store) LastWriteRevision() int64 { return s.lastWrite.Load() }

// replay returns the stored result of an earlier request with the same id.
func replay[R any](ctx context.Context, s *Store, meta Meta) (R, bool, error) {
	var zero R
	var method string
	var hash, response []byte
	err := s.pool.QueryRow(ctx,
		`SELECT method, request_hash, response FROM idempotency WHERE request_id = $1`, meta.RequestID,
	).Scan(&method, &hash, &response)
	if errors.Is(err, pgx.ErrNoRows) {
		return zero, false, nil
	}
	if err != nil {
		return zero, false, classify(err)
	}
	if method != meta.Action || string(hash) != string(meta.RequestHash) {
		return zero, false, ErrRequestIDReused
	}
	var r R
	if err := json.Unmarshal(response, &r); err != nil {
		return zero, false, fmt.Errorf("decode idempotent result: %w", err)
	}
	return r, true, nil
}

// RecordFailure audits a request that failed or was refused. It is best
// effort: the request already failed, and its error is what the caller sees.
func (s *Store) RecordFailure(ctx context.Context, meta Meta, key string, version int64, outcome, detail string) error {
	return s.AppendAudit(ctx, []AuditEvent{{Actor: meta.Actor, Action: meta.Action, Key: key, Version: version,
		Outcome: outcome, RequestID: meta.RequestID, Peer: meta.Peer, Detail: detail}})
}

// PurgeIdempotency removes idempotency records older than maxAge.
func (s *Store) PurgeIdempotency(ctx context.Context, maxAge time.Duration) (int64, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM idempotency WHERE create_time < now() - make_interval(secs => $1)`, maxAge.Seconds())
	if err != nil {
		return 0, classify(err)
	}
	return tag.RowsAffected(), nil
}

// etagCheck fails fast when key's current revision is not expect (nil: no
// compare-and-set).
func (s *Store) etagCheck(key string, expect *int64, mustExist bool) func(context.Context) error {
	return func(ctx context.Context) error {
		if expect == nil {
			return nil
		}
		var rev int64
		err := s.pool.QueryRow(ctx, `SELECT revision FROM secrets WHERE key = $1`, key).Scan(&rev)
		switch {
		case errors.Is(err, pgx.ErrNoRows) && mustExist:
			return fmt.Errorf("secret %s: %w", key, ErrNotFound)
		case errors.Is(err, pgx.ErrNoRows):
			return fmt.Errorf("secret %s changed since it was read: %w", key, ErrEtagMismatch)
		case err != nil:
			return err
		case rev != *expect:
			return fmt.Errorf("secret %s changed since it was read: %w", key, ErrEtagMismatch)
		}
		return nil
	}
}
