// Command secretctl is the command-line client of Orient Secrets: read and
// write secrets, inspect versions, providers, the audit log, the change
// stream and consumers, and run a program with its secrets in the
// environment (restarting it when a restart-required secret changes).
//
// It is configured by SECRETS_ADDR (the gRPC address, default
// 127.0.0.1:9090; plaintext for loopback addresses unless TLS flags are
// given) and SECRETS_TOKEN, or the matching flags.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/orient-bot/secrets/client"
)

func main() {
	// SIGINT and SIGTERM are handled by the commands that need them (run
	// forwards them to its child); here they only cancel the context.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(execute(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.LookupEnv))
}

// exitError carries a specific exit status (run passes on its child's).
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// app is one invocation's state: streams, environment and flags.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	lookupEnv      func(string) (string, bool)

	addr, tokenFile           string
	caFile, certFile, keyFile string
	insecure                  bool
	output                    string
	timeout                   time.Duration
	client                    *client.Client
	extraClientOpts           []client.Option // tests
	progressOut               io.Writer       // nil: no progress
	environ                   func() []string // the child's base environment (run)
	defaultGrace              time.Duration
}

// execute runs secretctl with args and returns the exit status.
func execute(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, lookupEnv func(string) (string, bool), opts ...func(*app)) int {
	a := &app{stdin: stdin, stdout: stdout, stderr: stderr, lookupEnv: lookupEnv, environ: os.Environ,
		defaultGrace: 10 * time.Second}
	if f, ok := stderr.(*os.File); ok && isTerminal(f) {
		a.progressOut = stderr
	}
	for _, o := range opts {
		o(a)
	}
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if a.client != nil {
		a.client.Close()
	}
	var exit exitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit):
		return exit.code
	}
	fmt.Fprintln(stderr, "secretctl:", err)
	if errors.Is(err, errUsage) {
		return 2
	}
	return 1
}

var errUsage = errors.New("usage")

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "secretctl",
		Short:         "Command-line client of Orient Secrets",
		SilenceUsage:  true,
		SilenceErrors: true,
		Long: `secretctl reads and writes Orient secrets over gRPC.

Environment:
  SECRETS_ADDR   gRPC address of secretsd (default 127.0.0.1:9090); plaintext
                 for loopback addresses unless TLS flags are given
  SECRETS_TOKEN  bearer token (or --token-file)`,
	}
	addr, ok := a.lookupEnv("SECRETS_ADDR")
	if !ok || addr == "" {
		addr = "127.0.0.1:9090"
	}
	f := root.PersistentFlags()
	f.StringVar(&a.addr, "addr", addr, "gRPC address of the service ($SECRETS_ADDR)")
	f.StringVar(&a.tokenFile, "token-file", "", "read the bearer token from this file (default $SECRETS_TOKEN)")
	f.StringVar(&a.caFile, "tls-ca", "", "use TLS, trusting this PEM CA bundle")
	f.StringVar(&a.certFile, "tls-cert", "", "client certificate for mutual TLS (PEM)")
	f.StringVar(&a.keyFile, "tls-key", "", "client key for mutual TLS (PEM)")
	f.BoolVar(&a.insecure, "insecure", false, "plaintext even to a non-loopback address")
	f.StringVarP(&a.output, "output", "o", "table", "output format: table or json")
	f.DurationVar(&a.timeout, "timeout", 30*time.Second, "timeout of each call")
	root.PersistentPreRunE = func(cmd *cobra.Command, args []string) error {
		if a.output != "table" && a.output != "json" {
			return fmt.Errorf("%w: --output must be table or json", errUsage)
		}
		return nil
	}
	root.AddCommand(a.tokensCommand(), a.auditVerifyCommand(), a.importCommand(), a.exportCommand(), a.checkCommand(), a.rotationCommand())
	root.AddCommand(a.getCommand(), a.putCommand(), a.listCommand(), a.versionsCommand(),
		a.versionStateCommand("disable"), a.versionStateCommand("enable"), a.versionStateCommand("destroy"),
		a.deleteCommand(), a.providersCommand(), a.auditCommand(), a.watchCommand(), a.consumersCommand(),
		a.runCommand())
	return root
}

// connect creates the client on first use.
func (a *app) connect(ctx context.Context, extra ...client.Option) (*client.Client, error) {
	if a.client != nil {
		return a.client, nil
	}
	opts := []client.Option{client.WithTimeout(a.timeout)}
	token, _ := a.lookupEnv("SECRETS_TOKEN")
	if a.tokenFile != "" {
		b, err := os.ReadFile(a.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("token file: %w", err)
		}
		token = string(trimNewline(b))
	}
	if token != "" {
		opts = append(opts, client.WithToken(token))
	}
	if a.caFile != "" || a.certFile != "" {
		opts = append(opts, client.WithTLSFiles(a.caFile, a.certFile, a.keyFile))
	}
	if a.insecure {
		opts = append(opts, client.WithInsecure())
	}
	opts = append(opts, a.extraClientOpts...)
	opts = append(opts, extra...)
	c, err := client.New(ctx, a.addr, opts...)
	if err != nil {
		return nil, err
	}
	a.client = c
	return c, nil
}

// trimNewline drops one trailing line ending ("echo value |" adds one).
func trimNewline(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == '\n' {
		b = b[:n-1]
		if n := len(b); n > 0 && b[n-1] == '\r' {
			b = b[:n-1]
		}
	}
	return b
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// progress shows a running count on a terminal's stderr, for calls that
// page through many results.
func (a *app) progress(what string) (update func(int), done func()) {
	if a.progressOut == nil {
		return nil, func() {}
	}
	shown := false
	return func(n int) {
			shown = true
			fmt.Fprintf(a.progressOut, "\r%s: %d…", what, n)
		}, func() {
			if shown {
				fmt.Fprint(a.progressOut, "\r\033[K")
			}
		}
}
