package migrations_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/orient-bot/secrets/internal/testdb"
)

// TestServiceRoleInsertsOnlyExtendTheChain: the service role keeps INSERT
// on audit_events (for the previous release's appends), but an event must
// extend the chain from its head: numbered 0 or below, past the next one,
// a duplicate of a chained one, or left past the head at commit, it is
// refused. Both orders the previous release appends in (events then head;
// head then events, in one statement) and audit_integrate still work.
func TestServiceRoleInsertsOnlyExtendTheChain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	owner := testdb.New(t)
	svc, err := pgx.Connect(ctx, testdb.ServiceURL(t, owner))
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close(ctx)
	const ins = `INSERT INTO audit_events (sequence, time, actor, action, key, outcome, prev_hash, hash)
		VALUES ($1, now(), 'mallory', 'AccessSecretVersion', 'FORGED', 'OK', '\x00', '\x00')`
	head := func() int64 {
		t.Helper()
		var h int64
		if err := svc.QueryRow(ctx, `SELECT sequence FROM audit_head`).Scan(&h); err != nil {
			t.Fatal(err)
		}
		return h
	}
	refused := func(what string, err error) {
		t.Helper()
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "23514" {
			t.Errorf("%s: %v, want SQLSTATE 23514", what, err)
		}
	}
	// The locked path: lock the head, insert the next events, move the head.
	locked := func(n int) error {
		return pgx.BeginFunc(ctx, svc, func(tx pgx.Tx) error {
			var h int64
			if err := tx.QueryRow(ctx, `SELECT sequence FROM audit_head FOR UPDATE`).Scan(&h); err != nil {
				return err
			}
			for i := 1; i <= n; i++ {
				if _, err := tx.Exec(ctx, ins, h+int64(i)); err != nil {
					return err
				}
			}
			_, err := tx.Exec(ctx, `UPDATE audit_head SET sequence = $1, hash = $2`, h+int64(n), []byte{byte(h + int64(n))})
			return err
		})
	}
	if err := locked(3); err != nil {
		t.Fatalf("previous release, locked path: %v", err)
	}
	// The one-trip path: the head moves first, in the same statement.
	h := head()
	tag, err := svc.Exec(ctx, `WITH moved AS (UPDATE audit_head SET sequence = $1, hash = '\x09' WHERE sequence = $2 RETURNING 1)
		INSERT INTO audit_events (sequence, time, actor, action, key, outcome, prev_hash, hash)
		SELECT s, now(), 'old', 'AccessSecretVersion', 'K', 'OK', '\x00', '\x00' FROM unnest($3::bigint[]) AS s
		WHERE EXISTS (SELECT FROM moved)`, h+2, h, []int64{h + 1, h + 2})
	if err != nil || tag.RowsAffected() != 2 {
		t.Fatalf("previous release, one trip: %v (%d rows)", err, tag.RowsAffected())
	}
	// audit_integrate.
	if _, err := svc.Exec(ctx, `INSERT INTO audit_intake (actor, action, outcome) VALUES ('a', 'AccessSecretVersion', 'OK')`); err != nil {
		t.Fatal(err)
	}
	var hash []byte
	if err := svc.QueryRow(ctx, `SELECT sequence, hash FROM audit_head`).Scan(&h, &hash); err != nil {
		t.Fatal(err)
	}
	var moved int64
	if err := svc.QueryRow(ctx, `SELECT head_sequence FROM audit_integrate(ARRAY(SELECT id FROM audit_intake), ARRAY['\x0a']::bytea[], $1, $2)`,
		h, hash).Scan(&moved); err != nil || moved != h+1 {
		t.Fatalf("audit_integrate: head %d, %v", moved, err)
	}

	h = head()
	for _, seq := range []int64{0, -7, h + 1000, 2, h} {
		_, err := svc.Exec(ctx, ins, seq)
		refused(fmt.Sprintf("an event numbered %d with the head at %d", seq, h), err)
	}
	_, err = svc.Exec(ctx, `INSERT INTO audit_events (sequence, time, actor, action, key, outcome)
		SELECT s, now(), 'mallory', 'A', 'K', 'OK' FROM unnest($1::bigint[]) AS s`, []int64{h + 1, h + 1})
	refused("the next event twice in one statement", err)
	_, err = svc.Exec(ctx, `INSERT INTO audit_events (sequence, time, actor, action, key, outcome)
		SELECT s, now(), 'mallory', 'A', 'K', 'OK' FROM unnest($1::bigint[]) AS s`, []int64{h + 1, h + 3})
	refused("the next events with a gap", err)
	// The next event, but the head never moves over it: refused at commit.
	_, err = svc.Exec(ctx, ins, h+1)
	refused("the next event without moving the head", err)
	// Inside a transaction the cursor continues from the events inserted.
	err = pgx.BeginFunc(ctx, svc, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, ins, h+1); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, ins, h+1)
		return err
	})
	refused("the same event twice in one transaction", err)
	if err := locked(2); err != nil {
		t.Fatalf("locked path after the refusals: %v", err)
	}
	var n, lo, hi int64
	if err := svc.QueryRow(ctx, `SELECT count(*), min(sequence), max(sequence) FROM audit_events`).Scan(&n, &lo, &hi); err != nil {
		t.Fatal(err)
	}
	if h := head(); n != h || lo != 1 || hi != h {
		t.Errorf("audit_events holds %d events, %d to %d, with the head at %d: want exactly 1 to the head", n, lo, hi, h)
	}
}
