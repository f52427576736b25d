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

// RewrapBatch re-wraps up to limit data keys that are not wrapped by
// primaryID, in one short transaction: it locks the rows (skipping rows
// other transactions hold, so concurrent writers and other rotation workers
// are never waited on), calls rewrap for each and stores the new wrapped key
// and KEK id. Only wrapped_dek and kek_id change: the ciphertext is neither
// read (re-wrapping does not need it) nor written. Secret versions go first,
// then service keys. It returns how many rows it re-wrapped; 0 means none
// was left that it could lock.
//
// rewrap must return a Sealed wrapped by primaryID. An error from it rolls
// the whole batch back and is returned, naming the row.
func (s *Store) RewrapBatch(ctx context.Context, primaryID string, limit int, rewrap func(Sealed) (Sealed, error)) (int, error) {
	if limit <= 0 {
		return 0, fmt.Errorf("%w: batch size must be positive", ErrInvalidArgument)
	}
	var n int
	err := s.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		n = 0
		// Destroyed versions (state 3) have no data key (wrapped_dek NULL).
		rows, err := tx.Query(ctx, `SELECT key, version, wrapped_dek, kek_id FROM secret_versions
			WHERE kek_id <> $1 AND state <> 3
			ORDER BY key, version LIMIT $2 FOR UPDATE SKIP LOCKED`, primaryID, limit)
		if err != nil {
			return err
		}
		type versionRow struct {
			key     string
			version int64
			sealed  Sealed
		}
		versions, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (versionRow, error) {
			var v versionRow
			err := r.Scan(&v.key, &v.version, &v.sealed.WrappedDEK, &v.sealed.KEKID)
			return v, err
		})
		if err != nil {
			return err
		}
		b := &pgx.Batch{}
		for _, v := range versions {
			out, err := rewrapped(primaryID, v.sealed, rewrap)
			if err != nil {
				return fmt.Errorf("re-wrap data key of %s version %d: %w", v.key, v.version, err)
			}
			b.Queue(`UPDATE secret_versions SET wrapped_dek = $3, kek_id = $4 WHERE key = $1 AND version = $2`,
				v.key, v.version, out.WrappedDEK, out.KEKID)
		}
		if left := limit - len(versions); left > 0 {
			rows, err := tx.Query(ctx, `SELECT name, wrapped_dek, kek_id FROM service_keys
				WHERE kek_id <> $1 ORDER BY name LIMIT $2 FOR UPDATE SKIP LOCKED`, primaryID, left)
			if err != nil {
				return err
			}
			type keyRow struct {
				name   string
				sealed Sealed
			}
			keys, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (keyRow, error) {
				var k keyRow
				err := r.Scan(&k.name, &k.sealed.WrappedDEK, &k.sealed.KEKID)
				return k, err
			})
			if err != nil {
				return err
			}
			for _, k := range keys {
				out, err := rewrapped(primaryID, k.sealed, rewrap)
				if err != nil {
					return fmt.Errorf("re-wrap data key of service key %s: %w", k.name, err)
				}
				b.Queue(`UPDATE service_keys SET wrapped_dek = $2, kek_id = $3 WHERE name = $1`,
					k.name, out.WrappedDEK, out.KEKID)
			}
		}
		if b.Len() == 0 {
			return nil
		}
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return err
		}
		n = b.Len()
		return nil
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// rewrapped calls rewrap on a row's wrapped data key (the ciphertext is not
// needed to re-wrap it and is not loaded) and checks the result.
func rewrapped(primaryID string, in Sealed, rewrap func(Sealed) (Sealed, error)) (Sealed, error) {
	out, err := rewrap(in)
	if err != nil {
		return Sealed{}, err
	}
	if out.KEKID != primaryID || len(out.WrappedDEK) == 0 {
		return Sealed{}, fmt.Errorf("re-wrapped under %q, want %q", out.KEKID, primaryID)
	}
	return out, nil
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
