// Package auditlog owns the audit log beyond single inserts: group commit of
// access events, signed checkpoints of the hash chain, and verification of
// the chain (from the database or from an export).
package auditlog

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/orient-bot/secrets/server/store"
)

// Appender commits events durably in one transaction (store.AppendAudit:
// to the audit intake, which the sequencer chains).
type Appender interface {
	AppendAudit(ctx context.Context, events []store.AuditEvent) error
}

// Batcher is group commit for access audits: concurrent callers' events
// are appended together, one transaction and one fsync for the group, and
// each caller returns only once its own events are durable. While one group
// commits, the next one gathers, so a busy server makes bigger groups
// rather than longer queues. A group's commit to the intake takes no lock,
// so several committers could commit side by side; on a machine where the
// database is CPU-bound rather than fsync-bound, fewer, bigger groups win
// (see committers).
type Batcher struct {
	app      Appender
	in       chan request
	maxBatch int
	admit    Admitter

	stopOnce sync.Once
	stop     chan struct{}
	// closing ends when Close is called: a group waiting to be admitted
	// goes at once.
	closing    context.Context
	endClosing context.CancelFunc
	wg         sync.WaitGroup
	// finished is closed once the committers have exited after Close.
	finished chan struct{}

	groups, callers, events, commitNanos atomic.Uint64
}

// BatcherStats count the groups committed since the batcher started: with
// the commit time, the cycle an audited read waits for (the group in
// progress, then its own).
type BatcherStats struct {
	Groups, Callers, Events uint64
	// Commit is the time spent in the groups' commits (round trip and
	// WAL flush), failed ones included.
	Commit time.Duration
}

// Stats returns the counts so far.
func (b *Batcher) Stats() BatcherStats {
	return BatcherStats{Groups: b.groups.Load(), Callers: b.callers.Load(), Events: b.events.Load(),
		Commit: time.Duration(b.commitNanos.Load())}
}

// committers is how many groups can be in flight at once. Measured on the
// project's 2-core machine, quiet, full bench, same run each: 1 committer
// gave access c16 6,945 req/s and c64 11,750 (sequencing p99 45 ms); 2 gave
// 6,072 and 9,583; 4 gave 4,146 and 7,372 — every extra commit costs the
// CPU the database is short of. (On a loaded machine, with CPU taken by
// others and commits waiting on fsync, 4 had won: c64 1,264 → 4,084.)
const committers = 1

type request struct {
	// ctx is the caller's: a caller gone before its group commits gets
	// no value, so its events are not committed (Batcher.run).
	ctx    context.Context
	events []store.AuditEvent
	done   chan error
}

// ErrClosed is returned after Close.
var ErrClosed = errors.New("audit batcher closed")

// Admitter holds access groups back while the audit sequencer is behind
// (Sequencer.Admit): it returns once a group of that many events may
// commit.
type Admitter interface {
	Admit(ctx context.Context, events int)
}

// unpaced admits every group at once.
type unpaced struct{}

func (unpaced) Admit(context.Context, int) {}

// NewBatcher starts a batcher; Close stops it. admit (nil: none) paces the
// groups.
func NewBatcher(app Appender, maxBatch int, admit Admitter) *Batcher {
	if maxBatch <= 0 {
		maxBatch = 512
	}
	if admit == nil {
		admit = unpaced{}
	}
	b := &Batcher{app: app, in: make(chan request, 4096), maxBatch: maxBatch, admit: admit, stop: make(chan struct{}), finished: make(chan struct{})}
	b.closing, b.endClosing = context.WithCancel(context.Background())
	for range committers {
		b.wg.Add(1)
		go b.run()
	}
	return b
}

// RecordAccess blocks until events are durable (or ctx ends: then the
// caller must withhold the value; the events may still be recorded).
func (b *Batcher) RecordAccess(ctx context.Context, events []store.AuditEvent) error {
	r := request{ctx: ctx, events: events, done: make(chan error, 1)}
	select {
	case <-b.stop:
		return ErrClosed
	default:
	}
	select {
	case b.in <- r:
	case <-b.stop:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-r.done:
		return err
	case <-b.finished:
		// Closed while queued: the committers may have drained it first.
		select {
		case err := <-r.done:
			return err
		default:
			return ErrClosed
		}
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (b *Batcher) run() {
	defer b.wg.Done()
	for {
		var first request
		select {
		case first = <-b.in:
		case <-b.stop:
			b.drain()
			return
		}
		group, n := b.gather(first)
		// While the sequencer is behind, the group waits here for it to
		// chain more, and the callers after it queue for the next group.
		// Shutdown does not wait.
		b.admit.Admit(b.closing, n)
		b.commit(live(group))
	}
}

// live answers the requests of group whose callers are gone (they had
// their context's error, and withheld the value: no access to record, and
// none to spend a held-back group's share on) and returns the others.
func live(group []request) []request {
	out := group[:0]
	for _, r := range group {
		if err := r.ctx.Err(); err != nil {
			r.done <- err
			continue
		}
		out = append(out, r)
	}
	return out
}

// gather takes first and whatever else is already waiting, up to maxBatch
// events (the last taken may go past it: a caller's events are not
// split), and returns the group and its event count.
func (b *Batcher) gather(first request) ([]request, int) {
	group := []request{first}
	n := len(first.events)
	for n < b.maxBatch {
		select {
		case r := <-b.in:
			group = append(group, r)
			n += len(r.events)
			continue
		default:
		}
		break
	}
	return group, n
}

func (b *Batcher) commit(group []request) {
	if len(group) == 0 {
		return
	}
	var events []store.AuditEvent
	for _, r := range group {
		events = append(events, r.events...)
	}
	// Not the callers' contexts: one caller giving up must not fail the
	// others' events.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	err := b.app.AppendAudit(ctx, events)
	b.commitNanos.Add(uint64(time.Since(start)))
	b.groups.Add(1)
	b.callers.Add(uint64(len(group)))
	b.events.Add(uint64(len(events)))
	for _, r := range group {
		r.done <- err
	}
}

// drain commits what is queued at shutdown.
func (b *Batcher) drain() {
	for {
		select {
		case r := <-b.in:
			group, _ := b.gather(r)
			b.commit(live(group))
		default:
			return
		}
	}
}

// Close stops the batcher after committing what is queued.
func (b *Batcher) Close() {
	b.stopOnce.Do(func() {
		close(b.stop)
		b.endClosing()
		b.wg.Wait()
		close(b.finished)
	})
	<-b.finished
}
