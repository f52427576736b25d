package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
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

// SetIntakeFullReadEvery changes how often the sequencer's reads of the
// intake start from the beginning.
func (s *Store) SetIntakeFullReadEvery(d time.Duration) {
	s.intake.mu.Lock()
	defer s.intake.mu.Unlock()
	s.intake.fullReadEvery = d
}

// IntakeGaps is how many ids below its floor the cursor looks up.
func (s *Store) IntakeGaps() int {
	s.intake.mu.Lock()
	defer s.intake.mu.Unlock()
	return len(s.intake.gaps)
}

// IntakeGapTags are the cursor's gaps and their tags.
func (s *Store) IntakeGapTags() map[int64]int64 {
	s.intake.mu.Lock()
	defer s.intake.mu.Unlock()
	out := make(map[int64]int64, len(s.intake.gaps))
	for id, tag := range s.intake.gaps {
		out[id] = tag
	}
	return out
}

// ForgetIntakeGaps drops the cursor's gaps, as gapsMax or an early
// conclusion would: only a full read finds their events.
func (s *Store) ForgetIntakeGaps() {
	s.intake.mu.Lock()
	defer s.intake.mu.Unlock()
	clear(s.intake.gaps)
}

// IntakeReadBuffers runs the sequencer's probe and read of the intake, as
// its next round would, prepared on conn and under EXPLAIN (ANALYZE,
// BUFFERS), and reports the pages each touched. fromStart reads as a full
// read does; generic plans them once for all arguments (as a pooled
// connection's cached statement ends up), else for these.
func (s *Store) IntakeReadBuffers(ctx context.Context, conn *pgx.Conn, fromStart, generic bool) (probe, read int64, err error) {
	sc := s.intake.scan(time.Now(), fromStart)
	mode := "force_custom_plan"
	if generic {
		mode = "force_generic_plan"
	}
	if _, err := conn.Exec(ctx, `SET plan_cache_mode = `+mode); err != nil {
		return 0, 0, err
	}
	gaps := "'{}'"
	if len(sc.gaps) > 0 {
		gaps = strings.ReplaceAll(fmt.Sprintf("'{%v}'", sc.gaps), " ", ",")
		gaps = strings.NewReplacer("[", "", "]", "").Replace(gaps)
	}
	buffers := func(sql, args string) (int64, error) {
		defer conn.Exec(ctx, `DEALLOCATE q`)
		if _, err := conn.Exec(ctx, `PREPARE q AS `+sql); err != nil {
			return 0, err
		}
		var plan []map[string]any
		if err := conn.QueryRow(ctx, `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE q(`+args+`)`).Scan(&plan); err != nil {
			return 0, err
		}
		top := plan[0]["Plan"].(map[string]any)
		return int64(top["Shared Hit Blocks"].(float64) + top["Shared Read Blocks"].(float64)), nil
	}
	if probe, err = buffers(probeIntakeSQL, fmt.Sprintf("%d, %s", sc.floor, gaps)); err != nil {
		return 0, 0, err
	}
	if len(sc.gaps) == 0 {
		read, err = buffers(readIntakeSQL, fmt.Sprintf("%d, 1000", sc.floor))
	} else {
		read, err = buffers(readIntakeGapsSQL, fmt.Sprintf("%d, 1000, %s", sc.floor, gaps))
	}
	return probe, read, err
}

// ReadingWrite is a write whose first statement reads table (a statement
// text of its own, which pgx prepares in a round trip before it sends the
// statement and the savepoint prefix riding with it); the write fails with
// that statement's error, or ErrBodyFailed.
func (s *Store) ReadingWrite(ctx context.Context, meta Meta, table string) error {
	_, err := write(ctx, s, meta, func(ctx context.Context, w *writer) (struct{}, change, error) {
		_, err := w.tx.Exec(ctx, `SELECT 1 FROM `+table+` LIMIT 1`)
		if err == nil {
			err = ErrBodyFailed
		}
		return struct{}{}, change{}, err
	})
	return err
}

// SetWriteBatchIdleTimeout shortens writeBatchIdleTimeout for s; call it
// before s's first write.
func (s *Store) SetWriteBatchIdleTimeout(d time.Duration) { s.batchIdle = d }

// StallingWrite is a write whose body changes key's description, tells
// started, and then stalls (as a paused process would, its batch's
// transaction idle and holding the revision lock) until resume closes or
// 5 s pass, before its next statement.
func (s *Store) StallingWrite(ctx context.Context, meta Meta, key string, started chan<- struct{}, resume <-chan struct{}) error {
	_, err := write(ctx, s, meta, func(ctx context.Context, w *writer) (struct{}, change, error) {
		if _, err := w.tx.Exec(ctx, `UPDATE secrets SET description = 'stalled' WHERE key = $1`, key); err != nil {
			return struct{}{}, change{}, err
		}
		close(started)
		select {
		case <-resume:
		case <-time.After(5 * time.Second):
		}
		if _, err := w.tx.Exec(ctx, `SELECT 1`); err != nil {
			return struct{}{}, change{}, err
		}
		return struct{}{}, change{kind: ChangeMetadataChanged, key: key}, nil
	})
	return err
}
