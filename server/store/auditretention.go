package store

import (
	"context"
	"errors"
	"iter"
	"time"

	"github.com/jackc/pgx/v5"
)

// AuditPartition is one partition of the audit log as audit_partitions
// records it: live (attached), archived (exported and read back; FirstSeq,
// LastSeq, Archive and ArchiveHash say where) or dropped.
type AuditPartition struct {
	Name              string
	From, To          time.Time
	State             string
	FirstSeq, LastSeq *int64 // nil: not recorded, or an empty partition
	Archive           string // object name in the archive bucket; "" for an empty partition
	ArchiveHash       []byte // the segment hash
}

// Audit partition states.
const (
	PartitionLive     = "live"
	PartitionArchived = "archived"
	PartitionDropped  = "dropped"
)

// AuditPartitions lists the partition catalog in time order (and so in
// chain order).
func (s *Store) AuditPartitions(ctx context.Context) ([]AuditPartition, error) {
	rows, err := s.pool.Query(ctx, `SELECT name, from_time, to_time, state, first_seq, last_seq, coalesce(archive, ''), archive_hash
		FROM audit_partitions ORDER BY from_time`)
	if err != nil {
		return nil, classify(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (AuditPartition, error) {
		var p AuditPartition
		err := r.Scan(&p.Name, &p.From, &p.To, &p.State, &p.FirstSeq, &p.LastSeq, &p.Archive, &p.ArchiveHash)
		return p, err
	})
	return out, classify(err)
}

// AuditSequencedThrough is the time up to which the chain is complete: no
// event can still arrive with an earlier sequencing time. Zero before the
// first event is sequenced.
func (s *Store) AuditSequencedThrough(ctx context.Context) (time.Time, error) {
	var t *time.Time
	err := s.pool.QueryRow(ctx, `SELECT nullif(audit_sequenced_through(), '-infinity')`).Scan(&t)
	if err != nil || t == nil {
		return time.Time{}, classify(err)
	}
	return *t, nil
}

// AuditPartitionEvents yields the events sequenced in [from, to) in
// sequence order (one partition's), streamed.
func (s *Store) AuditPartitionEvents(ctx context.Context, from, to time.Time) iter.Seq2[AuditEvent, error] {
	return s.streamAudit(ctx, `sequenced_at >= $1 AND sequenced_at < $2`, from, to)
}

// AuditPartitionRange returns the first and last sequence sequenced in
// [from, to) (0, 0 when none): two index probes of one partition.
func (s *Store) AuditPartitionRange(ctx context.Context, from, to time.Time) (first, last int64, err error) {
	err = s.pool.QueryRow(ctx, `SELECT coalesce(min(sequence), 0), coalesce(max(sequence), 0) FROM audit_events
		WHERE sequenced_at >= $1 AND sequenced_at < $2`, from, to).Scan(&first, &last)
	return first, last, classify(err)
}

// FirstAuditEvent returns the oldest event still in the table (ErrNotFound
// when it is empty): after retention dropped partitions, the live chain
// starts there.
func (s *Store) FirstAuditEvent(ctx context.Context) (AuditEvent, error) {
	e, err := scanAudit(s.pool.QueryRow(ctx, `SELECT `+auditColumns+` FROM audit_events ORDER BY sequence LIMIT 1`))
	if errors.Is(err, pgx.ErrNoRows) {
		return e, ErrNotFound
	}
	return e, classify(err)
}

// AuditEventAt returns the event with sequence seq (ErrNotFound if the table
// does not hold it).
func (s *Store) AuditEventAt(ctx context.Context, seq int64) (AuditEvent, error) {
	e, err := scanAudit(s.pool.QueryRow(ctx, `SELECT `+auditColumns+` FROM audit_events WHERE sequence = $1`, seq))
	if errors.Is(err, pgx.ErrNoRows) {
		return e, ErrNotFound
	}
	return e, classify(err)
}

// AuditRows describes which sequences audit_events holds, to find rows a
// walk of (from, head] never reads: numbered at or below where the live
// chain starts, past the head, or twice.
type AuditRows struct {
	// Min and Max are the lowest and highest sequence in the table (0, 0
	// when it is empty).
	Min, Max int64
	// Head is the chain head read in the same snapshot as Max (a committed
	// event never lies past the committed head).
	Head int64
	// Counted is the number of rows with sequence <= the upTo asked for;
	// -1 when not counted.
	Counted int64
}

// AuditRowBounds reports the table's lowest and highest sequence and the
// head (index probes) and, with count, how many rows are numbered at or
// below upTo (a scan of the index: what a full verification pays anyway).
func (s *Store) AuditRowBounds(ctx context.Context, upTo int64, count bool) (AuditRows, error) {
	r := AuditRows{Counted: -1}
	err := s.pool.QueryRow(ctx, `SELECT coalesce((SELECT min(sequence) FROM audit_events), 0),
		coalesce((SELECT max(sequence) FROM audit_events), 0), (SELECT sequence FROM audit_head)`).Scan(&r.Min, &r.Max, &r.Head)
	if err != nil || !count {
		return r, classify(err)
	}
	err = s.pool.QueryRow(ctx, `SELECT count(*) FROM audit_events WHERE sequence <= $1`, upTo).Scan(&r.Counted)
	return r, classify(err)
}

// AuditDuplicate returns the lowest sequence the table holds more than once
// at or below upTo (0: none). It reads every row: call it only once a count
// found too many.
func (s *Store) AuditDuplicate(ctx context.Context, upTo int64) (int64, error) {
	var seq int64
	err := s.pool.QueryRow(ctx, `SELECT coalesce((SELECT sequence FROM audit_events WHERE sequence <= $1
		GROUP BY sequence HAVING count(*) > 1 ORDER BY sequence LIMIT 1), 0)`, upTo).Scan(&seq)
	return seq, classify(err)
}

// RecordAuditArchive records partition name as archived (audit_record_archive:
// the retention privilege). first and last are nil for an empty partition,
// which has no archive.
func (s *Store) RecordAuditArchive(ctx context.Context, name, archive string, hash []byte, first, last *int64) error {
	var a *string
	if archive != "" {
		a = &archive
	}
	_, err := s.pool.Exec(ctx, `SELECT audit_record_archive($1, $2, $3, $4, $5)`, name, a, hash, first, last)
	return classify(err)
}

// DropAuditPartition detaches and drops an archived partition
// (audit_drop_partition: the retention privilege; the drop is audited).
func (s *Store) DropAuditPartition(ctx context.Context, name string) error {
	_, err := s.pool.Exec(ctx, `SELECT audit_drop_partition($1)`, name)
	return classify(err)
}

// CanRetainAudit reports whether the connected role may archive and drop
// audit partitions (it is a member of the retention role).
func (s *Store) CanRetainAudit(ctx context.Context) (bool, error) {
	var ok bool
	err := s.pool.QueryRow(ctx, `SELECT has_function_privilege(current_user, 'audit_drop_partition(text)', 'EXECUTE')
		AND has_function_privilege(current_user, 'audit_record_archive(text, text, bytea, bigint, bigint)', 'EXECUTE')`).Scan(&ok)
	return ok, classify(err)
}

// AuditVerified is a verifier's signed progress: the chain verified
// through Sequence, whose event has Hash.
type AuditVerified struct {
	Sequence  int64
	Hash      []byte
	Time      time.Time
	KeyID     string
	Signature []byte
}

// InsertAuditVerified records verifier progress.
func (s *Store) InsertAuditVerified(ctx context.Context, v AuditVerified) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO audit_verified (sequence, hash, verified_at, key_id, signature)
		VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING`, v.Sequence, v.Hash, v.Time, v.KeyID, v.Signature)
	return classify(err)
}

// AuditVerifiedProgress returns progress records within the chain signed
// under one of keyIDs, newest first, at most limit: the newest ones, or
// with before the ones older than it (the next page).
func (s *Store) AuditVerifiedProgress(ctx context.Context, keyIDs []string, before *AuditVerified, limit int) ([]AuditVerified, error) {
	// Only records within the chain: rows claiming events beyond the head
	// (the service role may insert any) cannot crowd out the real ones.
	var seq *int64
	var at *time.Time
	if before != nil {
		seq, at = &before.Sequence, &before.Time
	}
	rows, err := s.pool.Query(ctx, `SELECT sequence, hash, verified_at, key_id, signature FROM audit_verified
		WHERE sequence <= (SELECT sequence FROM audit_head) AND key_id = ANY ($1)
			AND ($2::bigint IS NULL OR (sequence, verified_at) < ($2, $3::timestamptz))
		ORDER BY sequence DESC, verified_at DESC LIMIT $4`, keyIDs, seq, at, limit)
	if err != nil {
		return nil, classify(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (AuditVerified, error) {
		var v AuditVerified
		err := r.Scan(&v.Sequence, &v.Hash, &v.Time, &v.KeyID, &v.Signature)
		return v, err
	})
	return out, classify(err)
}

// AuditStorage reports the bytes audit_events' partitions take, indexes
// included, and the events they hold (for figures).
func (s *Store) AuditStorage(ctx context.Context) (bytes, events int64, err error) {
	err = s.pool.QueryRow(ctx, `SELECT coalesce(sum(pg_total_relation_size(i.inhrelid)), 0)::bigint,
			(SELECT count(*) FROM audit_events)
		FROM pg_inherits i WHERE i.inhparent = 'audit_events'::regclass`).Scan(&bytes, &events)
	return bytes, events, classify(err)
}
