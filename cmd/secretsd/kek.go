package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/user"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/orient-bot/secrets/server/kek"
	"github.com/orient-bot/secrets/server/seal"
	"github.com/orient-bot/secrets/server/store"
)

const kekUsage = `secretsd kek manages the key-encryption keys (KEKs) that wrap the data keys.

Usage:
  secretsd kek status            how many data keys each KEK wraps
  secretsd kek rotate [flags]    re-wrap every data key under the primary KEK

Both need DATABASE_URL and SECRETS_KEK_URL (the same list the servers run
with: the new primary first, then the old KEKs). With the embedded default
(no DATABASE_URL), call the running server instead:
  grpcurl ... orient.secrets.v1.KeyService/RotateKEK   (POST /v1/kek:rotate)
  grpcurl ... orient.secrets.v1.KeyService/GetKEKStatus (GET /v1/kek)

rotate runs online, next to the serving replicas: small batches, each in its
own transaction; values are never decrypted and ciphertexts are not touched.
Interrupted (Ctrl-C, a crash, kill -9), it resumes where it stopped when run
again. Remove an old KEK from SECRETS_KEK_URL once status shows 0 for it.

Flags of rotate:
`

// runKEK runs `secretsd kek ...`.
func runKEK(ctx context.Context, databaseURL, kekURL string, kmsTimeout time.Duration, log *slog.Logger, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(os.Stderr, kekUsage)
		fs, _ := rotateFlags(os.Stderr)
		fs.PrintDefaults()
		if len(args) == 0 {
			return errors.New("kek needs a command: status or rotate")
		}
		return nil
	}
	switch args[0] {
	case "status", "rotate":
	default:
		return fmt.Errorf("unknown kek command %q (see secretsd kek -h)", args[0])
	}
	fs, opts := rotateFlags(os.Stderr)
	if args[0] == "status" {
		fs = flag.NewFlagSet("secretsd kek status", flag.ContinueOnError)
	}
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	// Out-of-range values are refused, not silently capped: a 5000 that
	// runs as 1000 would surprise whoever sized the transactions.
	if opts.BatchSize < 1 || opts.BatchSize > kek.MaxBatchSize {
		return fmt.Errorf("--batch-size must be between 1 and %d, got %d", kek.MaxBatchSize, opts.BatchSize)
	}
	if opts.Workers < 1 || opts.Workers > kek.MaxWorkers {
		return fmt.Errorf("--workers must be between 1 and %d, got %d", kek.MaxWorkers, opts.Workers)
	}
	if databaseURL == "" || kekURL == "" {
		return errors.New("kek needs DATABASE_URL and SECRETS_KEK_URL (with the embedded default, call the running " +
			"server's KeyService instead: POST /v1/kek:rotate, GET /v1/kek)")
	}
	urls, err := seal.ParseKEKURLs(kekURL)
	if err != nil {
		return err
	}
	keyring, err := seal.OpenKeyring(ctx, urls, seal.WithDEKCache(0), seal.WithKMSTimeout(kmsTimeout))
	if err != nil {
		return err
	}
	defer keyring.Close()
	st, err := store.Open(ctx, databaseURL, store.Options{MinMaxConns: int32(opts.Workers + 2), Logger: log})
	if err != nil {
		return err
	}
	defer st.Close()

	if args[0] == "status" {
		status, err := kek.Status(ctx, st, keyring)
		if err != nil {
			return err
		}
		printStatus(os.Stdout, status)
		return kek.CheckConfigured(ctx, st, keyring)
	}
	opts.Logger = log
	return rotate(ctx, st, keyring, *opts)
}

func rotateFlags(out io.Writer) (*flag.FlagSet, *kek.Options) {
	opts := &kek.Options{}
	fs := flag.NewFlagSet("secretsd kek rotate", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.IntVar(&opts.BatchSize, "batch-size", kek.DefaultBatchSize, fmt.Sprintf("data keys re-wrapped per transaction (at most %d)", kek.MaxBatchSize))
	fs.IntVar(&opts.Workers, "workers", kek.DefaultWorkers, fmt.Sprintf("batches run at once (at most %d)", kek.MaxWorkers))
	fs.DurationVar(&opts.Pause, "pause", 0, "pause of each worker between batches, to leave room to the service (e.g. 50ms)")
	return fs, opts
}

// rotate runs a rotation to its end, showing progress on stderr, then the
// per-KEK counts on stdout.
func rotate(ctx context.Context, st *store.Store, keyring *seal.Keyring, opts kek.Options) error {
	r := kek.New(st, keyring, opts)
	stop := make(chan struct{})
	printed := make(chan struct{})
	go func() {
		defer close(printed)
		showProgress(os.Stderr, r, stop)
	}()
	err := r.Run(ctx, store.Meta{Actor: cliActor(), Peer: hostname()})
	close(stop)
	<-printed
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return errors.New("interrupted; run `secretsd kek rotate` again to resume")
		}
		return err
	}
	status, err := kek.Status(context.WithoutCancel(ctx), st, keyring)
	if err != nil {
		return err
	}
	printStatus(os.Stdout, status)
	return nil
}

// showProgress updates one line in place on a terminal, or prints a line
// every few seconds otherwise (a log file, CI), until stop is closed.
func showProgress(w *os.File, r *kek.Rotator, stop <-chan struct{}) {
	tty := isTerminal(w)
	every := 5 * time.Second
	if tty {
		every = 250 * time.Millisecond
	}
	t := time.NewTicker(every)
	defer t.Stop()
	line := func() string { return "kek rotate: " + r.Progress().String() }
	for {
		select {
		case <-stop:
			if tty {
				fmt.Fprintf(w, "\r\033[K%s\n", line())
			} else {
				fmt.Fprintln(w, line())
			}
			return
		case <-t.C:
			if p := r.Progress(); p.StartTime.IsZero() {
				continue
			}
			if tty {
				fmt.Fprintf(w, "\r\033[K%s", line())
			} else {
				fmt.Fprintln(w, line())
			}
		}
	}
}

func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func printStatus(w io.Writer, status []kek.KEKStatus) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KEK\tDATA KEYS\tROLE")
	for _, s := range status {
		role := "unwrap only"
		switch {
		case s.Primary:
			role = "primary"
		case !s.Configured:
			role = "NOT CONFIGURED"
		case s.DataKeys == 0:
			role = "unwrap only (unused: can be removed)"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\n", s.ID, s.DataKeys, role)
	}
	tw.Flush()
}

// cliActor names the operator in the audit log.
func cliActor() string {
	name := "unknown"
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	return "secretsd-kek-rotate:" + strings.ToLower(name)
}

func hostname() string {
	h, _ := os.Hostname()
	return h + " (cli)"
}
