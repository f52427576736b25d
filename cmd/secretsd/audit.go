package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/orient-bot/secrets/server/auditlog"
	"github.com/orient-bot/secrets/server/store"
)

const auditUsage = `Usage:
  secretsd audit verify [--file EXPORT] [--public-key BASE64]
      walk the audit hash chain (DATABASE_URL, or an export file) and its
      signed checkpoints; exits 1 unless the log is intact
  secretsd audit export [--out FILE]
      write the chain (head, checkpoints, events with hashes) as JSON lines

Without DATABASE_URL both use the embedded default's database in
--data-dir (SECRETS_DATA_DIR, .secrets-data): a running secretsd's, or the
cluster started for the command.

Checkpoint signatures are checked with --public-key, or with the public half
of --audit-signing-key / SECRETS_AUDIT_SIGNING_KEY, or (embedded default) of
the data directory's audit-signing.key.
`

func runAudit(ctx context.Context, databaseURL, dataDir, signingKey string, log *slog.Logger, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(os.Stderr, auditUsage)
		if len(args) == 0 {
			return errors.New("audit: verify or export?")
		}
		return nil
	}
	switch args[0] {
	case "verify", "export":
	default:
		return fmt.Errorf("audit: unknown command %q (see secretsd audit -h)", args[0])
	}
	fs := flag.NewFlagSet("secretsd audit "+args[0], flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), auditUsage) }
	file := fs.String("file", "", "verify this export instead of the database")
	out := fs.String("out", "", "export to this file (default: standard output)")
	pubFlag := fs.String("public-key", "", "checkpoint verification key (base64 of 32 bytes)")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	embeddedKey := filepath.Join(dataDir, "audit-signing.key")
	if _, err := os.Stat(embeddedKey); databaseURL == "" && signingKey == "" && err == nil {
		signingKey = embeddedKey
	}
	var pub ed25519.PublicKey
	switch {
	case *pubFlag != "":
		var err error
		if pub, err = auditlog.ParsePublicKey(*pubFlag); err != nil {
			return err
		}
	case signingKey != "":
		s, err := auditlog.LoadSigner(signingKey)
		if err != nil {
			return err
		}
		pub = s.Public()
	default:
		log.Warn("no public key: signed checkpoints are not checked, so a rewrite of the whole chain would go unseen")
	}
	if args[0] == "verify" && *file != "" {
		f, err := os.Open(*file)
		if err != nil {
			return err
		}
		defer f.Close()
		return report(auditlog.VerifyExport(f, pub))
	}
	if databaseURL == "" {
		dsn, stop, err := embeddedDatabase(ctx, dataDir, log)
		if err != nil {
			return fmt.Errorf("audit: %w", err)
		}
		defer stop()
		databaseURL = dsn
	}
	st, err := store.Open(ctx, databaseURL, store.Options{Logger: log})
	if err != nil {
		return err
	}
	defer st.Close()
	l := &auditlog.Log{Store: st, Public: pub}
	switch args[0] {
	case "verify":
		began := time.Now()
		res, err := l.Verify(ctx)
		if err == nil {
			log.Info("audit chain walked", "events", res.Events, "elapsed", time.Since(began).Round(time.Millisecond))
		}
		return report(res, err)
	case "export":
		w := io.Writer(os.Stdout)
		if *out != "" {
			f, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
			if err != nil {
				return err
			}
			defer f.Close()
			w = f
		}
		n, err := l.Export(ctx, w, func(n int64) { fmt.Fprintf(os.Stderr, "\rexported %d events", n) })
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "\rexported %d events\n", n)
		return nil
	}
	return fmt.Errorf("audit: unknown command %q", args[0])
}

func report(res auditlog.Result, err error) error {
	if err != nil {
		return err
	}
	if res.Intact {
		fmt.Printf("intact up to sequence %d (%d events, %d signed checkpoints matched)\n", res.VerifiedThrough, res.Events, res.Checkpoints)
		return nil
	}
	fmt.Printf("NOT INTACT: first bad sequence %d: %s (verified through %d)\n", res.FirstBad, res.Reason, res.VerifiedThrough)
	return errors.New("audit log not intact")
}
