package store

import (
	"context"
	"errors"
	"time"
)

// HoldWrites stops the write batcher before its next batch until release is
// called: writes submitted meanwhile queue, and go in one batch together.
func (s *Store) HoldWrites() (release func()) {
	b := s.writeBatcher()
	h := make(chan struct{})
	b.hold.Store(&h)
	return func() {
		b.hold.Store(nil)
		close(h)
	}
}

// QueuedWrites is how many writes wait for the held batcher.
func (s *Store) QueuedWrites() int {
	b := s.writeBatcher()
	return len(b.in) + int(b.held.Load())
}

// ErrBodyFailed is what FailingWrite's body fails with when it did not fail
// on its SQL error.
var ErrBodyFailed = errors.New("body failed")

// FailingWrite is a write whose body changes key's description and then
// runs a statement that fails (division by zero), aborting what the
// transaction does until a rollback.
func (s *Store) FailingWrite(ctx context.Context, meta Meta, key string) error {
	_, err := write(ctx, s, meta, func(ctx context.Context, w *writer) (struct{}, change, error) {
		if _, err := w.tx.Exec(ctx, `UPDATE secrets SET description = 'clobbered' WHERE key = $1`, key); err != nil {
			return struct{}{}, change{}, err
		}
		if _, err := w.tx.Exec(ctx, `SELECT 1/0`); err != nil {
			return struct{}{}, change{}, err
		}
		return struct{}{}, change{}, ErrBodyFailed
	})
	return err
}

// PanickingWrite is a write whose body changes key's description and then
// panics.
func (s *Store) PanickingWrite(ctx context.Context, meta Meta, key string) error {
	_, err := write(ctx, s, meta, func(ctx context.Context, w *writer) (struct{}, change, error) {
		if _, err := w.tx.Exec(ctx, `UPDATE secrets SET description = 'clobbered' WHERE key = $1`, key); err != nil {
			return struct{}{}, change{}, err
		}
		panic("a bug in a write body")
	})
	return err
}

// WriteCancellingCaller is a write whose body cancels its caller's context
// (as a client giving up mid-batch would) and then changes key's
// description.
func (s *Store) WriteCancellingCaller(ctx context.Context, cancel context.CancelFunc, meta Meta, key string) error {
	_, err := write(ctx, s, meta, func(ctx context.Context, w *writer) (struct{}, change, error) {
		cancel()
		time.Sleep(50 * time.Millisecond) // the caller's select sees ctx.Done first
		if _, err := w.tx.Exec(ctx, `UPDATE secrets SET description = 'written' WHERE key = $1`, key); err != nil {
			return struct{}{}, change{}, err
		}
		return struct{}{}, change{kind: ChangeMetadataChanged, key: key}, nil
	})
	return err
}

// WriteFailingWith is a write whose body fails with err.
func (s *Store) WriteFailingWith(ctx context.Context, meta Meta, err error) error {
	_, werr := write(ctx, s, meta, func(ctx context.Context, w *writer) (struct{}, change, error) {
		return struct{}{}, change{}, err
	})
	return werr
}

// SecretsByKeysSQL is the statement that reads secrets by name (a write
// batch's first read; ListSecrets' extra keys).
const SecretsByKeysSQL = secretsByKeys

// MaxHeldOver is how many writes of secrets already in a batch are held
// over to the next one.
const MaxHeldOver = maxHeldOver
