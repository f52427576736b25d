package store

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// KEKCount is how many data keys one KEK wraps.
type KEKCount struct {
	KEKID    string
	DataKeys int64
}

// CountByKEK returns how many data keys each KEK wraps: secret versions not
// destroyed (a destroyed version has no data key left) plus the service's
// own keys, ordered by KEK id. KEKs that wrap nothing are absent.
func (s *Store) CountByKEK(ctx context.Context) ([]KEKCount, error) {
	rows, err := s.pool.Query(ctx, `SELECT kek_id, sum(n)::bigint FROM (
			SELECT kek_id, count(*) AS n FROM secret_versions WHERE state <> 3 GROUP BY kek_id
			UNION ALL
			SELECT kek_id, count(*) AS n FROM service_keys GROUP BY kek_id
		) c GROUP BY kek_id ORDER BY kek_id`)
	if err != nil {
		return nil, classify(err)
	}
	counts, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (KEKCount, error) {
		var c KEKCount
		err := r.Scan(&c.KEKID, &c.DataKeys)
		return c, err
	})
	return counts, classify(err)
}

// WrappedKey is a data key as read for re-wrapping (no lock is taken): a
// secret version's (Version > 0) or a service key's (Version 0, Key is its
// name).
type WrappedKey struct {
	Key     string
	Version int64
	Sealed  Sealed // WrappedDEK and KEKID only: the ciphertext is not read
}

// ServiceKey reports whether k is a service key rather than a secret version.
func (k WrappedKey) ServiceKey() bool { return k.Version == 0 }

// KeysToRewrap returns up to limit data keys not wrapped by primaryID that
// come after the cursor after (the zero WrappedKey: from the start), in
// cursor order: secret versions by key and version, then service keys by
// name. It is a plain read: no row is locked, so nothing waits on whatever
// the caller does next (KMS calls) with what it returns.
func (s *Store) KeysToRewrap(ctx context.Context, primaryID string, after WrappedKey, limit int) ([]WrappedKey, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("%w: batch size must be positive", ErrInvalidArgument)
	}
	var out []WrappedKey
	if !after.ServiceKey() || after.Key == "" {
		// Destroyed versions (state 3) have no data key (wrapped_dek NULL).
		rows, err := s.pool.Query(ctx, `SELECT key, version, wrapped_dek, kek_id FROM secret_versions
			WHERE kek_id <> $1 AND state <> 3 AND (key, version) > ($2, $3)
			ORDER BY key, version LIMIT $4`, primaryID, after.Key, after.Version, limit)
		if err != nil {
			return nil, classify(err)
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (WrappedKey, error) {
			var k WrappedKey
			err := r.Scan(&k.Key, &k.Version, &k.Sealed.WrappedDEK, &k.Sealed.KEKID)
			return k, err
		})
		if err != nil {
			return nil, classify(err)
		}
		after = WrappedKey{}
	}
	if left := limit - len(out); left > 0 {
		rows, err := s.pool.Query(ctx, `SELECT name, wrapped_dek, kek_id FROM service_keys
			WHERE kek_id <> $1 AND name > $2 ORDER BY name LIMIT $3`, primaryID, after.Key, left)
		if err != nil {
			return nil, classify(err)
		}
		keys, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (WrappedKey, error) {
			var k WrappedKey
			err := r.Scan(&k.Key, &k.Sealed.WrappedDEK, &k.Sealed.KEKID)
			return k, err
		})
		if err != nil {
			return nil, classify(err)
		}
		out = append(out, keys...)
	}
	return out, nil
}

// Rewrapped is a data key re-wrapped under the primary KEK: Old as read by
// KeysToRewrap, New its replacement.
type Rewrapped struct {
	Old WrappedKey
	New Sealed
}

// ApplyRewrapped stores each re-wrapped data key whose row still holds
// exactly the data key it was read with (same KEK id, same wrapped key), and
// returns how many it stored. A row that changed meanwhile (destroyed,
// deleted, re-wrapped by another worker or replica) is skipped, not
// overwritten: a later pass reads it again. Only wrapped_dek and kek_id
// change; the ciphertext is neither read nor written. No KMS call happens
// here, so the row locks its updates take last one round trip.
func (s *Store) ApplyRewrapped(ctx context.Context, keys []Rewrapped) (int, error) {
	if len(keys) == 0 {
		return 0, nil
	}
	var n int
	err := s.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		n = 0
		b := &pgx.Batch{}
		for _, k := range keys {
			if len(k.New.WrappedDEK) == 0 || k.New.KEKID == "" {
				return fmt.Errorf("%w: re-wrapped data key of %s has no KEK", ErrInvalidArgument, k.Old.Key)
			}
			if k.Old.ServiceKey() {
				b.Queue(`UPDATE service_keys SET wrapped_dek = $2, kek_id = $3
					WHERE name = $1 AND kek_id = $4 AND wrapped_dek = $5`,
					k.Old.Key, k.New.WrappedDEK, k.New.KEKID, k.Old.Sealed.KEKID, k.Old.Sealed.WrappedDEK)
				continue
			}
			b.Queue(`UPDATE secret_versions SET wrapped_dek = $3, kek_id = $4
				WHERE key = $1 AND version = $2 AND kek_id = $5 AND wrapped_dek = $6`,
				k.Old.Key, k.Old.Version, k.New.WrappedDEK, k.New.KEKID, k.Old.Sealed.KEKID, k.Old.Sealed.WrappedDEK)
		}
		br := tx.SendBatch(ctx, b)
		defer br.Close()
		for range keys {
			tag, err := br.Exec()
			if err != nil {
				return err
			}
			n += int(tag.RowsAffected())
		}
		return br.Close()
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// RotationAuditAction is the audit action of KEK rotation events.
const RotationAuditAction = "RotateKEK"

// RecordRotation audits a KEK rotation's start or end: actor is who asked
// (an admin token's name, or the CLI), outcome "STARTED", "OK" or the
// failure, detail the KEK ids and counts (never key material).
func (s *Store) RecordRotation(ctx context.Context, meta Meta, outcome, detail string) error {
	return s.recordRotationAudit(ctx, AuditEvent{Actor: meta.Actor, Action: RotationAuditAction, Outcome: outcome,
		RequestID: meta.RequestID, Peer: meta.Peer, Detail: detail})
}

// recordRotationAudit is the one place KEK rotation events reach the audit
// log, through the audit hash chain like every other event.
func (s *Store) recordRotationAudit(ctx context.Context, e AuditEvent) error {
	return classify(s.AppendAudit(ctx, []AuditEvent{e}))
}
