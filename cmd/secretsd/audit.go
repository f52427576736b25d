package main

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/orient-bot/secrets/server/auditlog"
	"github.com/orient-bot/secrets/server/store"
)

const auditUsage = `Usage:
  secretsd audit verify [--full] [--archives URL] [--file EXPORT] [--checkpoints URL] [--public-key BASE64]... [--audit-signing-key FILE]
      walk the audit hash chain (DATABASE_URL, or an export file), its
      signed checkpoints, and the external checkpoints at URL (every one
      must match, and the chain must reach the newest); exits 1 unless the
      log is intact. By default only the events after the last verified
      point (a signed checkpoint the anchor holds too, recorded by a
      verification that held the signing key) are walked; --full walks the
      whole table; --archives URL also verifies every archived segment
      (signature, digest, links, events) and the table after them as one
      chain, naming a missing, reordered or altered segment
  secretsd audit export [--out FILE]
      write the chain (head, checkpoints, events with hashes) as JSON lines
  secretsd audit prune --archives URL [--older-than DURATION] [--dry-run] [--audit-signing-key FILE]
      archive audit partitions older than DURATION (default: --audit-retention)
      as signed segments at URL, read them back, then drop them; needs a
      DATABASE_URL role with the retention privilege (a member of
      secrets_retention) and the signing key
  secretsd audit public-key [--audit-signing-key FILE]
      print the signing key's public half (base64), for --public-key and
      --audit-public-keys

Checkpoint signatures are checked with every --public-key (repeat it, or
separate keys with commas: the current signing key and the ones it
replaced), or with the public half of --audit-signing-key /
SECRETS_AUDIT_SIGNING_KEY. --checkpoints defaults to --audit-checkpoint-url
(SECRETS_AUDIT_CHECKPOINT_URL); without external checkpoints the chain is
only self-attested, and the verdict says so. --archives defaults to
--audit-archive-url (SECRETS_AUDIT_ARCHIVE_URL) for prune only.

Without DATABASE_URL both use the embedded default's database in
--data-dir (SECRETS_DATA_DIR, .secrets-data): a running secretsd's, or the
cluster started for the command; its audit-signing.key and
audit-checkpoints are then the defaults of --audit-signing-key and
--checkpoints.
`

// keyList is a repeatable, comma-separated flag.
type keyList []string

func (k *keyList) String() string { return strings.Join(*k, ",") }
func (k *keyList) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*k = append(*k, p)
		}
	}
	return nil
}

func runAudit(ctx context.Context, databaseURL, dataDir, signingKey, checkpointURL, archiveURL string, log *slog.Logger, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(os.Stderr, auditUsage)
		if len(args) == 0 {
			return errors.New("audit: verify or export?")
		}
		return nil
	}
	if databaseURL == "" {
		// The embedded default keeps its signing key and external
		// checkpoints in its data directory.
		if key := filepath.Join(dataDir, "audit-signing.key"); signingKey == "" && fileExists(key) {
			signingKey = key
		}
		if dir, err := filepath.Abs(filepath.Join(dataDir, "audit-checkpoints")); err == nil && checkpointURL == "" && fileExists(dir) {
			checkpointURL = "file://" + dir
		}
	}
	fs := flag.NewFlagSet("secretsd audit "+args[0], flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), auditUsage) }
	file := fs.String("file", "", "verify this export instead of the database")
	out := fs.String("out", "", "export to this file (default: standard output)")
	var pubFlags keyList
	fs.Var(&pubFlags, "public-key", "checkpoint verification key (base64 of 32 bytes); repeat or separate with commas")
	fs.StringVar(&signingKey, "audit-signing-key", signingKey, "signing key file whose public half verifies checkpoints")
	fs.StringVar(&checkpointURL, "checkpoints", checkpointURL, "external checkpoints (gocloud.dev blob URL: file://, s3://, gs://, azblob://)")
	full := fs.Bool("full", false, "verify: walk every event in the table, not only those after the last verified point")
	archives := fs.String("archives", "", "verify: also verify the archived segments at this blob URL; prune: archive to it")
	var olderThan retentionFlag
	fs.Var(&olderThan, "older-than", "prune: archive and drop partitions older than this (e.g. 90d; default: SECRETS_AUDIT_RETENTION)")
	dryRun := fs.Bool("dry-run", false, "prune: list the partitions that are due, change nothing")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("audit %s: unexpected argument %q", args[0], fs.Arg(0))
	}
	if args[0] == "public-key" {
		if signingKey == "" {
			return errors.New("audit public-key: needs --audit-signing-key")
		}
		s, err := auditlog.LoadSigner(signingKey)
		if err != nil {
			return err
		}
		fmt.Println(base64.StdEncoding.EncodeToString(s.Public()))
		return nil
	}
	var pubs []ed25519.PublicKey
	for _, k := range pubFlags {
		p, err := auditlog.ParsePublicKey(k)
		if err != nil {
			return err
		}
		pubs = append(pubs, p)
	}
	if signingKey != "" {
		s, err := auditlog.LoadSigner(signingKey)
		if err != nil {
			return err
		}
		pubs = append(pubs, s.Public())
	}
	if len(pubs) == 0 {
		log.Warn("no public key: signed checkpoints are not checked, so a rewrite of the whole chain would go unseen")
	}
	checks := auditlog.Checks{Keys: auditlog.NewKeys(pubs...)}
	var anchor *auditlog.Anchor
	if checkpointURL != "" && args[0] == "verify" {
		var err error
		if anchor, err = auditlog.OpenAnchor(ctx, checkpointURL); err != nil {
			return err
		}
		defer anchor.Close()
	}
	if args[0] == "verify" && *file != "" {
		f, err := os.Open(*file)
		if err != nil {
			return err
		}
		defer f.Close()
		if anchor != nil {
			checks.Anchored = true
			if checks.External, err = anchor.List(ctx); err != nil {
				return err
			}
		}
		return report(auditlog.VerifyExport(f, checks))
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
	l := &auditlog.Log{Store: st, Keys: checks.Keys, Anchor: anchor}
	if signingKey != "" {
		// A verification that holds the key records its progress.
		if l.Signer, err = auditlog.LoadSigner(signingKey); err != nil {
			return err
		}
	}
	switch args[0] {
	case "verify":
		began := time.Now()
		var res auditlog.Result
		switch {
		case *archives != "":
			a, err := auditlog.OpenArchive(ctx, *archives)
			if err != nil {
				return err
			}
			defer a.Close()
			res, err = l.VerifyArchives(ctx, a, func(segment string, n int64) {
				fmt.Fprintf(os.Stderr, "\rverified %s: %d events", segment, n)
			})
			fmt.Fprintln(os.Stderr)
			if err != nil {
				return err
			}
		case *full:
			res, err = l.Verify(ctx)
		default:
			res, err = l.VerifyIncremental(ctx)
		}
		if err == nil {
			log.Info("audit chain walked", "events", res.Events, "segments", res.Segments, "after", res.From, "elapsed", time.Since(began).Round(time.Millisecond))
		}
		return report(res, err)
	case "prune":
		keep := time.Duration(olderThan)
		if keep == 0 {
			var err error
			if keep, err = parseRetention(env("SECRETS_AUDIT_RETENTION", "0")); err != nil {
				return err
			}
		}
		if *archives == "" {
			*archives = archiveURL
		}
		return runPrune(ctx, st, l.Signer, checks.Keys, *archives, keep, *dryRun)
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
	fmt.Println(res.Summary())
	if !res.Intact {
		return errors.New("audit log not intact")
	}
	return nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
