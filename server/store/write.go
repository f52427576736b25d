package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
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
// change commits as, and the transaction's time. The transaction is its
// batch's: the body runs after the writes before it in the batch and sees
// their changes.
type writer struct {
	tx   pgx.Tx
	rev  int64
	now  time.Time
	meta Meta
	// read holds the secrets the batch read at its start (writeReading),
	// absent ones as nil.
	read map[string]*Secret
	// plan, when set, is where apply puts the write's one statement: the
	// batch sends the statements of all its writes together (runPlanned),
	// and tx refuses any other statement.
	plan *plan
}

// plan is a write's one statement, to be sent with the other writes'.
type plan struct {
	sql  string
	args []any
}

// apply runs a write's statement that changes rows only if what the body
// read is still so (a guard in the statement): applied is false, with
// nothing changed, when the guard found otherwise. A planned write's
// statement is queued for its batch and counts as applied: the batch
// checks it, and runs the write again one at a time if it was not.
func (w *writer) apply(ctx context.Context, sql string, args ...any) (applied bool, err error) {
	if w.plan != nil {
		if w.plan.sql != "" {
			return false, errNotPlanned
		}
		w.plan.sql, w.plan.args = sql, args
		return true, nil
	}
	tag, err := w.tx.Exec(ctx, sql, args...)
	return err == nil && tag.RowsAffected() > 0, err
}

// errNotPlanned fails a planned write that sends more than apply's one
// statement: its batch runs it again, one write at a time.
var errNotPlanned = errors.New("store: a planned write sends one statement, through apply")

// planTx is a planned write's transaction: it sends nothing.
type planTx struct{ pgx.Tx }

func (planTx) Exec(context.Context, string, ...any) (pgconn.CommandTag, error) {
	return pgconn.CommandTag{}, errNotPlanned
}
func (planTx) Query(context.Context, string, ...any) (pgx.Rows, error) { return nil, errNotPlanned }
func (planTx) QueryRow(context.Context, string, ...any) pgx.Row        { return errRow{errNotPlanned} }
func (planTx) SendBatch(context.Context, *pgx.Batch) pgx.BatchResults {
	return errBatch{errNotPlanned}
}

// prefetched is key's secret as the batch read it at its start, after
// taking the revision lock: ok false when the batch did not read it. An
// earlier write of the batch may have changed it since: a body using it
// must check that the row is still as read (the revision) when it writes.
func (w *writer) prefetched(key string) (sec Secret, exists, ok bool) {
	p, ok := w.read[key]
	if !ok || p == nil {
		return Secret{}, false, ok
	}
	return *p, true, true
}

// write queues body for the store's write batcher (group commit: see
// writeBatcher) and returns its own outcome once the batch holding it has
// committed. In the batch's transaction the write takes the next revision,
// applies the change, and gets its change-log entry, audit event,
// notification and, with a request id, idempotency record — all committed
// together with its batch or not at all. A write that fails fails alone and
// takes no revision. A retry carrying a request id already committed returns
// the first result (R is stored as JSON; it never holds a value).
//
// pre runs first, in the caller's goroutine and outside the batch: cheap
// checks that can refuse a write without queueing it (a stale etag), and
// slow work such as a KMS wrap, which must never hold up the batch.
func write[R any](ctx context.Context, s *Store, meta Meta, body func(ctx context.Context, w *writer) (R, change, error), pre ...func(context.Context) error) (R, error) {
	return writeReading(ctx, s, meta, "", body, pre...)
}

// writeReading is write for a body that starts by reading secret key: its
// batch reads the secrets of all such writes in its first round trip, and
// the body finds key's there (writer.prefetched) instead of spending a
// round trip of its own, with every other write of the batch waiting.
func writeReading[R any](ctx context.Context, s *Store, meta Meta, key string, body func(ctx context.Context, w *writer) (R, change, error), pre ...func(context.Context) error) (R, error) {
	var zero R
	if meta.RequestID != "" {
		if r, ok, err := replay[R](ctx, s, meta); err != nil || ok {
			return r, err
		}
	}
	// Cheap checks that can fail a write without queueing it (a stale etag
	// under contention would otherwise wait for a batch just to be
	// refused). The body checks again in the batch.
	for _, check := range pre {
		if err := check(ctx); err != nil {
			return zero, classify(err)
		}
	}
	j, result := newWriteJob(ctx, meta, body)
	j.reads = key
	if err := s.writeBatcher().submit(ctx, j); err != nil {
		return zero, err
	}
	return *result, nil
}

// newWriteJob wraps a typed body as a batch job; *result holds the write's
// result once the job succeeded.
func newWriteJob[R any](ctx context.Context, meta Meta, body func(ctx context.Context, w *writer) (R, change, error)) (*writeJob, *R) {
	result := new(R)
	j := &writeJob{ctx: ctx, meta: meta, done: make(chan error, 1)}
	j.run = func(ctx context.Context, w *writer) (change, error) {
		r, c, err := body(ctx, w)
		if err != nil {
			return change{}, err
		}
		*result = r
		return c, nil
	}
	j.encode = func() ([]byte, error) { return json.Marshal(*result) }
	j.replay = func(response []byte) error {
		var r R
		if err := json.Unmarshal(response, &r); err != nil {
			return fmt.Errorf("decode idempotent result: %w", err)
		}
		*result = r
		return nil
	}
	return j, result
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
