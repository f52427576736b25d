package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/orient-bot/secrets/server/auditlog"
	"github.com/orient-bot/secrets/server/store"
)

// runPrune is `secretsd audit prune`: the retention job, run once by an
// operator whose database role holds the retention privilege.
func runPrune(ctx context.Context, st *store.Store, signer *auditlog.Signer, keys auditlog.Keys, archiveURL string, keep time.Duration, dryRun bool) error {
	switch {
	case archiveURL == "":
		return errors.New("audit prune: needs --archives URL (or --audit-archive-url): partitions are archived there before they are dropped")
	case keep <= 0:
		return errors.New("audit prune: needs --older-than (e.g. 90d) or SECRETS_AUDIT_RETENTION")
	case signer == nil && !dryRun:
		return errors.New("audit prune: needs --audit-signing-key: archive segments are signed")
	}
	if !dryRun {
		ok, err := st.CanRetainAudit(ctx)
		if err != nil {
			return err
		}
		if !ok {
			return errors.New("audit prune: this DATABASE_URL role may not archive and drop audit partitions: connect as a role that is a member of secrets_retention (GRANT secrets_retention TO <role>)")
		}
	}
	a, err := auditlog.OpenArchive(ctx, archiveURL)
	if err != nil {
		return err
	}
	defer a.Close()
	r := &auditlog.Retention{Store: st, Archive: a, Signer: signer, Keys: keys, Keep: keep, DryRun: dryRun,
		Progress: func(p string, n int64) { fmt.Fprintf(os.Stderr, "\r%s: exported %d events", p, n) }}
	began := time.Now()
	res, err := r.Run(ctx)
	fmt.Fprintln(os.Stderr)
	if dryRun {
		for _, p := range res.Pending {
			fmt.Println("due:", p)
		}
		fmt.Printf("%d partitions are due (older than %v)\n", len(res.Pending), keep)
		return err
	}
	elapsed := time.Since(began)
	fmt.Printf("archived %d partitions (%d events; %d segments written, %d found written by an interrupted run) and dropped %d in %v",
		res.Recorded, res.Rows, res.Exported, res.Reused, res.Dropped, elapsed.Round(time.Millisecond))
	if res.Rows > 0 && elapsed > 0 {
		fmt.Printf(" (%.0f events/s)", float64(res.Rows)/elapsed.Seconds())
	}
	fmt.Println()
	return err
}
