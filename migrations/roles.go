package migrations

import (
	"context"
	"errors"
	"fmt"
	"regexp"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DefaultServiceRole is the role the service connects as when migrate is
// not told otherwise.
const DefaultServiceRole = "secrets_service"

var roleName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// serviceGrants are the tables the service may only read and append to,
// and the privileges it gets on them: the audit log, its intake and its
// checkpoints are never updated or deleted (intake events leave only by
// being chained, through audit_integrate), the head only moves forward (a
// trigger checks it), the partition catalog and the migration history are
// read-only. audit_events keeps INSERT for replicas of the previous
// release, which chain their events themselves under the head lock (its
// triggers refuse an insert that does not extend the chain from the head).
// audit_append_state is the chain's append cursor, written only by those
// triggers: the service could otherwise point it anywhere.
var serviceGrants = []struct{ table, privileges string }{
	{"audit_events", "SELECT, INSERT"},
	{"audit_intake", "SELECT, INSERT"},
	{"audit_checkpoints", "SELECT, INSERT"},
	{"audit_head", "SELECT, UPDATE (sequence, hash)"},
	{"audit_partitions", "SELECT"},
	{"audit_partitioning", "SELECT"},
	{"audit_verified", "SELECT, INSERT"},
	{"audit_append_state", "SELECT"},
	{"goose_db_version", "SELECT"},
}

// serviceFunctions are the SECURITY DEFINER functions the service may call:
// they do, as the owner, the one thing each is for.
var serviceFunctions = []string{
	"audit_integrate(bigint[], bytea[], bigint, bytea)",
	"audit_ensure_partitions(timestamptz, interval, timestamptz)",
	"audit_sequenced_through()",
}

// auditPartitionsSQL lists audit_events' partitions: the service gets no
// privilege on them (it reaches the rows through the parent only).
const auditPartitionsSQL = `SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
	WHERE i.inhparent = to_regclass('audit_events')`

// EnsureServiceRole creates the service role if it is missing (LOGIN, no
// password: set one, or another authentication method) and resets its
// privileges in the database at ownerURL to exactly what the service needs:
// data tables read-write, the audit tables as serviceGrants says, nothing
// that changes the schema or a trigger. It refuses a role that is a
// superuser, or the tables' owner or a member of it (who could disable the
// triggers). Run it as the owner after every migration (secretsd migrate
// does), so tables that later migrations add are granted too. It reports
// whether it created the role.
func EnsureServiceRole(ctx context.Context, ownerURL, role string) (bool, error) {
	if !roleName.MatchString(role) {
		return false, fmt.Errorf("service role %q: use lowercase letters, digits and _", role)
	}
	cfg, err := pgxConfig(ownerURL)
	if err != nil {
		return false, err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return false, fmt.Errorf("service role: connect: %w", err)
	}
	defer conn.Close(ctx)
	id := pgx.Identifier{role}.Sanitize()
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)`, role).Scan(&exists); err != nil {
		return false, fmt.Errorf("service role: %w", err)
	}
	created := false
	if !exists {
		if _, err := conn.Exec(ctx, `CREATE ROLE `+id+` LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS`); err != nil {
			var pe *pgconn.PgError
			if errors.As(err, &pe) && pe.Code == "42501" {
				return false, fmt.Errorf("service role %s does not exist and this role may not create it: CREATE ROLE %s LOGIN PASSWORD '…' as an administrator, then run migrate again", role, id)
			}
			return false, fmt.Errorf("service role: create: %w", err)
		}
		created = true
	}
	info, err := roleInfo(ctx, conn, role)
	if err != nil {
		return false, err
	}
	if info.Superuser || info.Owner {
		return false, fmt.Errorf("service role %s is a superuser or the tables' owner (or a member of it): it could rewrite the audit log; use a role of its own", role)
	}
	// CONNECT is PUBLIC's by default; an owner of the tables that does not
	// own the database may not grant it, which is fine then.
	var db string
	if err := conn.QueryRow(ctx, `SELECT current_database()`).Scan(&db); err != nil {
		return false, err
	}
	if _, err := conn.Exec(ctx, `GRANT CONNECT ON DATABASE `+pgx.Identifier{db}.Sanitize()+` TO `+id); err != nil {
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "42501" {
			return false, fmt.Errorf("service role: grant connect: %w", err)
		}
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return false, err
	}
	defer tx.Rollback(ctx)
	stmts := []string{
		`GRANT USAGE ON SCHEMA public TO ` + id,
		// The SECURITY DEFINER functions resolve names in public: a role
		// that could create there could plant an overload.
		`REVOKE CREATE ON SCHEMA public FROM ` + id,
		`REVOKE ALL ON ALL TABLES IN SCHEMA public FROM ` + id,
		`GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO ` + id,
		`GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO ` + id,
	}
	for _, g := range serviceGrants {
		stmts = append(stmts, `REVOKE ALL ON `+g.table+` FROM `+id, `GRANT `+g.privileges+` ON `+g.table+` TO `+id)
	}
	for _, f := range serviceFunctions {
		stmts = append(stmts, `GRANT EXECUTE ON FUNCTION `+f+` TO `+id)
	}
	partitions, err := tableNames(ctx, tx, auditPartitionsSQL)
	if err != nil {
		return false, err
	}
	for _, p := range partitions {
		stmts = append(stmts, `REVOKE ALL ON `+p+` FROM `+id)
	}
	for _, q := range stmts {
		if _, err := tx.Exec(ctx, q); err != nil {
			return false, fmt.Errorf("service role: %s: %w", q, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return false, err
	}
	// Check what the role can do, PUBLIC's grants included.
	var canCreate bool
	if err := conn.QueryRow(ctx, `SELECT has_schema_privilege($1, 'public', 'CREATE')`, role).Scan(&canCreate); err != nil {
		return false, err
	}
	if canCreate {
		return false, fmt.Errorf("service role %s may CREATE in schema public (granted to PUBLIC, as before PostgreSQL 15?): REVOKE CREATE ON SCHEMA public FROM PUBLIC", role)
	}
	checked := make([]string, 0, len(serviceGrants)+len(partitions))
	for _, g := range serviceGrants {
		checked = append(checked, g.table)
	}
	for _, table := range append(checked, partitions...) {
		for _, p := range []string{"UPDATE", "DELETE", "TRUNCATE", "TRIGGER", "REFERENCES"} {
			if p == "UPDATE" && table == "audit_head" {
				continue
			}
			var has bool
			if err := conn.QueryRow(ctx, `SELECT has_table_privilege($1, $2, $3)`, role, table, p).Scan(&has); err != nil {
				return false, err
			}
			if has {
				return false, fmt.Errorf("service role %s still has %s on %s (granted to PUBLIC or through a group?): revoke it", role, p, table)
			}
		}
	}
	return created, nil
}

func tableNames(ctx context.Context, tx pgx.Tx, query string) ([]string, error) {
	rows, err := tx.Query(ctx, query)
	if err != nil {
		return nil, fmt.Errorf("service role: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("service role: %w", err)
	}
	for i, n := range names {
		names[i] = pgx.Identifier{n}.Sanitize()
	}
	return names, nil
}

// RoleInfo says how privileged a role is in the service's database.
type RoleInfo struct {
	Name      string
	Superuser bool
	// Owner: the role owns the audit log's table, or inherits from its
	// owner, so it could disable the append-only triggers.
	Owner bool
	// Schema: the audit log's table exists (a fresh database has none; the
	// role that creates it becomes its owner).
	Schema bool
}

// Privileged reports whether the role could rewrite the audit log.
func (r RoleInfo) Privileged() bool { return r.Superuser || r.Owner || !r.Schema }

// CurrentRole describes the role connString connects as.
func CurrentRole(ctx context.Context, connString string) (RoleInfo, error) {
	cfg, err := pgxConfig(connString)
	if err != nil {
		return RoleInfo{}, err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return RoleInfo{}, fmt.Errorf("database: connect: %w", err)
	}
	defer conn.Close(ctx)
	var name string
	if err := conn.QueryRow(ctx, `SELECT current_user`).Scan(&name); err != nil {
		return RoleInfo{}, err
	}
	return roleInfo(ctx, conn, name)
}

func roleInfo(ctx context.Context, conn *pgx.Conn, role string) (RoleInfo, error) {
	info := RoleInfo{Name: role}
	err := conn.QueryRow(ctx, `SELECT r.rolsuper,
			COALESCE(pg_has_role(r.oid, c.relowner, 'USAGE'), false), c.oid IS NOT NULL
		FROM pg_roles r LEFT JOIN pg_class c ON c.oid = to_regclass('audit_events')
		WHERE r.rolname = $1`, role).Scan(&info.Superuser, &info.Owner, &info.Schema)
	if err != nil {
		return info, fmt.Errorf("role %s: %w", role, err)
	}
	return info, nil
}
