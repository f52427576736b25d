package store

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"iter"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// EventHash is the hash-chain link of an audit event: SHA-256 over a
// domain tag, the previous event's hash and the event's canonical content
// (every field but the sequence, length-prefixed; the time in microseconds,
// PostgreSQL's precision). The sequence is implied by the chain order.
func EventHash(prev []byte, e AuditEvent) []byte {
	h := sha256.New()
	h.Write([]byte("orient.secrets.audit.v1\x00"))
	field(h, prev)
	field(h, []byte(strconv.FormatInt(e.Time.UnixMicro(), 10)))
	for _, s := range []string{e.Actor, e.Action, e.Key, strconv.FormatInt(e.Version, 10), e.Outcome, e.RequestID, e.Peer,
		strconv.FormatInt(e.Revision, 10), e.Detail} {
		field(h, []byte(s))
	}
	field(h, e.ValueHMAC)
	return h.Sum(nil)
}

func field(h hash.Hash, b []byte) {
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(b)))
	h.Write(n[:])
	h.Write(b)
}

// appendAudit commits events to the audit intake inside tx: one insert, no
// lock, so concurrent transactions' audit commits overlap. The sequencer
// chains them after the commit (SequenceAudit). Each event is bounded first,
// so the intake holds exactly what will be hashed; an event without a time
// gets the transaction's.
func appendAudit(ctx context.Context, tx pgx.Tx, events []AuditEvent) error {
	if len(events) == 0 {
		return nil
	}
	_, err := tx.Exec(ctx, insertIntakeSQL, intakeArgs(events)...)
	return err
}

// insertIntakeSQL inserts events into the intake in one statement; a NULL
// time is the transaction's (now(), microseconds like every timestamptz).
const insertIntakeSQL = `INSERT INTO audit_intake (time, actor, action, key, version, outcome, request_id, peer, revision, detail, value_hmac)
		SELECT coalesce(u.time, now()), u.actor, u.action, u.key, u.version, u.outcome, u.request_id, u.peer, u.revision, u.detail, u.value_hmac
		FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::text[], $8::text[],
			$9::bigint[], $10::text[], $11::bytea[])
			AS u(time, actor, action, key, version, outcome, request_id, peer, revision, detail, value_hmac)`

// intakeArgs bounds events (in place) and returns the columns of their
// intake insert. A time is truncated to microseconds (PostgreSQL would
// round it) so that the stored time is the hashed one.
func intakeArgs(events []AuditEvent) []any {
	n := len(events)
	times := make([]*time.Time, n)
	actor, action, key, outcome := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	requestID, peer, detail := make([]string, n), make([]string, n), make([]string, n)
	version, revision := make([]int64, n), make([]int64, n)
	hmac := make([][]byte, n)
	for i := range events {
		e := &events[i]
		boundEvent(e)
		if !e.Time.IsZero() {
			e.Time = e.Time.Truncate(time.Microsecond).UTC()
			times[i] = &e.Time
		}
		actor[i], action[i], key[i], outcome[i] = e.Actor, e.Action, e.Key, e.Outcome
		requestID[i], peer[i], detail[i] = e.RequestID, e.Peer, e.Detail
		version[i], revision[i], hmac[i] = e.Version, e.Revision, e.ValueHMAC
	}
	return []any{times, actor, action, key, version, outcome, requestID, peer, revision, detail, hmac}
}

// AppendAudit commits events to the audit intake in a transaction of their
// own (one statement, one round trip, one commit for the group): once it
// returns they are durable, and the sequencer chains them shortly after.
// Commits of concurrent groups overlap: nothing here waits for the chain.
func (s *Store) AppendAudit(ctx context.Context, events []AuditEvent) error {
	if len(events) == 0 {
		return nil
	}
	if _, err := s.pool.Exec(ctx, insertIntakeSQL, intakeArgs(events)...); err != nil {
		return classify(err)
	}
	s.intakeCommitted()
	return nil
}

// intakeCommitted wakes this process's sequencer: events were committed to
// the intake. Other replicas' events are found by its poll.
func (s *Store) intakeCommitted() {
	select {
	case s.intakeSignal <- struct{}{}:
	default:
	}
}

// IntakeSignal receives a value after events were committed to the intake
// through this store (coalesced: one value may stand for many commits).
func (s *Store) IntakeSignal() <-chan struct{} { return s.intakeSignal }

// SequenceOptions tune one sequencing round.
type SequenceOptions struct {
	// Limit is the most intake events chained in the round (default 1000).
	Limit int
	// FromStart reads the intake from its first id, not past what this
	// process has chained (intakecursor.go): it finds every committed
	// event, at the cost of walking the index entries of those chained
	// since the last vacuum.
	FromStart bool
	// BeforeIntegrate, if set, runs after the intake was read and hashed,
	// before the events are integrated, with the backend pid of the
	// round's connection (tests: kill the sequencer mid-round). An error
	// abandons the round.
	BeforeIntegrate func(ctx context.Context, pid uint32) error
}

// Sequenced is what one round chained.
type Sequenced struct {
	// Events chained, and the head after them.
	Events   int
	Head     int64
	HeadHash []byte
	// SequencedAt is when the database chained them (its clock); Times are
	// the events' own times (its clock too, unless the caller set one):
	// SequencedAt - Time is each event's sequencing delay.
	SequencedAt time.Time
	Times       []time.Time
	// More says the round was full: more events may be waiting.
	More bool
	// Waiting estimates, for a full round, how many events wait past it:
	// the last id the intake's inserts took minus the highest the round
	// chained (ids are taken in order; a rolled-back insert leaves a hole,
	// an insert in flight counts, and so do events another replica chains
	// meanwhile). 0 for a round not full.
	Waiting int64
	// Chaining is how long the round took once it held the chain head's
	// lock and had read the intake: without its waits for a connection
	// and for the lock (other replicas' turns).
	Chaining time.Duration
}

// intakeTopSQL is the last id the intake's inserts took (committed or not),
// for Sequenced.Waiting: the sequence's own row, in constant time (max(id)
// walks the index from its top, and an intake the sequencer emptied is
// all dead entries there until VACUUM).
const intakeTopSQL = `SELECT last_value FROM audit_intake_id_seq`

// SequenceAudit runs one sequencing round: under the chain head's row lock
// (so one sequencer at a time, across replicas, and after any writer of the
// previous release that appends under it) it reads up to Limit intake
// events in id order, links them after the head in Go, and integrates them
// (audit_integrate moves them into audit_events and moves the head) in the
// same transaction. Two round trips: [BEGIN, lock, xmin, read] and
// [integrate, COMMIT, and the cursor's tag: BEGIN, transaction id,
// ROLLBACK]. It reads past what this process's rounds have chained, plus
// the ids they missed, and from the start every intakeFullReadEvery or
// when asked (intakecursor.go). A round killed at any point either
// committed whole or left the events in the intake for the next round;
// none is chained twice (an id integrated already fails the round with
// 40001). A round that committed is a success even if its tag is lost.
func (s *Store) SequenceAudit(ctx context.Context, opts SequenceOptions) (Sequenced, error) {
	limit := opts.Limit
	if limit <= 0 {
		limit = 1000
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return Sequenced{}, classify(err)
	}
	defer conn.Release()
	var out Sequenced
	sc := s.intake.scan(time.Now(), opts.FromStart)
	read := readResult{scan: sc, startedAt: time.Now()}
	committed := false
	err = func() error {
		b := &pgx.Batch{}
		b.Queue(`BEGIN`)
		// A round holds the head lock across two round trips: a sequencer
		// that stalls (a paused process, a lost network) must not hold every
		// other replica's sequencer until TCP gives up.
		b.Queue(`SET LOCAL idle_in_transaction_session_timeout = '30s'`)
		b.Queue(`SET LOCAL lock_timeout = '30s'`)
		b.Queue(`SELECT sequence, hash FROM audit_head FOR UPDATE`)
		// Where this process's cursor says the waiting events are, between
		// the snapshot bounds that tell its gaps apart (intakecursor.go).
		b.Queue(snapshotXminSQL)
		if len(sc.gaps) == 0 {
			b.Queue(readIntakeSQL, sc.floor, limit)
		} else {
			b.Queue(readIntakeGapsSQL, sc.floor, limit, sc.gaps)
		}
		b.Queue(intakeTopSQL)
		br := conn.SendBatch(ctx, b)
		for range 3 { // BEGIN and the two settings
			if _, err := br.Exec(); err != nil {
				br.Close()
				return err
			}
		}
		var headSeq int64
		var headHash []byte
		if err := br.QueryRow().Scan(&headSeq, &headHash); err != nil {
			br.Close()
			return err
		}
		if err := br.QueryRow().Scan(&read.xminBefore); err != nil {
			br.Close()
			return err
		}
		rows, err := br.Query()
		if err != nil {
			br.Close()
			return err
		}
		var ids []int64
		var events []AuditEvent
		for rows.Next() {
			var id int64
			var e AuditEvent
			if err := rows.Scan(&id, &e.Time, &e.Actor, &e.Action, &e.Key, &e.Version, &e.Outcome, &e.RequestID, &e.Peer,
				&e.Revision, &e.Detail, &e.ValueHMAC); err != nil {
				rows.Close()
				br.Close()
				return err
			}
			ids, events = append(ids, id), append(events, e)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			br.Close()
			return err
		}
		var top int64
		if err := br.QueryRow().Scan(&top); err != nil {
			br.Close()
			return err
		}
		if err := br.Close(); err != nil {
			return err
		}
		locked := time.Now()
		read.ids, read.truncated = ids, len(ids) == limit
		if read.truncated {
			out.Waiting = max(top-slices.Max(ids), 0)
		}
		if len(events) == 0 {
			_, err := conn.Exec(ctx, `ROLLBACK`)
			out.Head, out.HeadHash = headSeq, headHash
			return err
		}
		hashes := make([][]byte, len(events))
		prev := headHash
		for i := range events {
			e := events[i]
			e.Time = e.Time.UTC()
			hashes[i] = EventHash(prev, e)
			prev = hashes[i]
			out.Times = append(out.Times, e.Time)
		}
		if opts.BeforeIntegrate != nil {
			if err := opts.BeforeIntegrate(ctx, conn.Conn().PgConn().PID()); err != nil {
				return err
			}
		}
		b = &pgx.Batch{}
		b.Queue(`SELECT head_sequence, head_hash, head_sequenced_at FROM audit_integrate($1, $2, $3, $4)`, ids, hashes, headSeq, headHash)
		b.Queue(`COMMIT`)
		// The gaps' tag: a transaction id assigned after the commit, in a
		// transaction rolled back (a commit would wait for a WAL flush).
		b.Queue(`BEGIN`)
		b.Queue(newXactIDSQL)
		b.Queue(`ROLLBACK`)
		br = conn.SendBatch(ctx, b)
		err = br.QueryRow().Scan(&out.Head, &out.HeadHash, &out.SequencedAt)
		if errors.Is(err, pgx.ErrNoRows) {
			// Impossible while we hold the head's lock; say so rather
			// than commit nothing silently.
			err = errors.New("audit_integrate: the chain head moved under its lock")
		}
		if err != nil {
			br.Close()
			return err
		}
		if _, err := br.Exec(); err != nil { // COMMIT
			br.Close()
			return err
		}
		out.Events, out.More, out.Chaining = len(events), len(events) == limit, time.Since(locked)
		committed = true
		// The tag: BEGIN, the transaction id, ROLLBACK.
		_, err = br.Exec()
		if err == nil {
			err = br.QueryRow().Scan(&read.tag)
		}
		if err == nil {
			_, err = br.Exec()
		}
		if err != nil {
			br.Close()
			return err
		}
		return br.Close()
	}()
	switch {
	case err == nil:
		// Committed (or found nothing): only now are its ids gone.
		s.intake.chained(read)
	case committed:
		// Chained, but without a tag: the cursor forgets the ids, and the
		// round is a success (its connection is dropped below if it is
		// left in a transaction).
		s.intake.chainedUntagged(read.ids)
		s.log.Warn("audit sequencer: round committed, its cursor tag not read", "error", err)
		if conn.Conn().PgConn().TxStatus() != 'I' && !conn.Conn().IsClosed() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_, _ = conn.Exec(rctx, `ROLLBACK`)
			cancel()
		}
		return out, nil
	}
	if err != nil {
		out = Sequenced{}
		if conn.Conn().PgConn().TxStatus() != 'I' && !conn.Conn().IsClosed() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_, _ = conn.Exec(rctx, `ROLLBACK`)
			cancel()
		}
	}
	return out, classify(err)
}

const intakeColumns = `time, actor, action, key, version, outcome, request_id, peer, revision, detail, value_hmac`

// readIntakeSQL reads up to $2 intake events above the floor ($1; 0 reads
// every id) in id order, never walking the index entries of the events
// chained below it; readIntakeGapsSQL adds the gaps ($3, ids below the
// floor, looked up one by one).
const (
	readIntakeSQL     = `SELECT id, ` + intakeColumns + ` FROM audit_intake WHERE id > $1 ORDER BY id LIMIT $2`
	readIntakeGapsSQL = `SELECT id, ` + intakeColumns + ` FROM (
	SELECT id, ` + intakeColumns + ` FROM audit_intake WHERE id = ANY ($3::bigint[])
	UNION ALL
	(` + readIntakeSQL + `)
) i ORDER BY id LIMIT $2`
)

// probeIntakeSQL is the probe of the same: the oldest transaction running
// at its snapshot, whether any event waits above the floor ($1), and the
// gaps ($2) that turned up. (Not EXISTS above the floor: PostgreSQL drops
// an EXISTS subquery's order and limit and may then scan the whole table,
// dead rows and all; the first id in order walks the index from the
// floor.)
const probeIntakeSQL = `SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint,
	(SELECT id FROM audit_intake WHERE id > $1 ORDER BY id LIMIT 1) IS NOT NULL,
	ARRAY (SELECT id FROM audit_intake WHERE id = ANY ($2::bigint[]))`

// snapshotXminSQL is the oldest transaction running at its snapshot: every
// transaction below it had ended before a statement that follows it.
const snapshotXminSQL = `SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint`

// newXactIDSQL assigns the transaction a transaction id and returns it.
const newXactIDSQL = `SELECT pg_current_xact_id()::text::bigint`

// AuditIntake reports how many committed events wait in the intake to be
// chained, and how long the oldest has waited (the database's clock; 0
// when none waits).
func (s *Store) AuditIntake(ctx context.Context) (waiting int64, oldest time.Duration, err error) {
	var age float64
	err = s.pool.QueryRow(ctx, `SELECT count(*), coalesce(extract(epoch FROM now() - min(time)), 0)::float8 FROM audit_intake`).
		Scan(&waiting, &age)
	return waiting, time.Duration(age * float64(time.Second)), classify(err)
}

// AuditIntakeWaiting reports whether any committed event waits in the
// intake where this process's next round reads it (the sequencer's poll:
// index probes past what its rounds chained, and from the start when a
// full read is due; intakecursor.go).
func (s *Store) AuditIntakeWaiting(ctx context.Context) (bool, error) {
	now := time.Now()
	sc := s.intake.scan(now, false)
	var (
		xmin  int64
		above bool
		found []int64
	)
	if err := s.pool.QueryRow(ctx, probeIntakeSQL, sc.floor, sc.gaps).Scan(&xmin, &above, &found); err != nil {
		return false, classify(err)
	}
	waiting := above || len(found) > 0
	s.intake.probed(sc, now, found, xmin, !waiting)
	return waiting, nil
}

// EnsureAuditPartitions creates audit_events' partitions up to until, each
// period long (a new period applies to partitions created from now on). It
// reports how many it created.
func (s *Store) EnsureAuditPartitions(ctx context.Context, until time.Time, period time.Duration) (int, error) {
	var n int
	err := s.pool.QueryRow(ctx, `SELECT audit_ensure_partitions($1, make_interval(secs => $2), NULL)`, until, period.Seconds()).Scan(&n)
	return n, classify(err)
}

// AuditHead returns the chain's start (events before it predate the chain),
// last sequence and last hash.
func (s *Store) AuditHead(ctx context.Context) (chainStart, sequence int64, hash []byte, err error) {
	err = s.pool.QueryRow(ctx, `SELECT chain_start, sequence, hash FROM audit_head`).Scan(&chainStart, &sequence, &hash)
	return chainStart, sequence, hash, classify(err)
}

// AuditEvents yields every event with after < sequence <= upTo (pass
// math.MaxInt64 for no bound),
// in sequence order, streamed
// from one query (a million events need not fit in memory).
func (s *Store) AuditEvents(ctx context.Context, after, upTo int64) iter.Seq2[AuditEvent, error] {
	return s.streamAudit(ctx, `sequence > $1 AND sequence <= $2`, after, upTo)
}

// streamAudit yields the events matching where, in sequence order, streamed
// from one query.
func (s *Store) streamAudit(ctx context.Context, where string, args ...any) iter.Seq2[AuditEvent, error] {
	return func(yield func(AuditEvent, error) bool) {
		rows, err := s.pool.Query(ctx, `SELECT `+auditColumns+` FROM audit_events WHERE `+where+` ORDER BY sequence`, args...)
		if err != nil {
			yield(AuditEvent{}, classify(err))
			return
		}
		defer rows.Close()
		for rows.Next() {
			e, err := scanAudit(rows)
			if !yield(e, classify(err)) || err != nil {
				return
			}
		}
		if err := rows.Err(); err != nil {
			yield(AuditEvent{}, classify(err))
		}
	}
}

// AuditCheckpoint is a stored signed checkpoint.
type AuditCheckpoint struct {
	Sequence  int64
	Hash      []byte
	Time      time.Time
	KeyID     string
	Signature []byte
}

// InsertCheckpoint stores a checkpoint (a racing replica's identical one is
// ignored).
func (s *Store) InsertCheckpoint(ctx context.Context, c AuditCheckpoint) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO audit_checkpoints (sequence, hash, time, key_id, signature)
		VALUES ($1, $2, $3, $4, $5) ON CONFLICT (sequence) DO NOTHING`, c.Sequence, c.Hash, c.Time, c.KeyID, c.Signature)
	return classify(err)
}

// NewestCheckpoints returns the newest stored checkpoint at or below upTo
// and the newest one past it (nil when there is none): two index probes,
// whatever the table's size.
func (s *Store) NewestCheckpoints(ctx context.Context, upTo int64) (atOrBelow, past *AuditCheckpoint, err error) {
	rows, err := s.pool.Query(ctx, `(SELECT sequence, hash, time, key_id, signature FROM audit_checkpoints
			WHERE sequence <= $1 ORDER BY sequence DESC LIMIT 1)
		UNION ALL
		(SELECT sequence, hash, time, key_id, signature FROM audit_checkpoints
			WHERE sequence > $1 ORDER BY sequence DESC LIMIT 1)`, upTo)
	if err != nil {
		return nil, nil, classify(err)
	}
	cps, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (AuditCheckpoint, error) {
		var c AuditCheckpoint
		err := r.Scan(&c.Sequence, &c.Hash, &c.Time, &c.KeyID, &c.Signature)
		return c, err
	})
	if err != nil {
		return nil, nil, classify(err)
	}
	for i := range cps {
		if cps[i].Sequence <= upTo {
			atOrBelow = &cps[i]
		} else {
			past = &cps[i]
		}
	}
	return atOrBelow, past, nil
}

// MaxCheckpointPage bounds a page of CheckpointsAfter and CheckpointsBefore.
const MaxCheckpointPage = 10_000

const checkpointColumns = `sequence, hash, time, key_id, signature`

// checkpointLimit is limit within (0, MaxCheckpointPage].
func checkpointLimit(limit int) int {
	if limit <= 0 || limit > MaxCheckpointPage {
		return MaxCheckpointPage
	}
	return limit
}

// CheckpointsAfter returns up to limit checkpoints with after < sequence
// <= upTo, in sequence order: a page of a keyset walk (the next page is
// after the last one returned), one index range scan whatever the table
// holds. limit is at most MaxCheckpointPage (0: that).
func (s *Store) CheckpointsAfter(ctx context.Context, after, upTo int64, limit int) ([]AuditCheckpoint, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+checkpointColumns+` FROM audit_checkpoints
		WHERE sequence > $1 AND sequence <= $2 ORDER BY sequence LIMIT $3`, after, upTo, checkpointLimit(limit))
	if err != nil {
		return nil, classify(err)
	}
	return collectCheckpoints(rows)
}

// CheckpointsBefore returns up to limit checkpoints with downTo < sequence
// <= upTo, newest first: a page of a keyset walk backwards (the next page
// is up to the last one returned, minus one).
func (s *Store) CheckpointsBefore(ctx context.Context, upTo, downTo int64, limit int) ([]AuditCheckpoint, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+checkpointColumns+` FROM audit_checkpoints
		WHERE sequence <= $1 AND sequence > $2 ORDER BY sequence DESC LIMIT $3`, upTo, downTo, checkpointLimit(limit))
	if err != nil {
		return nil, classify(err)
	}
	return collectCheckpoints(rows)
}

// CheckpointsAt returns the checkpoints stored at the given sequences (at
// most MaxCheckpointPage of them), in sequence order: index probes.
func (s *Store) CheckpointsAt(ctx context.Context, seqs []int64) ([]AuditCheckpoint, error) {
	if len(seqs) == 0 {
		return nil, nil
	}
	if len(seqs) > MaxCheckpointPage {
		return nil, fmt.Errorf("audit checkpoints: %d sequences asked at once, at most %d", len(seqs), MaxCheckpointPage)
	}
	rows, err := s.pool.Query(ctx, `SELECT `+checkpointColumns+` FROM audit_checkpoints
		WHERE sequence = ANY ($1::bigint[]) ORDER BY sequence`, seqs)
	if err != nil {
		return nil, classify(err)
	}
	return collectCheckpoints(rows)
}

func collectCheckpoints(rows pgx.Rows) ([]AuditCheckpoint, error) {
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (AuditCheckpoint, error) {
		var c AuditCheckpoint
		err := r.Scan(&c.Sequence, &c.Hash, &c.Time, &c.KeyID, &c.Signature)
		return c, err
	})
	return out, classify(err)
}
