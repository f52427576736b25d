package auditlog

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/orient-bot/secrets/server/store"
)

// SequencerStore is what the sequencer needs from the store.
type SequencerStore interface {
	SequenceAudit(ctx context.Context, opts store.SequenceOptions) (store.Sequenced, error)
	AuditIntakeWaiting(ctx context.Context) (bool, error)
	EnsureAuditPartitions(ctx context.Context, until time.Time, period time.Duration) (int, error)
	IntakeSignal() <-chan struct{}
}

// SequencerOptions tune a Sequencer; zero values take the defaults.
type SequencerOptions struct {
	// PartitionPeriod is the length of audit_events' partitions (default
	// 24h): the sequencer keeps two periods of them created ahead.
	PartitionPeriod time.Duration
	// Poll is how often the intake is checked for events this process was
	// not told about: other replicas', and those of a replica that died
	// before its sequencer chained them (default 50ms). It bounds their
	// sequencing delay, but for the rare event the store's intake cursor
	// misses, found by the store's read from the start within 10 s
	// (server/store/intakecursor.go).
	Poll time.Duration
	// Batch is the most events chained in one round (default 1000).
	Batch int
	// Linger is the least time between two rounds started by intake
	// commits (default 20ms): a busy replica's events are chained in
	// groups, so the sequencer's commits do not queue on the WAL flush
	// ahead of every audited read's own. It adds at most Linger to the
	// sequencing delay. Flush does not linger.
	Linger time.Duration
	// Observe receives each chained event's sequencing delay (the
	// database's clock: the time it was chained minus its time).
	Observe func(delay time.Duration)
	// MaxDelay is the sequencing delay past which audited reads are held
	// back (Admit; default DefaultMaxDelay): see paced.
	MaxDelay time.Duration
	Logger   *slog.Logger
}

// Sequencer chains the audit intake into the hash chain: woken by this
// process's intake commits and by a short poll, it runs rounds of
// store.SequenceAudit until the intake is empty. Every replica runs one;
// the chain head's row lock makes them take turns (a round is two round
// trips under it), so there is no leader to elect and none to wait for when
// one dies: whichever replica polls next chains what the dead one left.
type Sequencer struct {
	st   SequencerStore
	opts SequencerOptions
	// mu makes this process's rounds (the loop's and Flush's) take turns
	// here rather than on the head lock, each holding a connection.
	mu              sync.Mutex
	rounds, events  atomic.Int64
	failures        atomic.Int64
	held            atomic.Int64
	lastPartitioned atomic.Int64 // unix nanoseconds of the last partition check

	// pace is the back-pressure on audited reads (Admit).
	pace struct {
		sync.Mutex
		// behind: the last round was full and its oldest event waited
		// longer than MaxDelay; credit is how many events may still commit
		// (below zero: a debt the next rounds pay first).
		behind bool
		credit int
		// round is closed when a round ends (and replaced).
		round chan struct{}
	}
}

// SequencerStats count the rounds that chained something, the events they
// chained, the rounds that failed, and the access groups held back
// (Admit), since the sequencer started.
type SequencerStats struct{ Rounds, Events, Failures, Held int64 }

// DefaultMaxDelay is the sequencing delay past which audited reads are
// held back unless configured otherwise (--audit-max-delay).
const DefaultMaxDelay = time.Second

// NewSequencer returns a sequencer; Run runs it.
func NewSequencer(st SequencerStore, opts SequencerOptions) *Sequencer {
	if opts.PartitionPeriod <= 0 {
		opts.PartitionPeriod = 24 * time.Hour
	}
	if opts.Poll <= 0 {
		opts.Poll = 50 * time.Millisecond
	}
	if opts.Batch <= 0 {
		opts.Batch = 1000
	}
	if opts.Linger == 0 {
		opts.Linger = 20 * time.Millisecond
	}
	if opts.MaxDelay <= 0 {
		opts.MaxDelay = DefaultMaxDelay
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	q := &Sequencer{st: st, opts: opts}
	q.pace.round = make(chan struct{})
	return q
}

// Stats reports the sequencer's counters.
func (q *Sequencer) Stats() SequencerStats {
	return SequencerStats{Rounds: q.rounds.Load(), Events: q.events.Load(), Failures: q.failures.Load(), Held: q.held.Load()}
}

// EnsurePartitions creates audit_events' partitions two periods ahead.
func (q *Sequencer) EnsurePartitions(ctx context.Context) error {
	n, err := q.st.EnsureAuditPartitions(ctx, time.Now().Add(2*q.opts.PartitionPeriod), q.opts.PartitionPeriod)
	if err != nil {
		return err
	}
	q.lastPartitioned.Store(time.Now().UnixNano())
	if n > 0 {
		q.opts.Logger.Debug("audit partitions created", "count", n, "period", q.opts.PartitionPeriod)
	}
	return nil
}

// partitionCheck is how often partitions are checked: often enough that
// two periods ahead never runs out, at most once a minute.
func (q *Sequencer) partitionCheck() time.Duration {
	return min(q.opts.PartitionPeriod/2, time.Minute)
}

// Run chains the intake until ctx ends. It creates the partitions ahead
// first, and keeps them ahead.
func (q *Sequencer) Run(ctx context.Context) {
	if err := q.EnsurePartitions(ctx); err != nil && ctx.Err() == nil {
		q.opts.Logger.Warn("audit partitions", "error", err)
	}
	poll := time.NewTicker(q.opts.Poll)
	defer poll.Stop()
	parts := time.NewTicker(q.partitionCheck())
	defer parts.Stop()
	// Events left by a previous run or a dead replica.
	q.drain(ctx)
	var last time.Time // the last round started by an intake commit
	for {
		select {
		case <-ctx.Done():
			return
		case <-q.st.IntakeSignal():
			if wait := q.opts.Linger - time.Since(last); wait > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				}
			}
			last = time.Now()
			q.drain(ctx)
		case <-poll.C:
			if waiting, err := q.st.AuditIntakeWaiting(ctx); err == nil && waiting {
				q.drain(ctx)
			}
		case <-parts.C:
			if err := q.EnsurePartitions(ctx); err != nil && ctx.Err() == nil {
				q.opts.Logger.Warn("audit partitions", "error", err)
			}
		}
	}
}

// drain runs rounds until one is not full (the intake is empty as of its
// start) or fails.
func (q *Sequencer) drain(ctx context.Context) {
	for {
		r, err := q.Round(ctx)
		if err != nil {
			if ctx.Err() == nil {
				q.opts.Logger.Warn("audit sequencer round", "error", err)
			}
			return
		}
		if !r.More {
			return
		}
	}
}

// Round runs one sequencing round and records its figures.
func (q *Sequencer) Round(ctx context.Context) (store.Sequenced, error) {
	return q.round(ctx, false)
}

// round runs one round; fromStart reads the whole intake, not past what
// this process has chained.
func (q *Sequencer) round(ctx context.Context, fromStart bool) (store.Sequenced, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	r, err := q.st.SequenceAudit(ctx, store.SequenceOptions{Limit: q.opts.Batch, FromStart: fromStart})
	if err != nil {
		q.failures.Add(1)
		// Nothing known of the intake: hold nothing back until a round
		// says.
		q.paced(store.Sequenced{}, 0)
		return r, err
	}
	var worst time.Duration
	if r.Events > 0 {
		for _, t := range r.Times {
			d := max(r.SequencedAt.Sub(t), 0)
			worst = max(worst, d)
			if q.opts.Observe != nil {
				q.opts.Observe(d)
			}
		}
		q.rounds.Add(1)
		q.events.Add(int64(r.Events))
	}
	q.paced(r, worst)
	return r, nil
}

// paced records what round r, whose longest-waiting event waited worst,
// says of the intake for Admit. The sequencer is behind when the round was
// full and either that event waited longer than MaxDelay or the events
// still waiting would, at the round's pace (r.Waiting / r.Events rounds
// of r.Chaining). The second sees a backlog as it builds, before its
// first event has aged: waiting for that alone, the backlog built
// meanwhile, at the reads' pace, delayed the events behind it by several
// times MaxDelay. While behind, each round lets half of what it chained be
// committed.
func (q *Sequencer) paced(r store.Sequenced, worst time.Duration) {
	behind := r.More && r.Events > 0 &&
		(worst > q.opts.MaxDelay ||
			float64(r.Waiting)/float64(r.Events)*r.Chaining.Seconds() > q.opts.MaxDelay.Seconds())
	q.pace.Lock()
	defer q.pace.Unlock()
	switch {
	case !behind:
		q.pace.behind, q.pace.credit = false, 0
	case !q.pace.behind:
		q.pace.behind, q.pace.credit = true, r.Events/2
	default:
		q.pace.credit += r.Events / 2
	}
	close(q.pace.round)
	q.pace.round = make(chan struct{})
}

// stuckAfter is how long Admit waits for a round before it stops holding
// back: twice MaxDelay, within 2 s to 10 s (a round is tens of
// milliseconds; one that waits on another replica's turn or an fsync stall
// must not switch the holding off, and a sequencer that makes none must
// not hold reads for long).
func (q *Sequencer) stuckAfter() time.Duration {
	return min(max(2*q.opts.MaxDelay, 2*time.Second), 10*time.Second)
}

// Admit is the back-pressure of the audit sequencing delay on audited
// reads: the access batcher calls it with a group's event count before it
// commits the group. While the sequencer is behind (paced), each of its
// rounds lets half of what it chained be committed; a group that finds
// that spent waits for the next round (and may leave it in debt: a caller's
// events are never split), so the intake shrinks and the delay comes back
// under MaxDelay instead of growing with the load's duration. It waits at
// most stuckAfter for a round, and stops holding back when none came (a
// sequencer that makes no rounds must not slow every read down to a
// crawl), and never once ctx ends. A failed round stops the holding back
// too.
func (q *Sequencer) Admit(ctx context.Context, events int) {
	q.pace.Lock()
	defer q.pace.Unlock()
	waited := false
	for q.pace.behind && q.pace.credit <= 0 {
		if !waited {
			q.held.Add(1)
			waited = true
		}
		round := q.pace.round
		q.pace.Unlock()
		t := time.NewTimer(q.stuckAfter())
		timedOut := false
		select {
		case <-round:
		case <-t.C:
			timedOut = true
		case <-ctx.Done():
		}
		t.Stop()
		q.pace.Lock()
		if timedOut {
			// No round to say how far behind: hold nothing back until
			// one does.
			q.pace.behind = false
		}
		if ctx.Err() != nil {
			return
		}
	}
	if q.pace.behind {
		q.pace.credit -= events
	}
}

// Flush chains what was committed to the intake before it was called
// (and whatever more arrives meanwhile, a bounded number of rounds), so
// that a reader on this replica sees its own audit events in the chain.
// Its rounds read the intake from the start: whatever a round's cursor
// could have missed is found.
func (q *Sequencer) Flush(ctx context.Context) error {
	for range 8 {
		r, err := q.round(ctx, true)
		if err != nil {
			return err
		}
		if !r.More {
			return nil
		}
	}
	return nil
}
