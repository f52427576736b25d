package store

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"iter"
	"strconv"
	"sync"
	"sync/atomic"
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

// appendAudit appends events to the chain inside tx: it locks the chain
// head, numbers the events after it, links their hashes and moves the head.
// Events without a time get the transaction's. It returns the head after
// them, for knownHead once the transaction commits.
func appendAudit(ctx context.Context, tx pgx.Tx, events []AuditEvent) (chainHead, error) {
	if len(events) == 0 {
		return chainHead{}, nil
	}
	var head chainHead
	if err := tx.QueryRow(ctx, lockHeadSQL).Scan(&head.seq, &head.hash, &head.now); err != nil {
		return chainHead{}, err
	}
	b := &pgx.Batch{}
	next := queueAppend(b, head, events)
	return next, tx.SendBatch(ctx, b).Close()
}

const lockHeadSQL = `SELECT sequence, hash, now() FROM audit_head FOR UPDATE`

type chainHead struct {
	seq  int64
	hash []byte
	now  time.Time
}

// chainEvents numbers and links events after head, giving those without a
// time the head's, and returns the columns of their insert and the new head.
func chainEvents(head chainHead, events []AuditEvent) (auditColumnsArgs, chainHead) {
	seq, prev := head.seq, head.hash
	var cols auditColumnsArgs
	for i := range events {
		e := &events[i]
		boundEvent(e)
		if e.Time.IsZero() {
			e.Time = head.now
		}
		e.Time = e.Time.Truncate(time.Microsecond).UTC()
		seq++
		e.Sequence, e.PrevHash = seq, prev
		e.Hash = EventHash(prev, *e)
		prev = e.Hash
		cols.seq = append(cols.seq, e.Sequence)
		cols.times = append(cols.times, e.Time)
		cols.actor = append(cols.actor, e.Actor)
		cols.action = append(cols.action, e.Action)
		cols.key = append(cols.key, e.Key)
		cols.version = append(cols.version, e.Version)
		cols.outcome = append(cols.outcome, e.Outcome)
		cols.requestID = append(cols.requestID, e.RequestID)
		cols.peer = append(cols.peer, e.Peer)
		cols.revision = append(cols.revision, e.Revision)
		cols.detail = append(cols.detail, e.Detail)
		cols.prev = append(cols.prev, e.PrevHash)
		cols.hash = append(cols.hash, e.Hash)
		cols.hmac = append(cols.hmac, e.ValueHMAC)
	}
	return cols, chainHead{seq: seq, hash: prev, now: head.now}
}

// auditColumnsArgs are the columns of a multi-row audit insert.
type auditColumnsArgs struct {
	seq, version, revision      []int64
	times                       []time.Time
	actor, action, key, outcome []string
	requestID, peer, detail     []string
	prev, hash, hmac            [][]byte
}

func (c auditColumnsArgs) args() []any {
	return []any{c.seq, c.times, c.actor, c.action, c.key, c.version, c.outcome, c.requestID, c.peer,
		c.revision, c.detail, c.prev, c.hash, c.hmac}
}

const insertAuditColumns = `INSERT INTO audit_events (sequence, time, actor, action, key, version, outcome, request_id, peer, revision, detail,
			prev_hash, hash, value_hmac)
		SELECT u.* FROM unnest($1::bigint[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[],
			$8::text[], $9::text[], $10::bigint[], $11::text[], $12::bytea[], $13::bytea[], $14::bytea[]) AS u`

// queueAppend numbers and links events after head and queues their insert
// and the head's move.
func queueAppend(b *pgx.Batch, head chainHead, events []AuditEvent) chainHead {
	cols, next := chainEvents(head, events)
	b.Queue(insertAuditColumns, cols.args()...)
	b.Queue(`UPDATE audit_head SET sequence = $1, hash = $2`, next.seq, next.hash)
	return next
}

// appendIfHeadSQL appends a chained group in one statement, and so in one
// round trip and one commit: it moves the head only if the head is still
// the one the group was chained after, and inserts the events only if it
// moved it. A concurrent appender holding the head waits us out, and
// PostgreSQL re-checks the condition against the head it committed, so a
// stale head inserts nothing and is never a fork.
const appendIfHeadSQL = `WITH moved AS (
			UPDATE audit_head SET sequence = $15, hash = $16 WHERE sequence = $17 AND hash = $18 RETURNING 1)
		` + insertAuditColumns + ` WHERE EXISTS (SELECT FROM moved)`

// knownHead is this process's last known chain head: a guess that saves the
// head lock's round trip, checked by the database on every append. When
// guesses keep missing (another replica appends as busily), it stops
// guessing for a while, doubling the pause on each consecutive miss.
type knownHead struct {
	mu     sync.Mutex
	head   chainHead
	valid  bool
	skip   int // appends left that go straight to the lock
	streak int // consecutive misses
}

// maxGuessPause bounds the appends that skip guessing after misses.
const maxGuessPause = 64

func (k *knownHead) guess() (chainHead, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.skip > 0 {
		k.skip--
		return chainHead{}, false
	}
	return k.head, k.valid
}

// appended records the head after a successful append; hit says whether
// it was a guess that held.
func (k *knownHead) appended(h chainHead, hit bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.valid || h.seq > k.head.seq { // never back to an older head of ours
		k.head, k.valid = h, true
	}
	if hit {
		k.streak = 0
	}
}

func (k *knownHead) forget(missed bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.valid = false
	if missed {
		k.streak++
		k.skip = min(1<<min(k.streak, 6), maxGuessPause)
	}
}

// AppendAudit appends events in a transaction of their own: one commit
// makes the whole group durable (group commit for access audits). The
// common case is one round trip: the group is chained after the head this
// process last appended and sent as appendIfHeadSQL. When another writer
// moved the head first (a write's audit event, another replica) nothing is
// inserted and the group goes the locked way, which always succeeds.
func (s *Store) AppendAudit(ctx context.Context, events []AuditEvent) error {
	if len(events) == 0 {
		return nil
	}
	if head, ok := s.head.guess(); ok {
		head.now = time.Now()
		cols, next := chainEvents(head, events)
		tag, err := s.pool.Exec(ctx, appendIfHeadSQL, append(cols.args(), next.seq, next.hash, head.seq, head.hash)...)
		if err != nil {
			s.head.forget(false)
			return classify(err)
		}
		if tag.RowsAffected() == int64(len(events)) {
			s.head.appended(next, true)
			s.appends.oneTrip.Add(1)
			return nil
		}
		s.head.forget(true)
		s.appends.missed.Add(1)
	}
	s.appends.locked.Add(1)
	next, err := s.appendAuditLocked(ctx, events)
	if err != nil {
		s.head.forget(false)
		return err
	}
	s.head.appended(next, false)
	return nil
}

// appendAuditLocked appends under the head lock in two round trips —
// BEGIN with the head lock, then the inserts with the COMMIT — because the
// lock is held until the commit and every round trip under it delays every
// other appender. It returns the new head.
func (s *Store) appendAuditLocked(ctx context.Context, events []AuditEvent) (chainHead, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return chainHead{}, classify(err)
	}
	defer conn.Release()
	var next chainHead
	err = func() error {
		b := &pgx.Batch{}
		b.Queue(`BEGIN`)
		b.Queue(lockHeadSQL)
		br := conn.SendBatch(ctx, b)
		var head chainHead
		if _, err := br.Exec(); err != nil {
			br.Close()
			return err
		}
		if err := br.QueryRow().Scan(&head.seq, &head.hash, &head.now); err != nil {
			br.Close()
			return err
		}
		if err := br.Close(); err != nil {
			return err
		}
		b = &pgx.Batch{}
		next = queueAppend(b, head, events)
		b.Queue(`COMMIT`)
		return conn.SendBatch(ctx, b).Close()
	}()
	if err != nil && conn.Conn().PgConn().TxStatus() != 'I' {
		// Leave no transaction open on a pooled connection (the pool would
		// discard it anyway; a ROLLBACK keeps it usable).
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		_, _ = conn.Exec(rctx, `ROLLBACK`)
		cancel()
	}
	return next, classify(err)
}

type appendCounters struct{ oneTrip, missed, locked atomic.Int64 }

// AppendStats counts AppendAudit's paths since the store opened: groups
// appended in one round trip, guesses of the head that another writer
// beat, and groups that fell back to the head lock.
type AppendStats struct{ OneTrip, Missed, Locked int64 }

// AuditAppendStats reports AppendAudit's paths (for metrics and tests).
func (s *Store) AuditAppendStats() AppendStats {
	return AppendStats{s.appends.oneTrip.Load(), s.appends.missed.Load(), s.appends.locked.Load()}
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
	return func(yield func(AuditEvent, error) bool) {
		rows, err := s.pool.Query(ctx, `SELECT `+auditColumns+` FROM audit_events
			WHERE sequence > $1 AND sequence <= $2 ORDER BY sequence`, after, upTo)
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

// Checkpoints returns every checkpoint in sequence order.
func (s *Store) Checkpoints(ctx context.Context) ([]AuditCheckpoint, error) {
	rows, err := s.pool.Query(ctx, `SELECT sequence, hash, time, key_id, signature FROM audit_checkpoints ORDER BY sequence`)
	if err != nil {
		return nil, classify(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (AuditCheckpoint, error) {
		var c AuditCheckpoint
		err := r.Scan(&c.Sequence, &c.Hash, &c.Time, &c.KeyID, &c.Signature)
		return c, err
	})
	return out, classify(err)
}
