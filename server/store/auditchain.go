package store

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"iter"
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

// appendAudit appends events to the chain inside tx: it locks the chain
// head, numbers the events after it, links their hashes and moves the head.
// Events without a time get the transaction's.
func appendAudit(ctx context.Context, tx pgx.Tx, events []AuditEvent) error {
	if len(events) == 0 {
		return nil
	}
	var head chainHead
	if err := tx.QueryRow(ctx, lockHeadSQL).Scan(&head.seq, &head.hash, &head.now); err != nil {
		return err
	}
	b := &pgx.Batch{}
	queueAppend(b, head, events)
	return tx.SendBatch(ctx, b).Close()
}

const lockHeadSQL = `SELECT sequence, hash, now() FROM audit_head FOR UPDATE`

type chainHead struct {
	seq  int64
	hash []byte
	now  time.Time
}

// queueAppend numbers and links events after head and queues their insert
// and the head's move.
func queueAppend(b *pgx.Batch, head chainHead, events []AuditEvent) {
	seq, prev := head.seq, head.hash
	cols := struct {
		seq, version, revision      []int64
		times                       []time.Time
		actor, action, key, outcome []string
		requestID, peer, detail     []string
		prev, hash, hmac            [][]byte
	}{}
	for i := range events {
		e := &events[i]
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
	b.Queue(`INSERT INTO audit_events (sequence, time, actor, action, key, version, outcome, request_id, peer, revision, detail,
			prev_hash, hash, value_hmac)
		SELECT * FROM unnest($1::bigint[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[],
			$8::text[], $9::text[], $10::bigint[], $11::text[], $12::bytea[], $13::bytea[], $14::bytea[])`,
		cols.seq, cols.times, cols.actor, cols.action, cols.key, cols.version, cols.outcome, cols.requestID, cols.peer,
		cols.revision, cols.detail, cols.prev, cols.hash, cols.hmac)
	b.Queue(`UPDATE audit_head SET sequence = $1, hash = $2`, seq, prev)
}

// AppendAudit appends events in a transaction of their own: one commit
// makes the whole group durable (group commit for access audits). It takes
// two round trips — BEGIN with the head lock, then the inserts with the
// COMMIT — because the chain head lock is held until the commit and every
// round trip under it delays every other group.
func (s *Store) AppendAudit(ctx context.Context, events []AuditEvent) error {
	if len(events) == 0 {
		return nil
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return classify(err)
	}
	defer conn.Release()
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
		queueAppend(b, head, events)
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
	return classify(err)
}

// AuditHead returns the chain's start (events before it predate the chain),
// last sequence and last hash.
func (s *Store) AuditHead(ctx context.Context) (chainStart, sequence int64, hash []byte, err error) {
	err = s.pool.QueryRow(ctx, `SELECT chain_start, sequence, hash FROM audit_head`).Scan(&chainStart, &sequence, &hash)
	return chainStart, sequence, hash, classify(err)
}

// AuditEvents yields every event after `after`, in sequence order, streamed
// from one query (a million events need not fit in memory).
func (s *Store) AuditEvents(ctx context.Context, after int64) iter.Seq2[AuditEvent, error] {
	return func(yield func(AuditEvent, error) bool) {
		rows, err := s.pool.Query(ctx, `SELECT `+auditColumns+` FROM audit_events WHERE sequence > $1 ORDER BY sequence`, after)
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
