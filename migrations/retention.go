package migrations

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DefaultRetentionRole is the group role that may archive and drop audit
// partitions.
const DefaultRetentionRole = "secrets_retention"

// RetentionFunctions are the SECURITY DEFINER functions only the retention
// role may call: together they remove audit events, after archiving them.
var RetentionFunctions = []string{
	"audit_record_archive(text, text, bytea, bigint, bigint)",
	"audit_drop_partition(text)",
}

// retentionReads are the tables the retention job reads.
var retentionReads = []string{"audit_events", "audit_head", "audit_checkpoints", "audit_partitions"}

// EnsureRetentionRole creates the retention group role if it is missing
// (NOLOGIN: it is granted to the role that runs retention, never connected
// as) and grants it EXECUTE on RetentionFunctions and nothing else in the
// database at ownerURL. It refuses a role that can log in, is a superuser,
// or is (a member of) the tables' owner. It reports whether it created the
// role. Granting the role to the service role (GRANT secrets_retention TO
// secrets_service) is the operator's decision, not migrate's.
func EnsureRetentionRole(ctx context.Context, ownerURL, role string) (bool, error) {
	if !roleName.MatchString(role) {
		return false, fmt.Errorf("retention role %q: use lowercase letters, digits and _", role)
	}
	cfg, err := pgxConfig(ownerURL)
	if err != nil {
		return false, err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return false, fmt.Errorf("retention role: connect: %w", err)
	}
	defer conn.Close(ctx)
	id := pgx.Identifier{role}.Sanitize()
	created := false
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)`, role).Scan(&exists); err != nil {
		return false, fmt.Errorf("retention role: %w", err)
	}
	if !exists {
		_, err := conn.Exec(ctx, `CREATE ROLE `+id+` NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS`)
		var pe *pgconn.PgError
		switch {
		case errors.As(err, &pe) && (pe.Code == "42710" || pe.Code == "23505"): // created meanwhile by a concurrent migrate
		case errors.As(err, &pe) && pe.Code == "42501":
			return false, fmt.Errorf("retention role %s does not exist and this role may not create it: CREATE ROLE %s NOLOGIN as an administrator, then run migrate again", role, id)
		case err != nil:
			return false, fmt.Errorf("retention role: create: %w", err)
		default:
			created = true
		}
	}
	info, err := roleInfo(ctx, conn, role)
	if err != nil {
		return false, err
	}
	var login bool
	if err := conn.QueryRow(ctx, `SELECT rolcanlogin FROM pg_roles WHERE rolname = $1`, role).Scan(&login); err != nil {
		return false, err
	}
	if info.Superuser || info.Owner || login {
		return false, fmt.Errorf("retention role %s can log in, is a superuser or is the tables' owner: use a NOLOGIN role of its own", role)
	}
	stmts := []string{`GRANT USAGE ON SCHEMA public TO ` + id}
	for _, f := range RetentionFunctions {
		stmts = append(stmts, `GRANT EXECUTE ON FUNCTION `+f+` TO `+id)
	}
	// What the job reads, so that an operator's login role needs only this
	// role (secretsd audit prune): read-only, as the service has it.
	for _, table := range retentionReads {
		stmts = append(stmts, `GRANT SELECT ON `+table+` TO `+id)
	}
	stmts = append(stmts, `GRANT EXECUTE ON FUNCTION audit_sequenced_through() TO `+id)
	for _, q := range stmts {
		if _, err := conn.Exec(ctx, q); err != nil {
			return false, fmt.Errorf("retention role: %s: %w", q, err)
		}
	}
	return created, nil
}
