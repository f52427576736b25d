package store

import (
	"context"
	"errors"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// A write in a batch runs under a savepoint of its own. Setting it up (or
// rolling back the write before) would cost a round trip of its own per
// write, with every other write of the batch waiting behind it; instead
// the statements ride in front of the write's first statement, in the same
// round trip (savepointTx). spState says what the next write must send
// first.
//
// Each savepoint has a name of its own (w0, w1, …): a prefix that never
// ran (the statement it rode with failed before PostgreSQL ran it: pgx
// prepares an uncached statement in a round trip of its own, which a lock
// wait cancelled or a timeout can fail) left no savepoint of that name, so
// the rollback meant for the write that failed fails the batch instead of
// rolling back the write before it, which the batch would then commit the
// bookkeeping of, and report, as done.
type spState int

const (
	// spClean: the savepoint is set and holds nothing.
	spClean spState = iota
	// spKept: the savepoint holds a successful write: release it, set the
	// next one.
	spKept
	// spFailed: the savepoint holds a failed write: roll back to it.
	spFailed
)

// savepointName is the name of a batch's savepoint n; the batch sets w0 in
// its first round trip.
func savepointName(n int) string { return "w" + strconv.Itoa(n) }

// savepointTx is the transaction a write's body sees: the batch's, sending
// prefix in the same round trip as the body's first statement.
type savepointTx struct {
	pgx.Tx
	// n is the number of the current savepoint.
	n int
	// sp is what it holds, for the next write's prefix.
	sp spState
	// used: the body sent a statement (and with it the prefix).
	used bool
}

// begin starts a write, given what the savepoint holds.
func (t *savepointTx) begin(sp spState) { t.sp, t.used = sp, false }

// rollback and release end the current savepoint.
func (t *savepointTx) rollback() string { return `ROLLBACK TO SAVEPOINT ` + savepointName(t.n) }
func (t *savepointTx) release() string  { return `RELEASE SAVEPOINT ` + savepointName(t.n) }

// take returns the prefix to send with the body's first statement. A
// rollback to the savepoint goes first, on its own: after a failed
// statement pgx prepares anew every statement of the failed pipeline,
// which the aborted transaction refuses until the rollback ran (the simple
// protocol, which prepares nothing, is accepted).
//
// From then on the write runs under the savepoint the prefix sets, whether
// the prefix ran or not (see spState).
func (t *savepointTx) take(ctx context.Context) ([]string, error) {
	if t.used {
		return nil, nil
	}
	t.used = true
	var p []string
	switch t.sp {
	case spKept:
		p = []string{`RELEASE SAVEPOINT ` + savepointName(t.n), `SAVEPOINT ` + savepointName(t.n+1)}
		t.n++
	case spFailed:
		p = []string{t.rollback()}
	}
	t.sp = spClean
	if len(p) > 0 && strings.HasPrefix(p[0], "ROLLBACK TO ") {
		if _, err := t.Tx.Exec(ctx, p[0]); err != nil {
			return nil, err
		}
		p = p[1:]
	}
	return p, nil
}

// flush sends the prefix on its own (before a statement that cannot share
// a pipeline with it).
func (t *savepointTx) flush(ctx context.Context) error {
	p, err := t.take(ctx)
	if err != nil || len(p) == 0 {
		return err
	}
	b := &pgx.Batch{}
	for _, q := range p {
		b.Queue(q)
	}
	return t.Tx.SendBatch(ctx, b).Close()
}

// send pipelines the prefix and then the queries of b.
func (t *savepointTx) send(ctx context.Context, p []string, b *pgx.Batch) (pgx.BatchResults, error) {
	nb := &pgx.Batch{}
	for _, q := range p {
		nb.Queue(q)
	}
	nb.QueuedQueries = append(nb.QueuedQueries, b.QueuedQueries...)
	br := t.Tx.SendBatch(ctx, nb)
	for range p {
		if _, err := br.Exec(); err != nil {
			br.Close()
			return nil, err
		}
	}
	return br, nil
}

func (t *savepointTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if len(args) == 0 && strings.Contains(sql, ";") {
		// Possibly several statements: the simple protocol only.
		if err := t.flush(ctx); err != nil {
			return pgconn.CommandTag{}, err
		}
		return t.Tx.Exec(ctx, sql)
	}
	p, err := t.take(ctx)
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	if len(p) == 0 {
		return t.Tx.Exec(ctx, sql, args...)
	}
	b := &pgx.Batch{}
	b.Queue(sql, args...)
	br, err := t.send(ctx, p, b)
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	tag, err := br.Exec()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return tag, err
}

func (t *savepointTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	p, err := t.take(ctx)
	if err != nil {
		return errRow{err}
	}
	if len(p) == 0 {
		return t.Tx.QueryRow(ctx, sql, args...)
	}
	b := &pgx.Batch{}
	b.Queue(sql, args...)
	br, err := t.send(ctx, p, b)
	if err != nil {
		return errRow{err}
	}
	return batchRow{row: br.QueryRow(), br: br}
}

func (t *savepointTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	p, err := t.take(ctx)
	if err != nil {
		return errBatch{err}
	}
	if len(p) == 0 {
		return t.Tx.SendBatch(ctx, b)
	}
	br, err := t.send(ctx, p, b)
	if err != nil {
		return errBatch{err}
	}
	return br
}

func (t *savepointTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if err := t.flush(ctx); err != nil {
		return nil, err
	}
	return t.Tx.Query(ctx, sql, args...)
}

func (t *savepointTx) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	if err := t.flush(ctx); err != nil {
		return 0, err
	}
	return t.Tx.CopyFrom(ctx, table, columns, src)
}

func (t *savepointTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	if err := t.flush(ctx); err != nil {
		return nil, err
	}
	return t.Tx.Prepare(ctx, name, sql)
}

var errBodyEndsTx = errors.New("store: a write's body must not begin, commit or roll back its batch's transaction")

func (t *savepointTx) Begin(context.Context) (pgx.Tx, error) { return nil, errBodyEndsTx }
func (t *savepointTx) Commit(context.Context) error          { return errBodyEndsTx }
func (t *savepointTx) Rollback(context.Context) error        { return errBodyEndsTx }

// batchRow is a row read in a pipeline: scanning it ends the pipeline.
type batchRow struct {
	row pgx.Row
	br  pgx.BatchResults
}

func (r batchRow) Scan(dest ...any) error {
	err := r.row.Scan(dest...)
	if cerr := r.br.Close(); err == nil {
		err = cerr
	}
	return err
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

type errBatch struct{ err error }

func (b errBatch) Exec() (pgconn.CommandTag, error) { return pgconn.CommandTag{}, b.err }
func (b errBatch) Query() (pgx.Rows, error)         { return nil, b.err }
func (b errBatch) QueryRow() pgx.Row                { return errRow(b) }
func (b errBatch) Close() error                     { return b.err }
func (b errBatch) Tx() pgx.Tx                       { return nil }
