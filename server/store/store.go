// Package store owns the PostgreSQL side of the service: every query and every
// transaction. It never sees a gRPC type or a plaintext value: values arrive
// and leave sealed. Writes run through one helper (write) that takes the next
// revision from the counter row, applies the change, and records its change-log
// entry and audit event in the same transaction — concurrent writes share
// one transaction (group commit, batch.go).
package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Errors the store returns. Callers test them with errors.Is; messages wrap
// them with the key and version concerned, never a value.
var (
	ErrNotFound           = errors.New("not found")
	ErrEtagMismatch       = errors.New("etag mismatch")
	ErrFailedPrecondition = errors.New("failed precondition")
	ErrRequestIDReused    = errors.New("request_id was already used for a different request")
	ErrUnavailable        = errors.New("database unavailable")
	ErrInvalidArgument    = errors.New("invalid argument")
	ErrConsumerOwned      = errors.New("consumer belongs to another principal")
	ErrTooManyConsumers   = errors.New("too many consumers")
)

// NotifyChannel is the LISTEN/NOTIFY channel woken by every commit. The payload
// is the revision as text; it is only a hint (the change_log table is the truth).
const NotifyChannel = "orient_secrets_changes"

// Store is the PostgreSQL store. It is safe for concurrent use.
type Store struct {
	pool *pgxpool.Pool
	log  *slog.Logger
	// intakeSignal wakes the audit sequencer after an intake commit.
	intakeSignal chan struct{}
	// intake is where this process's sequencer reads the intake from.
	intake *intakeCursor
	// lastWrite is the highest revision a write here has taken.
	lastWrite atomic.Int64
	// writes gathers concurrent writes into batches (group commit).
	writes     *writeBatcher
	writesOnce sync.Once
	// batchIdle bounds how long a write batch's transaction may sit idle
	// between its round trips (writeBatchIdleTimeout; tests shorten it).
	batchIdle time.Duration
}

// Options tune the pool.
type Options struct {
	// MinMaxConns raises the pool's connection limit to at least this many
	// when the URL does not set pool_max_conns. 0 keeps pgx's default.
	MinMaxConns int32
	Logger      *slog.Logger
	// Tracer, if set, traces queries (OpenTelemetry); nil traces nothing.
	Tracer pgx.QueryTracer
}

// Open connects a pool to connString. It does not fail when the database is
// down: the pool connects lazily and readiness reports the outage.
func Open(ctx context.Context, connString string, opts Options) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(connString)
	if err != nil {
		// pgx's message can echo the URL, which may hold a password.
		return nil, errors.New("store: invalid database URL")
	}
	if opts.MinMaxConns > 0 && cfg.MaxConns < opts.MinMaxConns && !hasParam(connString, "pool_max_conns") {
		cfg.MaxConns = opts.MinMaxConns
	}
	cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	if opts.Tracer != nil {
		cfg.ConnConfig.Tracer = opts.Tracer
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("store: %w", classify(err))
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Store{pool: pool, log: log, intakeSignal: make(chan struct{}, 1), intake: newIntakeCursor(),
		batchIdle: writeBatchIdleTimeout}, nil
}

func hasParam(connString, name string) bool { return strings.Contains(connString, name) }

// Close commits the writes already queued, then closes the pool. Writes
// submitted afterwards fail with ErrStoreClosed.
func (s *Store) Close() {
	s.writeBatcher().close()
	s.pool.Close()
}

// Pool exposes the pool for metrics (stat) only.
func (s *Store) Stat() *pgxpool.Stat { return s.pool.Stat() }

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return classify(err)
	}
	return nil
}

// Revision returns the last committed revision.
func (s *Store) Revision(ctx context.Context) (int64, error) {
	var rev int64
	err := s.pool.QueryRow(ctx, `SELECT revision FROM revision_counter`).Scan(&rev)
	return rev, classify(err)
}

// inTx runs fn in a transaction with the given options, retrying
// serialization failures and deadlocks a few times. fn must be safe to re-run.
func (s *Store) inTx(ctx context.Context, opts pgx.TxOptions, fn func(tx pgx.Tx) error) error {
	const attempts = 5
	var err error
	for i := range attempts {
		err = pgx.BeginTxFunc(ctx, s.pool, opts, fn)
		if err == nil && opts.AccessMode != pgx.ReadOnly {
			// It may have committed audit events to the intake.
			s.intakeCommitted()
		}
		if !retryable(err) {
			break
		}
		s.log.DebugContext(ctx, "retrying transaction", "attempt", i+1, "error", err)
		select {
		case <-ctx.Done():
			return classify(ctx.Err())
		case <-time.After(time.Duration(i+1) * 5 * time.Millisecond):
		}
	}
	return classify(err)
}

// readTx runs fn in a read-only REPEATABLE READ transaction: one snapshot
// for several statements.
func (s *Store) readTx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	return s.inTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, fn)
}

func retryable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "40001" || pgErr.Code == "40P01"
	}
	return false
}

// classify turns driver errors into the store's sentinels: lost connections
// become ErrUnavailable; the store's own errors pass through unchanged.
// Anything else keeps its text for the server log and is reported to clients
// as an internal error by the API layer.
func classify(err error) error {
	if err == nil {
		return nil
	}
	for _, sentinel := range []error{ErrNotFound, ErrAlreadyExists, ErrEtagMismatch, ErrFailedPrecondition, ErrRequestIDReused, ErrUnavailable, ErrInvalidArgument} {
		if errors.Is(err, sentinel) {
			return err
		}
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var connectErr *pgconn.ConnectError
	if errors.As(err, &connectErr) {
		return fmt.Errorf("%w: cannot connect", ErrUnavailable)
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case len(pgErr.Code) >= 2 && pgErr.Code[:2] == "08", // connection exception
			pgErr.Code == "57P01", pgErr.Code == "57P02", pgErr.Code == "57P03", // shutdown, cannot connect now
			pgErr.Code == "53300", // too many connections
			pgErr.Code == "25006": // read-only transaction (a replica or a failover in progress)
			return fmt.Errorf("%w (SQLSTATE %s)", ErrUnavailable, pgErr.Code)
		}
		return fmt.Errorf("postgres error SQLSTATE %s: %w", pgErr.Code, err)
	}
	var netErr net.Error
	if errors.As(err, &netErr) || pgconn.SafeToRetry(err) || pgconn.Timeout(err) ||
		errors.Is(err, pgx.ErrTxClosed) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: %s", ErrUnavailable, "connection lost")
	}
	switch err.Error() {
	case "closed pool", "conn closed", "unexpected EOF":
		return fmt.Errorf("%w: connection lost", ErrUnavailable)
	}
	return err
}
