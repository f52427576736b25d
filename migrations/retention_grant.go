package migrations

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// GrantRetention makes role a member of the retention role, so that it may
// archive and drop audit partitions (the embedded default does this for its
// service role when retention is configured; with DATABASE_URL it is the
// operator's GRANT).
func GrantRetention(ctx context.Context, ownerURL, retentionRole, role string) error {
	if !roleName.MatchString(retentionRole) || !roleName.MatchString(role) {
		return fmt.Errorf("retention grant: bad role name")
	}
	cfg, err := pgxConfig(ownerURL)
	if err != nil {
		return err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("retention grant: connect: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `GRANT `+pgx.Identifier{retentionRole}.Sanitize()+` TO `+pgx.Identifier{role}.Sanitize()); err != nil {
		return fmt.Errorf("retention grant: %w", err)
	}
	return nil
}
