package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5"
	_ "gocloud.dev/blob/fileblob" // file:// archives

	"github.com/orient-bot/secrets/migrations"
	"github.com/orient-bot/secrets/server/auditlog"
	"github.com/orient-bot/secrets/server/store"
)

// auditPhase measures the audit log's cost at scale (issue 17): bytes of
// database per audited read (the bench's own database, after the access
// phases), the size of a day's partition at the measured read rate, and,
// on a database of its own with synthetic access events in one-second
// partitions, how fast retention exports and how long verification takes,
// incremental and full, per million events. The quick run extrapolates
// from a smaller count, and says so.
func (b *bench) auditPhase(ctx context.Context) error {
	b.progress("audit: storage per audited read, retention export rate, verify time (incremental vs full)")
	st, err := store.Open(ctx, b.cluster.DSN, store.Options{})
	if err != nil {
		return err
	}
	bytes, events, err := st.AuditStorage(ctx)
	st.Close()
	if err != nil {
		return err
	}
	if events > 0 {
		per := float64(bytes) / float64(events)
		b.res.AuditBytesPerEvent = num1(per)
		b.res.AuditEventsMeasured = int(events)
		if r := b.res.AccessC16RPS; r != nil {
			b.res.AuditDayPartitionGiB = num3(per * *r * 86400 / (1 << 30))
		}
		b.progressf("  %d audit events take %d bytes (table and indexes): %.0f B per audited read", events, bytes, per)
	}
	n := 1_000_000
	if b.cfg.quick {
		n = 20_000
		b.note("audit verify and retention figures are extrapolated per million from 20,000 events (quick run)")
	}
	f, err := measureAudit(ctx, b.cluster.DSN, b.tmp, n, b.progressf)
	if err != nil {
		return err
	}
	b.res.AuditVerifyEvents = n
	b.res.AuditRetentionRowsPerS = num1(f.exportRowsPerS)
	b.res.AuditVerifyFullSPerM = num3(f.fullSPerM)
	b.res.AuditVerifyIncrementalS = num3(f.incrementalS)
	b.res.AuditVerifyIncrementalNew = f.incrementalNew
	b.res.AuditVerifyArchivesSPerM = num3(f.archivesSPerM)
	return nil
}

type auditFigures struct {
	exportRowsPerS float64
	fullSPerM      float64
	incrementalS   float64
	incrementalNew int
	archivesSPerM  float64
}

// measureAudit builds an audit log of n events in a database of its own on
// the cluster of adminDSN, then times a full verify, an incremental one
// after incrementalNew more events, the retention job archiving all but the
// newest partition, and a verify of archives plus table.
func measureAudit(ctx context.Context, adminDSN, tmp string, n int, progressf func(string, ...any)) (auditFigures, error) {
	var f auditFigures
	admin, err := pgx.Connect(ctx, adminDSN)
	if err != nil {
		return f, err
	}
	defer admin.Close(ctx)
	_, _ = admin.Exec(ctx, `DROP DATABASE IF EXISTS auditbench WITH (FORCE)`)
	if _, err := admin.Exec(ctx, `CREATE DATABASE auditbench`); err != nil {
		return f, err
	}
	defer admin.Exec(context.WithoutCancel(ctx), `DROP DATABASE IF EXISTS auditbench WITH (FORCE)`)
	dsn := adminDSN + " dbname=auditbench"
	if err := migrations.Up(ctx, dsn); err != nil {
		return f, err
	}
	owner, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return f, err
	}
	defer owner.Close(ctx)
	// Short partitions from now (the migration made a day-long one), long
	// enough that the events fill a few of them: the export rate is then
	// the rate of large partitions, as a day's are, not the fixed cost of
	// each partition's commits. The current store appends straight into
	// them (sequenced_at = the insert's clock), so they are created ahead
	// for the whole run.
	period, ahead := 30*time.Second, 20*time.Minute
	if n < 100_000 {
		period, ahead = 5*time.Second, 3*time.Minute
	}
	for _, q := range []string{
		`DO $$ DECLARE r record; BEGIN FOR r IN SELECT name FROM audit_partitions LOOP EXECUTE format('DROP TABLE %I', r.name); END LOOP; END $$`,
		`DELETE FROM audit_partitions`,
		`UPDATE audit_partitioning SET min_retention = interval '0'`,
		fmt.Sprintf(`SELECT audit_ensure_partitions(now() + interval '%d seconds', interval '%d seconds', now())`,
			int(ahead.Seconds()), int(period.Seconds())),
	} {
		if _, err := owner.Exec(ctx, q); err != nil {
			return f, err
		}
	}
	// The owner runs the bench (it may call the retention functions).
	st, err := store.Open(ctx, dsn, store.Options{})
	if err != nil {
		return f, err
	}
	defer st.Close()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	signer := auditlog.NewSigner(key)
	l := &auditlog.Log{Store: st, Signer: signer, Keys: auditlog.NewKeys(signer.Public())}
	appendN := func(count int) error {
		const group = 5_000
		for done := 0; done < count; done += group {
			events := make([]store.AuditEvent, min(group, count-done))
			for i := range events {
				events[i] = store.AuditEvent{Actor: "token:bench-reader", Action: "AccessSecretVersion", Key: fmt.Sprintf("KEY_%d", (done+i)%1000),
					Version: 1, Outcome: store.OutcomeOK, Peer: "127.0.0.1:51234", RequestID: fmt.Sprintf("req-%012d", done+i)}
			}
			if err := st.AppendAudit(ctx, events); err != nil {
				return err
			}
			// Chained as a server's sequencer would (none runs here).
			for {
				r, err := st.SequenceAudit(ctx, store.SequenceOptions{Limit: group})
				if err != nil {
					return err
				}
				if r.Events == 0 {
					break
				}
			}
			if (done/group)%4 == 3 { // a checkpoint every 20,000 events
				if _, err := l.Checkpoint(ctx); err != nil {
					return err
				}
			}
		}
		_, err := l.Checkpoint(ctx)
		return err
	}
	began := time.Now()
	if err := appendN(n); err != nil {
		return f, err
	}
	progressf("  appended %d events in %v", n, time.Since(began).Round(time.Millisecond))
	began = time.Now()
	res, err := l.Verify(ctx)
	if err != nil || !res.Intact {
		return f, fmt.Errorf("full verify: %v %s", err, res.Summary())
	}
	full := time.Since(began)
	f.fullSPerM = full.Seconds() / float64(res.Events) * 1e6
	progressf("  full verify: %d events in %v", res.Events, full.Round(time.Millisecond))
	f.incrementalNew = 10_000
	if err := appendN(f.incrementalNew); err != nil {
		return f, err
	}
	began = time.Now()
	res, err = l.VerifyIncremental(ctx)
	if err != nil || !res.Intact {
		return f, fmt.Errorf("incremental verify: %v %s", err, res.Summary())
	}
	f.incrementalS = time.Since(began).Seconds()
	progressf("  incremental verify: %d new events (of %d) in %.3fs", res.Events, n+f.incrementalNew, f.incrementalS)

	// Retention: everything but the newest partition, once the one that
	// holds the last events has ended.
	var end time.Time
	if err := owner.QueryRow(ctx, `SELECT to_time FROM audit_partitions WHERE from_time <= now() AND now() < to_time`).Scan(&end); err != nil {
		return f, err
	}
	time.Sleep(time.Until(end) + 100*time.Millisecond)
	if err := appendN(1); err != nil {
		return f, err
	}
	dir := filepath.Join(tmp, "audit-archive")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return f, err
	}
	a, err := auditlog.OpenArchive(ctx, (&url.URL{Scheme: "file", Path: dir}).String())
	if err != nil {
		return f, err
	}
	defer a.Close()
	began = time.Now()
	rr, err := (&auditlog.Retention{Store: st, Archive: a, Signer: signer, Keep: time.Millisecond}).Run(ctx)
	if err != nil {
		return f, err
	}
	el := time.Since(began)
	f.exportRowsPerS = float64(rr.Rows) / el.Seconds()
	progressf("  retention: %d events in %d segments exported, read back and dropped (%d partitions) in %v: %.0f rows/s",
		rr.Rows, rr.Exported, rr.Dropped, el.Round(time.Millisecond), f.exportRowsPerS)
	began = time.Now()
	res, err = l.VerifyArchives(ctx, a, nil)
	if err != nil || !res.Intact {
		return f, fmt.Errorf("verify with archives: %v %s", err, res.Summary())
	}
	el = time.Since(began)
	f.archivesSPerM = el.Seconds() / float64(res.Events) * 1e6
	progressf("  verify archives + table: %d events in %d segments in %v", res.Events, res.Segments, el.Round(time.Millisecond))
	return f, nil
}
