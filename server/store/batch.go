package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Group commit for writes. Concurrent writes on a replica are gathered by
// one goroutine per store and committed together, in one transaction and
// one fsync, the way etcd's backend batches its transactions:
//
//   - The batch takes the revision counter row first (FOR UPDATE), which
//     serializes batches across replicas, so revision order is commit
//     order, and reads in the same round trip the idempotency records of
//     its request ids and the secrets its writes read first (writeReading).
//   - Each write then runs in turn under a savepoint (savepoint.go), with
//     the next free revision. A write that fails (stale etag, missing key, a failed
//     check, any SQL error) is rolled back to its savepoint and fails
//     alone; it takes no revision, so revisions stay gap-free. A later
//     write sees the earlier ones: two writes to one key apply in order.
//   - The change-log rows, idempotency records and notifications of every
//     successful write, the counter moved once by the number of successes,
//     the audit events (one appendAudit call) and the COMMIT go in one
//     round trip.
//   - A batch of writes that each write one secret the batch read, no two
//     the same (PutSecret under load), is planned instead (runPlanned):
//     every write's one statement and the bookkeeping go in one round trip
//     and the COMMIT in the next, three round trips in all; if any plan or
//     statement falls through, the batch rolls back to before its writes
//     and runs them in turn as above.
//   - Each caller gets its own outcome only after the commit.
//
// While one batch commits the next gathers, so a busy replica makes bigger
// batches rather than longer queues; it is sent as soon as the commit is,
// and waits for the lock in PostgreSQL (dispatch). A batch is at most
// maxWriteBatch writes: each successful write is a subtransaction, and
// PostgreSQL keeps only 64 of them per transaction in shared memory before
// every snapshot taken meanwhile gets slower.
const maxWriteBatch = 64

// writeBatchTimeout bounds one batch's transaction.
const writeBatchTimeout = 30 * time.Second

// writeBatchIdleTimeout is how long PostgreSQL lets a write batch's
// transaction sit idle between its round trips before it ends the session.
// A batch holds the revision lock, which every batch of every replica
// waits for, from its first round trip to its commit: a replica that stalls
// in between (a paused process, a frozen VM, a network partition) must not
// hold every write of the service until TCP gives up, which
// writeBatchTimeout, enforced by the stalled process itself, cannot
// promise. Round trips are milliseconds apart.
const writeBatchIdleTimeout = 10 * time.Second

// ErrStoreClosed is returned by a write submitted after Close.
var ErrStoreClosed = fmt.Errorf("%w: store closed", ErrUnavailable)

// writeJob is one write waiting for, or running in, a batch.
type writeJob struct {
	// ctx is the caller's: its values (trace spans) reach the body's
	// queries, its cancellation does not (the transaction is the batch's).
	// A caller gone before its write starts is dropped from the batch.
	ctx  context.Context
	meta Meta
	// reads, if set, is the secret the body reads first: the batch reads
	// it in its first round trip (writeReading).
	reads string
	// run applies the write and keeps its typed result.
	run func(ctx context.Context, w *writer) (change, error)
	// encode is the result as the idempotency record stores it; replay
	// sets the result from such a record.
	encode func() ([]byte, error)
	replay func(response []byte) error
	// done receives the write's outcome once its batch is over.
	done chan error
	// state settles who decides the outcome: the batcher takes a queued
	// job (jobTaken) or its caller abandons it first (jobAbandoned).
	state atomic.Int32
}

const (
	jobQueued int32 = iota
	jobTaken
	jobAbandoned
)

type writeBatcher struct {
	s  *Store
	in chan *writeJob
	// carry holds writes gathered but held over to the next batch (only
	// the batcher's goroutine touches it).
	carry    []*writeJob
	stop     chan struct{}
	finished chan struct{}
	stopOnce sync.Once

	batches, writes, oneByOne atomic.Int64

	// hold, when set (tests only), stops the batcher before it gathers a
	// batch until the channel closes; held is 1 while it waits with a
	// write in hand.
	hold atomic.Pointer[chan struct{}]
	held atomic.Int32
}

// writeBatcher returns the store's batcher, started on first use.
func (s *Store) writeBatcher() *writeBatcher {
	s.writesOnce.Do(func() {
		s.writes = &writeBatcher{s: s, in: make(chan *writeJob, 1024), stop: make(chan struct{}), finished: make(chan struct{})}
		go s.writes.run()
	})
	return s.writes
}

// WriteStats counts group commits since the store opened.
type WriteStats struct {
	// Batches is how many batch transactions committed; Writes how many
	// writes they committed between them; OneByOne how many of those
	// batches ran several writes one round trip after another instead of
	// planned (writes that read first, two of one secret, or a plan that
	// fell through).
	Batches, Writes, OneByOne int64
}

// WriteBatchStats reports group commit (for metrics and tests).
func (s *Store) WriteBatchStats() WriteStats {
	b := s.writeBatcher()
	return WriteStats{Batches: b.batches.Load(), Writes: b.writes.Load(), OneByOne: b.oneByOne.Load()}
}

// submit queues j and waits for its outcome. When ctx ends before the
// write's batch took it, the caller gets ctx's error and the write never
// runs; once taken, the caller gets the batch's outcome.
func (b *writeBatcher) submit(ctx context.Context, j *writeJob) error {
	select {
	case <-b.stop:
		return ErrStoreClosed
	default:
	}
	select {
	case b.in <- j:
	case <-b.stop:
		return ErrStoreClosed
	case <-ctx.Done():
		return classify(ctx.Err())
	}
	select {
	case err := <-j.done:
		return err
	case <-b.finished:
		// Closed while queued: the batcher may have drained it first.
		select {
		case err := <-j.done:
			return err
		default:
			return ErrStoreClosed
		}
	case <-ctx.Done():
		if j.state.CompareAndSwap(jobQueued, jobAbandoned) {
			// Not started, and now never will: the error is the truth.
			return classify(ctx.Err())
		}
		// Its batch is running: the answer is the batch's outcome (bounded
		// by writeBatchTimeout), never a "cancelled" for a write that
		// committed.
		return <-j.done
	}
}

func (b *writeBatcher) run() {
	defer close(b.finished)
	var inflight sync.WaitGroup
	defer inflight.Wait() // before finished closes
	for {
		if len(b.carry) > 0 {
			// Writes held over from the last batch go first, without
			// waiting for another.
			if h := b.hold.Load(); h != nil {
				<-*h
			}
			b.dispatch(&inflight, b.gather(nil))
			continue
		}
		select {
		case j := <-b.in:
			if h := b.hold.Load(); h != nil {
				b.held.Store(1)
				<-*h
				b.held.Store(0)
			}
			b.dispatch(&inflight, b.gather(j))
		case <-b.stop:
			for {
				if len(b.carry) > 0 {
					b.dispatch(&inflight, b.gather(nil))
					continue
				}
				select {
				case j := <-b.in:
					b.dispatch(&inflight, b.gather(j))
				default:
					return
				}
			}
		}
	}
}

// dispatch starts a batch of jobs and returns once its last round trip
// (bookkeeping and COMMIT) is sent, or it is over: the next batch then
// gathers, and its first round trip waits in PostgreSQL for the revision
// lock while this one's commit is flushed, instead of being sent after.
// At most two batches are in flight, and the lock still orders them: the
// second takes its revisions, reads the secrets and runs its writes only
// once the first has committed (or rolled back).
func (b *writeBatcher) dispatch(inflight *sync.WaitGroup, jobs []*writeJob) {
	committing := make(chan struct{})
	inflight.Go(func() { b.commit(jobs, sync.OnceFunc(func() { close(committing) })) })
	<-committing
}

// maxHeldOver is how many writes gather holds over to the next batch to
// keep a batch plannable.
const maxHeldOver = 4

// gather takes the writes held over from the last batch, then first (if
// any) and the writes already waiting, up to maxWriteBatch; what it takes
// but cannot fit or holds over stays in b.carry for the next batch.
//
// A write of a secret the batch already writes is held over to the next
// batch: two writes of one secret make a batch unplannable (plannable), and
// it then runs every write one round trip after another, a batch of 20
// taking several times as long as a planned one (at 64 concurrent puts of
// random keys of 1,000, about one batch in six). The held writes start the
// next batch, so each secret's writes keep the order they came in (as
// between any two batches, a batch rerun after a deadlock or serialization
// failure commits after the next one: its writes were unanswered,
// concurrent with the next batch's). More than maxHeldOver such writes in
// one gathering is a secret written by many at once, and a write that
// does not read first makes the batch unplannable anyway: then the held
// ones and the rest go in this batch, one at a time, as before. (Up to
// maxHeldOver held writes of one secret go one a batch.)
func (b *writeBatcher) gather(first *writeJob) []*writeJob {
	var (
		jobs    []*writeJob
		keys    = map[string]bool{}
		held    []*writeJob
		holding = true
	)
	// add takes j into the batch, or holds it over; false once full.
	add := func(j *writeJob) bool {
		if holding && j.state.Load() != jobQueued {
			// Its caller gave up: it only passes through, to be answered
			// (commit drops it), and must not shape the batch.
			jobs = append(jobs, j)
			return len(jobs) < maxWriteBatch
		}
		if holding {
			switch {
			case j.reads == "":
				// A write that does not read first makes the batch
				// unplannable anyway; and it may write a held secret,
				// so the held writes go before it.
				holding = false
			case keys[j.reads]:
				if len(held) < maxHeldOver {
					held = append(held, j)
					return true
				}
				holding = false
			}
			if !holding {
				if len(jobs)+len(held)+1 > maxWriteBatch {
					held = append(held, j)
					return false
				}
				jobs = append(jobs, held...)
				held = nil
			}
		}
		jobs = append(jobs, j)
		if j.reads != "" {
			keys[j.reads] = true
		}
		return len(jobs) < maxWriteBatch
	}
	pending := b.carry
	if first != nil {
		pending = append(pending, first)
	}
	b.carry = nil
	for i, j := range pending {
		if !add(j) {
			// Full: the rest start the batch after.
			b.carry = append(held, pending[i+1:]...)
			return jobs
		}
	}
	for {
		select {
		case j := <-b.in:
			if !add(j) {
				b.carry = held
				return jobs
			}
			continue
		default:
		}
		break
	}
	b.carry = held
	return jobs
}

// close commits what is queued and stops the batcher.
func (b *writeBatcher) close() {
	b.stopOnce.Do(func() { close(b.stop) })
	<-b.finished
}

// commit runs jobs as one batch and answers each of them. A batch-level
// failure (serialization failure, deadlock on a shared statement) reruns the
// whole batch; any other fails every write in it.
//
// committing is called once the batch's commit is under way (or the batch
// is over without one).
func (b *writeBatcher) commit(jobs []*writeJob, committing func()) {
	defer committing()
	live := jobs[:0]
	for _, j := range jobs {
		if err := j.ctx.Err(); err != nil {
			if j.state.CompareAndSwap(jobQueued, jobAbandoned) {
				j.done <- classify(err)
			}
			continue
		}
		if !j.state.CompareAndSwap(jobQueued, jobTaken) {
			continue // its caller gave up and was told so
		}
		live = append(live, j)
	}
	if len(live) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), writeBatchTimeout)
	defer cancel()
	const attempts = 5
	var (
		res batchResult
		err error
	)
	for i := range attempts {
		res, err = b.s.runBatch(ctx, live, committing)
		if !retryable(err) {
			break
		}
		b.s.log.DebugContext(ctx, "retrying write batch", "attempt", i+1, "writes", len(live), "error", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(i+1) * 5 * time.Millisecond):
		}
	}
	if err != nil {
		err = classify(err)
		for _, j := range live {
			j.done <- err
		}
		return
	}
	if res.committed > 0 {
		// Before any answer leaves, so that a read on this replica waits
		// for the change.
		b.s.noteWrite(res.last)
		// Its audit events are in the intake: the sequencer chains them.
		b.s.intakeCommitted()
		b.batches.Add(1)
		b.writes.Add(int64(res.committed))
		if res.oneByOne {
			b.oneByOne.Add(1)
		}
	}
	for i, j := range live {
		j.done <- res.outcomes[i]
	}
}

// batchResult is what a batch did: each job's outcome (nil: committed or
// replayed), how many writes committed, the last revision.
type batchResult struct {
	outcomes  []error
	committed int
	last      int64
	// oneByOne says the writes ran one round trip after another, not
	// planned.
	oneByOne bool
}

// idemRecord is an idempotency record as a batch sees it.
type idemRecord struct {
	method   string
	hash     []byte
	response []byte
}

// runBatch runs jobs in one transaction (see maxWriteBatch) and commits it
// if any write succeeded.
func (s *Store) runBatch(ctx context.Context, jobs []*writeJob, committing func()) (batchResult, error) {
	res := batchResult{outcomes: make([]error, len(jobs))}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return batchResult{}, err
	}
	defer conn.Release()

	// BEGIN, the counter lock (the idempotency read must see every batch
	// committed before ours), then the records of this batch's request ids,
	// in one round trip.
	var ids []string
	for _, j := range jobs {
		if j.meta.RequestID != "" {
			ids = append(ids, j.meta.RequestID)
		}
	}
	var reads []string
	read := map[string]*Secret{}
	for _, j := range jobs {
		if j.reads != "" {
			reads = append(reads, j.reads)
			read[j.reads] = nil
		}
	}
	var (
		rev int64
		now time.Time
	)
	seen := map[string]idemRecord{}
	b := &pgx.Batch{}
	// READ COMMITTED whatever the server's default: a batch sent while the
	// previous one commits waits for the counter lock and must then see
	// that commit (under REPEATABLE READ its FOR UPDATE would fail 40001).
	b.BeginTx(pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	b.Queue(`SELECT set_config('idle_in_transaction_session_timeout', $1, true)`, strconv.FormatInt(s.batchIdle.Milliseconds(), 10))
	b.Queue(`SELECT revision, now() FROM revision_counter FOR UPDATE`).QueryRow(func(row pgx.Row) error {
		return row.Scan(&rev, &now)
	})
	if len(ids) > 0 {
		b.Queue(`SELECT request_id, method, request_hash, response FROM idempotency WHERE request_id = ANY($1)`, ids).
			Query(func(rows pgx.Rows) error {
				for rows.Next() {
					var id string
					var r idemRecord
					if err := rows.Scan(&id, &r.method, &r.hash, &r.response); err != nil {
						return err
					}
					seen[id] = r
				}
				return rows.Err()
			})
	}
	if len(reads) > 0 {
		b.Queue(secretsByKeys, reads).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				sec, err := scanSecret(rows)
				if err != nil {
					return err
				}
				read[sec.Key] = &sec
			}
			return rows.Err()
		})
	}
	// A batch of one needs no savepoint: if it fails, the whole
	// transaction goes.
	useSavepoints := len(jobs) > 1
	if useSavepoints {
		b.Queue(`SAVEPOINT ` + savepointName(0))
	}
	br := conn.Conn().SendBatch(ctx, b)
	tx := br.Tx()
	// Before the connection goes back to the pool (deferred calls run last
	// first).
	committed := false
	defer func() {
		if committed {
			return // by a COMMIT in the last pipeline, which tx does not know of
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		_ = tx.Rollback(rctx)
		cancel()
	}()
	if err := br.Close(); err != nil {
		return batchResult{}, err
	}
	var (
		sp     = spClean
		stx    = &savepointTx{Tx: tx}
		cols   changeColumns
		events []AuditEvent
		idem   idemColumns
		first  = rev
	)
	// succeeded records what write i did, for the bookkeeping.
	succeeded := func(j *writeJob, w *writer, c change, response []byte) {
		rev = w.rev
		res.committed++
		cols.add(w.rev, now, c)
		events = append(events, AuditEvent{Time: now, Actor: j.meta.Actor, Action: j.meta.Action, Key: c.key,
			Version: c.version, Outcome: OutcomeOK, RequestID: j.meta.RequestID, Peer: j.meta.Peer, Revision: w.rev,
			Detail: c.detail, ValueHMAC: c.valueHMAC})
		if j.meta.RequestID != "" {
			seen[j.meta.RequestID] = idemRecord{method: j.meta.Action, hash: j.meta.RequestHash, response: response}
			idem.add(j.meta, response)
		}
	}
	// replayed settles write i from an earlier record of its request id.
	replayed := func(i int, j *writeJob) bool {
		if id := j.meta.RequestID; id != "" {
			if r, ok := seen[id]; ok {
				// Committed before this batch, or earlier in it.
				if r.method != j.meta.Action || !bytes.Equal(r.hash, j.meta.RequestHash) {
					res.outcomes[i] = ErrRequestIDReused
				} else {
					res.outcomes[i] = j.replay(r.response)
				}
				return true
			}
		}
		return false
	}
	// bookkeeping queues the change-log rows, idempotency records and
	// notifications of every successful write, the counter's move and
	// the audit events.
	bookkeeping := func(b *pgx.Batch) error {
		b.Queue(`INSERT INTO change_log (revision, time, kind, key, version, category, restart_required, detail)
			SELECT u.revision, $2::timestamptz, u.kind, u.key, u.version, u.category, u.restart_required, u.detail
			FROM unnest($1::bigint[], $3::smallint[], $4::text[], $5::bigint[], $6::text[], $7::boolean[], $8::text[])
				AS u(revision, kind, key, version, category, restart_required, detail)`, cols.args()...)
		if len(idem.ids) > 0 {
			b.Queue(`INSERT INTO idempotency (request_id, method, request_hash, response, create_time)
				SELECT u.*, $5::timestamptz FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bytea[]) AS u`,
				idem.ids, idem.methods, idem.hashes, idem.responses, now)
		}
		// One notification for the batch, its last revision: a hint that
		// wakes the listeners, who read the change log (one per write cost
		// PostgreSQL a queue entry per write, and each listener a message).
		b.Queue(`SELECT pg_notify($1, $2::bigint::text)`, NotifyChannel, rev)
		b.Queue(`UPDATE revision_counter SET revision = $1`, rev)
		return appendAudit(ctx, queuedTx{Tx: tx, b: b}, events)
	}
	// commit sends the last pipeline, ending with COMMIT. A failing
	// statement skips the rest of the pipeline, COMMIT included: the
	// deferred rollback ends the transaction.
	commit := func(b *pgx.Batch) (batchResult, error) {
		b.Queue(`COMMIT`)
		br := tx.SendBatch(ctx, b)
		committing()
		if err := br.Close(); err != nil {
			return batchResult{}, err
		}
		committed = true
		res.last = rev
		return res, nil
	}

	if useSavepoints && plannable(jobs) {
		seenBefore := maps.Clone(seen)
		ok, err := s.runPlanned(ctx, tx, jobs, rev, now, read, replayed, succeeded, bookkeeping)
		if err != nil {
			return batchResult{}, err
		}
		if ok {
			if res.committed == 0 {
				return res, nil
			}
			b := &pgx.Batch{}
			b.Queue(stx.release())
			return commit(b)
		}
		// Back to where the writes began, and one write after another.
		res = batchResult{outcomes: make([]error, len(jobs))}
		rev, cols, events, idem, seen = first, changeColumns{}, nil, idemColumns{}, seenBefore
		sp = spFailed
	}

	res.oneByOne = useSavepoints
	for i, j := range jobs {
		if replayed(i, j) {
			continue
		}
		w := &writer{tx: stx, rev: rev + 1, now: now, meta: j.meta, read: read}
		if useSavepoints {
			stx.begin(sp)
		}
		c, response, err := runJob(ctx, j, w)
		if err != nil && useSavepoints && retryable(err) && stx.used {
			// A deadlock or serialization failure in this write's own
			// statements: once more from its savepoint.
			sp = spFailed
			stx.begin(sp)
			c, response, err = runJob(ctx, j, w)
		}
		if stx.used {
			sp = spKept
			if err != nil {
				sp = spFailed
			}
		}
		if err != nil {
			if !useSavepoints {
				if retryable(err) {
					return batchResult{}, err
				}
				res.outcomes[i] = classify(err)
				return res, nil // the deferred rollback undoes it
			}
			res.outcomes[i] = classify(err) // a lost connection is UNAVAILABLE, as outside a batch
			continue
		}
		succeeded(j, w, c, response)
		// A later write of the secret reads it afresh, not as the batch
		// read it before this one.
		delete(read, c.key)
	}
	if res.committed == 0 {
		return res, nil
	}

	// One round trip for the bookkeeping of every write, at the top level
	// (the last write's savepoint settled), the audit events and the
	// commit.
	b = &pgx.Batch{}
	if useSavepoints {
		if sp == spFailed {
			// On its own, as savepointTx.take does.
			if _, err := tx.Exec(ctx, stx.rollback()); err != nil {
				return batchResult{}, err
			}
		}
		b.Queue(stx.release())
	}
	if err := bookkeeping(b); err != nil {
		return batchResult{}, err
	}
	return commit(b)
}

// plannable reports whether every write of jobs may be planned: each reads
// a secret the batch read (writeReading), and no two the same one (the
// second would find the first's change, not the row read).
func plannable(jobs []*writeJob) bool {
	keys := make(map[string]bool, len(jobs))
	for _, j := range jobs {
		if j.reads == "" || keys[j.reads] {
			return false
		}
		keys[j.reads] = true
	}
	return true
}

// runPlanned runs the bodies of jobs as plans (writer.apply): each body,
// working from the secrets the batch read, queues its one statement instead
// of sending it, and the statements of every write and the bookkeeping go
// in one round trip, under savepoint w0. ok is false, with that
// savepoint still to roll back to, when any body cannot be planned (it
// wants to read, or fails: a stale etag) or any statement failed or did
// not apply: the batch then runs its writes one after another, as if the
// plans had never been.
func (s *Store) runPlanned(ctx context.Context, tx pgx.Tx, jobs []*writeJob, rev int64, now time.Time, read map[string]*Secret,
	replayed func(int, *writeJob) bool, succeeded func(*writeJob, *writer, change, []byte), bookkeeping func(*pgx.Batch) error,
) (ok bool, err error) {
	b := &pgx.Batch{}
	planned := 0
	for i, j := range jobs {
		if replayed(i, j) {
			continue
		}
		w := &writer{tx: planTx{}, rev: rev + 1, now: now, meta: j.meta, read: read, plan: &plan{}}
		c, response, err := runJob(ctx, j, w)
		if err != nil || w.plan.sql == "" {
			return false, nil
		}
		b.Queue(w.plan.sql, w.plan.args...)
		planned++
		rev = w.rev
		succeeded(j, w, c, response)
	}
	if planned == 0 {
		return true, nil
	}
	if err := bookkeeping(b); err != nil {
		return false, err
	}
	br := tx.SendBatch(ctx, b)
	applied := true
	for range planned {
		if tag, err := br.Exec(); err != nil || tag.RowsAffected() == 0 {
			applied = false
			break
		}
	}
	if err := br.Close(); err != nil {
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) {
			return false, err // the connection, not a statement
		}
		return false, nil
	}
	return applied, nil
}

// runJob runs one write's body with the caller's context values under the
// batch's deadline, and encodes its result when it has a request id.
func runJob(ctx context.Context, j *writeJob, w *writer) (change, []byte, error) {
	jctx := context.WithoutCancel(j.ctx)
	if deadline, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		jctx, cancel = context.WithDeadline(jctx, deadline)
		defer cancel()
	}
	c, err := runRecovering(jctx, j, w)
	if err != nil {
		return change{}, nil, err
	}
	if w.meta.RequestID == "" {
		return c, nil, nil
	}
	response, err := j.encode()
	if err != nil {
		return change{}, nil, fmt.Errorf("encode idempotent result: %w", err)
	}
	return c, response, nil
}

// ErrWritePanicked is the outcome of a write whose body panicked: the
// batch runs on the batcher's goroutine, out of reach of the gRPC recovery
// interceptor, so the panic fails that write alone instead of the process.
var ErrWritePanicked = errors.New("internal error in a write")

func runRecovering(ctx context.Context, j *writeJob, w *writer) (c change, err error) {
	defer func() {
		if r := recover(); r != nil {
			// The panic's value may hold request data: not in the error.
			err = fmt.Errorf("%w (%s)", ErrWritePanicked, j.meta.Action)
		}
	}()
	return j.run(ctx, w)
}

// changeColumns are the columns of the batch's change-log insert.
type changeColumns struct {
	revision, version     []int64
	now                   time.Time
	kind                  []int16
	key, category, detail []string
	restartRequired       []bool
}

func (c *changeColumns) add(rev int64, now time.Time, ch change) {
	c.now = now
	c.revision = append(c.revision, rev)
	c.kind = append(c.kind, int16(ch.kind))
	c.key = append(c.key, ch.key)
	c.version = append(c.version, ch.version)
	c.category = append(c.category, ch.category)
	c.restartRequired = append(c.restartRequired, ch.restartRequired)
	c.detail = append(c.detail, ch.detail)
}

func (c *changeColumns) args() []any {
	return []any{c.revision, c.now, c.kind, c.key, c.version, c.category, c.restartRequired, c.detail}
}

// queuedTx is the batch's transaction with Exec queued on b, the batch's
// last pipeline, instead of sent: appendAudit's insert rides in the same
// round trip as the bookkeeping and the commit. Its errors come from the
// pipeline; it returns no command tag.
type queuedTx struct {
	pgx.Tx
	b *pgx.Batch
}

func (t queuedTx) Exec(_ context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	t.b.Queue(sql, args...)
	return pgconn.CommandTag{}, nil
}

// idemColumns are the columns of the batch's idempotency insert.
type idemColumns struct {
	ids, methods      []string
	hashes, responses [][]byte
}

func (c *idemColumns) add(meta Meta, response []byte) {
	c.ids = append(c.ids, meta.RequestID)
	c.methods = append(c.methods, meta.Action)
	c.hashes = append(c.hashes, meta.RequestHash)
	c.responses = append(c.responses, response)
}
