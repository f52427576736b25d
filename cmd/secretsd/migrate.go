package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/orient-bot/secrets/migrations"
)

// runMigrate is `secretsd migrate [--dry-run]`.
func runMigrate(ctx context.Context, dsn string, log *slog.Logger, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("secretsd migrate", flag.ContinueOnError)
	dryRun := fs.Bool("dry-run", false, "print the migrations that would run (and their SQL) without changing the database")
	serviceRole := fs.String("service-role", env("SECRETS_SERVICE_ROLE", migrations.DefaultServiceRole), "the role the service connects as (created if missing, granted only what it needs)")
	retentionRole := fs.String("retention-role", env("SECRETS_RETENTION_ROLE", migrations.DefaultRetentionRole), "the NOLOGIN group role that alone may archive and drop audit partitions (created if missing; GRANT it to the role that runs retention)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: secretsd migrate [--service-role NAME] [--retention-role NAME] [--dry-run]\n\nApplies the embedded migrations to DATABASE_URL (as the owner role), creates or checks the service and retention roles, and exits.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("migrate: unexpected argument %q", fs.Arg(0))
	}
	if dsn == "" {
		return errors.New("migrate needs DATABASE_URL (the embedded default migrates itself at start)")
	}
	mctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if !*dryRun {
		if err := migrations.Up(mctx, dsn); err != nil {
			return err
		}
		created, err := migrations.EnsureServiceRole(mctx, dsn, *serviceRole)
		if err != nil {
			return err
		}
		retCreated, err := migrations.EnsureRetentionRole(mctx, dsn, *retentionRole)
		if err != nil {
			return err
		}
		log.Info("migrations applied; service role ready", "role", *serviceRole, "created", created,
			"retention_role", *retentionRole, "retention_role_created", retCreated)
		if created {
			log.Warn("the service role was created without a password: set one (ALTER ROLE … PASSWORD) or another authentication method, and connect secretsd as it")
		}
		return nil
	}
	p, err := migrations.DryRun(mctx, dsn)
	if err != nil {
		return err
	}
	return printPlan(out, p)
}

// printPlan writes what a migration would do, for people: the state, then
// each pending file with its SQL.
func printPlan(out io.Writer, p migrations.Plan) error {
	fmt.Fprintf(out, "-- database: %d migrations applied", len(p.Applied))
	if n := len(p.Applied); n > 0 {
		fmt.Fprintf(out, " (newest %d)", p.Applied[n-1])
	}
	fmt.Fprintln(out)
	if len(p.Unknown) > 0 {
		fmt.Fprintf(out, "-- the database has migrations this binary does not know, applied by a newer release: %v (left alone)\n", p.Unknown)
	}
	if len(p.Missing) > 0 {
		fmt.Fprintf(out, "-- would fail: %v are older than the newest applied migration and were never applied\n", p.Missing)
		return fmt.Errorf("migrate: migrations %v would be applied out of order", p.Missing)
	}
	if len(p.Pending) == 0 {
		fmt.Fprintln(out, "-- nothing to apply: the database is up to date")
		return nil
	}
	fmt.Fprintf(out, "-- would apply %d migrations, in order, each in its own transaction:\n", len(p.Pending))
	for _, m := range p.Pending {
		fmt.Fprintf(out, "\n-- %s (version %d)\n%s\n", m.File, m.Version, m.Up)
	}
	return nil
}
