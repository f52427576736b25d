package migrations_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/migrations"
)

// TestServiceRoleCannotRewriteAudit connects as the service role (as
// secretsd runs) and tries every way to change history: each statement
// fails, with the privilege error or the trigger's; what the service needs
// (reading, appending, moving the head forward) works.
func TestServiceRoleCannotRewriteAudit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	owner := testdb.New(t)
	admin, err := pgx.Connect(ctx, owner)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	// A short chain to attack, written as the service does.
	for _, q := range []string{
		// One transaction: an event may not stay past the head at commit.
		`INSERT INTO audit_events (sequence, time, actor, action, key, outcome, prev_hash, hash) VALUES (1, now(), 'a', 'PutSecret', 'K', 'OK', '', '\x01');
		UPDATE audit_head SET sequence = 1, hash = '\x01'`,
		`INSERT INTO audit_checkpoints (sequence, hash, time, key_id, signature) VALUES (1, '\x01', now(), 'k', '\x00')`,
	} {
		if _, err := admin.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	svc, err := pgx.Connect(ctx, testdb.ServiceURL(t, owner))
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close(ctx)
	var who string
	if err := svc.QueryRow(ctx, `SELECT current_user`).Scan(&who); err != nil || who != testdb.ServiceRole(t) {
		t.Fatalf("connected as %q (%v)", who, err)
	}
	const denied, raised = "42501", "P0001" // insufficient_privilege; the triggers' RAISE
	var partition string
	if err := admin.QueryRow(ctx, `SELECT tableoid::regclass::text FROM audit_events WHERE sequence = 1`).Scan(&partition); err != nil {
		t.Fatal(err)
	}
	forbidden := []struct{ sql, code string }{
		{`UPDATE audit_events SET actor = 'mallory' WHERE sequence = 1`, denied},
		{`DELETE FROM audit_events WHERE sequence = 1`, denied},
		{`TRUNCATE audit_events`, denied},
		{`ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_change`, denied},
		{`ALTER TABLE audit_events DISABLE TRIGGER ALL`, denied},
		{`DROP TRIGGER audit_events_no_change ON audit_events`, denied},
		{`ALTER TABLE audit_events OWNER TO CURRENT_USER`, denied},
		{`DROP TABLE audit_events`, denied},
		{`CREATE TRIGGER t BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION audit_append_only()`, denied},
		{`SET session_replication_role = replica`, denied},
		{`UPDATE audit_checkpoints SET hash = '\x02'`, denied},
		{`DELETE FROM audit_checkpoints`, denied},
		{`TRUNCATE audit_checkpoints`, denied},
		{`ALTER TABLE audit_checkpoints DISABLE TRIGGER ALL`, denied},
		{`DELETE FROM audit_head`, denied},
		{`TRUNCATE audit_head`, denied},
		{`ALTER TABLE audit_head DISABLE TRIGGER audit_head_forward`, denied},
		{`UPDATE audit_head SET sequence = 0, hash = ''`, raised},
		{`UPDATE audit_head SET hash = '\x02'`, raised},
		{`UPDATE audit_head SET chain_start = 1`, denied},
		// Only audit_integrate moves the sequencing time (a head set into
		// the future would stop the sequencer, or let retention take a
		// partition that can still receive events).
		{`UPDATE audit_head SET sequenced_at = 'infinity'`, denied},
		{`CREATE FUNCTION public.lag(bytea) RETURNS bytea LANGUAGE sql AS 'SELECT $1'`, denied},
		{`DELETE FROM goose_db_version`, denied},
		{`INSERT INTO goose_db_version (version_id, is_applied) VALUES (99999, true)`, denied},
		{`CREATE TABLE shadow (x int)`, denied},
		// The intake: events leave it only by being chained.
		{`DELETE FROM audit_intake`, denied},
		{`UPDATE audit_intake SET actor = 'mallory'`, denied},
		{`TRUNCATE audit_intake`, denied},
		// The partitions, reached directly rather than through the parent.
		{`DELETE FROM ` + partition, denied},
		{`UPDATE ` + partition + ` SET actor = 'mallory'`, denied},
		{`TRUNCATE ` + partition, denied},
		{`ALTER TABLE audit_events DETACH PARTITION ` + partition, denied},
		{`DROP TABLE ` + partition, denied},
		{`UPDATE audit_partitions SET state = 'dropped'`, denied},
		{`DELETE FROM audit_partitions`, denied},
		{`UPDATE audit_partitioning SET period = interval '1 hour'`, denied},
		// The append cursor is the triggers' alone.
		{`UPDATE audit_append_state SET next = 100`, denied},
		{`DELETE FROM audit_append_state`, denied},
		// audit_integrate refuses ids that are not in the intake.
		{`SELECT * FROM audit_integrate(ARRAY[424242]::bigint[], ARRAY['\x03']::bytea[], 1, '\x01')`, "40001"},
	}
	// A GRANT without the grant option "succeeds" with a warning and
	// grants nothing: the statements below run after it.
	_, _ = svc.Exec(ctx, `GRANT UPDATE, DELETE, TRUNCATE ON audit_events, audit_checkpoints TO CURRENT_USER`)
	for _, f := range forbidden {
		_, err := svc.Exec(ctx, f.sql)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != f.code {
			t.Errorf("%s: %v, want SQLSTATE %s", f.sql, err, f.code)
		}
	}
	allowed := []string{
		`SELECT count(*) FROM audit_events`,
		// The previous release's append: the next event and the head, in
		// one transaction (a multi-statement query is one).
		`INSERT INTO audit_events (sequence, time, actor, action, key, outcome, prev_hash, hash) VALUES (2, now(), 'a', 'AccessSecretVersion', 'K', 'OK', '\x01', '\x02');
		UPDATE audit_head SET sequence = 2, hash = '\x02' WHERE sequence = 1`,
		`INSERT INTO audit_checkpoints (sequence, hash, time, key_id, signature) VALUES (2, '\x02', now(), 'k', '\x00') ON CONFLICT (sequence) DO NOTHING`,
		`SELECT max(version_id) FROM goose_db_version`,
		`INSERT INTO audit_intake (actor, action, outcome) VALUES ('a', 'AccessSecretVersion', 'OK')`,
		`SELECT * FROM audit_integrate(ARRAY(SELECT id FROM audit_intake), ARRAY['\x03']::bytea[], 2, '\x02')`,
		`SELECT audit_ensure_partitions(now() + interval '2 days')`,
		`SELECT count(*) FROM audit_partitions`,
	}
	for _, q := range allowed {
		if _, err := svc.Exec(ctx, q); err != nil {
			t.Errorf("%s: %v", q, err)
		}
	}
	// Even the owner cannot move the sequencing time back or past the clock
	// (the trigger; the owner could drop it, which the external
	// checkpoints catch).
	for _, q := range []string{
		`UPDATE audit_head SET sequenced_at = now() + interval '1 day'`,
		`UPDATE audit_head SET sequenced_at = '-infinity'`,
	} {
		var pe *pgconn.PgError
		if _, err := admin.Exec(ctx, `UPDATE audit_head SET sequenced_at = now()`); err != nil {
			t.Fatal(err)
		}
		if _, err := admin.Exec(ctx, q); !errors.As(err, &pe) || pe.Code != raised {
			t.Errorf("owner: %s: %v, want SQLSTATE %s", q, err, raised)
		}
	}
	info, err := migrations.CurrentRole(ctx, testdb.ServiceURL(t, owner))
	if err != nil || info.Privileged() {
		t.Errorf("service role: %+v, %v", info, err)
	}
	if info, err := migrations.CurrentRole(ctx, owner); err != nil || !info.Privileged() || !info.Superuser {
		t.Errorf("owner role: %+v, %v", info, err)
	}
}

// TestEnsureServiceRoleRefusesPrivilegedRoles: migrate will not make a
// superuser or the owner the service role, nor keep extra grants.
func TestEnsureServiceRoleRefusesPrivilegedRoles(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	owner := testdb.New(t)
	if _, err := migrations.EnsureServiceRole(ctx, owner, "postgres"); err == nil || !strings.Contains(err.Error(), "superuser") {
		t.Errorf("postgres as the service role: %v", err)
	}
	if _, err := migrations.EnsureServiceRole(ctx, owner, "Robert'); DROP"); err == nil {
		t.Error("a malformed role name was accepted")
	}
	// A grant made by hand is taken back by the next migrate.
	admin, err := pgx.Connect(ctx, owner)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	role := testdb.ServiceRole(t)
	if _, err := admin.Exec(ctx, `GRANT UPDATE, DELETE, TRUNCATE ON audit_events TO `+pgx.Identifier{role}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	if _, err := migrations.EnsureServiceRole(ctx, owner, role); err != nil {
		t.Fatal(err)
	}
	var has bool
	if err := admin.QueryRow(ctx, `SELECT has_table_privilege($1, 'audit_events', 'DELETE')`, role).Scan(&has); err != nil || has {
		t.Errorf("DELETE on audit_events after migrate: %v, %v", has, err)
	}
}

// TestRetentionRole: migrate creates the retention group role (idempotent)
// and refuses one that can log in; only it may call the drop functions.
func TestRetentionRole(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	role := fmt.Sprintf("ret_test_%x", time.Now().UnixNano())
	login := role + "_login"
	// Roles are server-wide: dropped after the database (cleanups run
	// last-registered first).
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), testdb.Admin(t))
		if err == nil {
			_, _ = c.Exec(context.Background(), `DROP ROLE IF EXISTS `+login)
			_, _ = c.Exec(context.Background(), `DROP ROLE IF EXISTS `+role)
			c.Close(context.Background())
		}
	})
	owner := testdb.New(t)
	admin, err := pgx.Connect(ctx, owner)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if _, err := migrations.EnsureRetentionRole(ctx, owner, role); err != nil {
		t.Fatal(err)
	}
	if created, err := migrations.EnsureRetentionRole(ctx, owner, role); err != nil || created {
		t.Fatalf("second run: created %v, %v", created, err)
	}
	var can, svc bool
	if err := admin.QueryRow(ctx, `SELECT has_function_privilege($1, 'audit_drop_partition(text)', 'EXECUTE'),
		has_function_privilege($2, 'audit_drop_partition(text)', 'EXECUTE')`, role, testdb.ServiceRole(t)).Scan(&can, &svc); err != nil {
		t.Fatal(err)
	}
	if !can || svc {
		t.Errorf("audit_drop_partition: retention role %v, service role %v", can, svc)
	}
	if _, err := admin.Exec(ctx, `CREATE ROLE `+login+` LOGIN`); err != nil {
		t.Fatal(err)
	}
	if _, err := migrations.EnsureRetentionRole(ctx, owner, login); err == nil || !strings.Contains(err.Error(), "NOLOGIN") {
		t.Errorf("a login role as the retention role: %v", err)
	}
}
