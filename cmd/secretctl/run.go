package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/orient-bot/secrets/client"
)

// forwarded are the signals run passes on to its child.
var forwarded = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT,
	syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH}

var signalNames = map[string]syscall.Signal{"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "TERM": syscall.SIGTERM,
	"QUIT": syscall.SIGQUIT, "USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2}

func parseSignal(s string) (syscall.Signal, error) {
	if strings.EqualFold(s, "none") {
		return 0, nil
	}
	if sig, ok := signalNames[strings.TrimPrefix(strings.ToUpper(s), "SIG")]; ok {
		return sig, nil
	}
	return 0, fmt.Errorf("%w: --signal must be none or one of HUP, INT, TERM, QUIT, USR1, USR2", errUsage)
}

type runFlags struct {
	keys, categories []string
	watch            bool
	defaultsFile     string
	signal           string
	grace            time.Duration
	consumer         string
}

func (a *app) runCommand() *cobra.Command {
	f := runFlags{}
	cmd := &cobra.Command{
		Use:   "run [--watch] [--keys K,…|--category C] -- COMMAND [ARGS…]",
		Short: "Run a command with resolved secrets in its environment",
		Long: `Run COMMAND with the resolved values of the secrets in its environment:
the database value, else the variable already in the environment, else the
--defaults file. Without --keys or --category, every configured secret.

secretctl forwards signals to the command and exits with its status.

With --watch it follows the change stream: a change to a restart-required
secret restarts the command gracefully (SIGTERM, then SIGKILL after --grace);
other changes send --signal (default HUP; "none" to send nothing).`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return a.run(cmd.Context(), f, args) },
	}
	fl := cmd.Flags()
	fl.SetInterspersed(false)
	fl.StringSliceVar(&f.keys, "keys", nil, "the secrets to pass (comma-separated)")
	fl.StringSliceVar(&f.categories, "category", nil, "pass every secret of these categories")
	fl.BoolVar(&f.watch, "watch", false, "restart or signal the command when its secrets change")
	fl.StringVar(&f.defaultsFile, "defaults", "", "YAML or JSON file of default values")
	fl.StringVar(&f.signal, "signal", "HUP", "with --watch, the signal for changes that need no restart (or none)")
	fl.DurationVar(&f.grace, "grace", a.defaultGrace, "how long a stopping command may take before it is killed")
	fl.StringVar(&f.consumer, "consumer", "", "consumer name for restart tracking: SERVICE or SERVICE/INSTANCE (default: the command's name)")
	return cmd
}

func (a *app) run(ctx context.Context, f runFlags, argv []string) error {
	reloadSig, err := parseSignal(f.signal)
	if err != nil {
		return err
	}
	opts := []client.Option{client.WithEnvironment(a.lookupEnv)}
	if f.defaultsFile != "" {
		opts = append(opts, client.WithDefaultsFile(f.defaultsFile))
	}
	if f.watch {
		service, instance, _ := strings.Cut(f.consumer, "/")
		if service == "" {
			service = filepath.Base(argv[0])
		}
		opts = append(opts, client.WithConsumer(service, instance))
	}
	c, err := a.connect(ctx, opts...)
	if err != nil {
		return err
	}
	keys := f.keys
	if len(keys) == 0 && len(f.categories) == 0 {
		list, _, err := c.ListSecrets(ctx, client.ListSecretsOptions{ConfiguredOnly: true})
		if err != nil {
			return fmt.Errorf("listing secrets: %w", err)
		}
		for _, s := range list {
			keys = append(keys, s.Key)
		}
	}
	if !f.watch {
		values, err := a.resolveOnce(ctx, c, keys, f.categories)
		if err != nil {
			return err
		}
		env := childEnv(a.environ(), values)
		return a.supervise(ctx, argv, func() []string { return env }, nil, nil, 0, f.grace, nil)
	}

	restartCh := make(chan struct{}, 1)
	reloadCh := make(chan struct{}, 1)
	notify := func(ch chan struct{}) {
		select {
		case ch <- struct{}{}:
		default: // one pending notice covers many changes
		}
	}
	cache, err := c.NewCache(ctx, client.CacheKeys(keys...), client.CacheCategories(f.categories...),
		client.OnChange(func(ch client.Change) {
			if !ch.RestartRequired {
				notify(reloadCh)
			}
		}),
		client.OnRestartRequired(func(client.Change) { notify(restartCh) }))
	if err != nil {
		return err
	}
	defer cache.Close()
	for _, k := range keys {
		if _, err := cache.Get(k); errors.Is(err, client.ErrNotConfigured) {
			return err
		}
	}
	envFn := func() []string {
		values := map[string]string{}
		for _, k := range cache.Keys() {
			if r, err := cache.Resolved(k); err == nil {
				values[k] = r.Value
			}
		}
		return childEnv(a.environ(), values)
	}
	onStart := func() {
		if err := cache.MarkLoaded(ctx); err != nil {
			fmt.Fprintln(a.stderr, "secretctl: reporting the loaded revision:", err)
		}
	}
	return a.supervise(ctx, argv, envFn, restartCh, reloadCh, reloadSig, f.grace, onStart)
}

// resolveOnce resolves keys and the keys of categories. Named keys must
// resolve; a category's unset catalog slots are skipped.
func (a *app) resolveOnce(ctx context.Context, c *client.Client, keys, categories []string) (map[string]string, error) {
	values := map[string]string{}
	res, err := c.ResolveAll(ctx, keys)
	if err != nil {
		return nil, err
	}
	var catKeys []string
	for _, cat := range categories {
		list, _, err := c.ListSecrets(ctx, client.ListSecretsOptions{Category: cat})
		if err != nil {
			return nil, err
		}
		for _, s := range list {
			catKeys = append(catKeys, s.Key)
		}
	}
	more, err := c.ResolveAll(ctx, catKeys)
	if err != nil && !errors.Is(err, client.ErrNotConfigured) {
		return nil, err
	}
	for _, m := range []map[string]client.Resolved{more, res} {
		for k, r := range m {
			if r.Fallback() {
				fmt.Fprintf(a.stderr, "secretctl: %s from %s\n", k, r.Describe())
			}
			values[k] = r.Value
		}
	}
	return values, nil
}

// childEnv overrides base with values (the database beats the inherited
// environment, as Resolve already decided).
func childEnv(base []string, values map[string]string) []string {
	env := slices.DeleteFunc(slices.Clone(base), func(kv string) bool {
		k, _, _ := strings.Cut(kv, "=")
		_, ok := values[k]
		return ok
	})
	for _, k := range slices.Sorted(maps.Keys(values)) {
		env = append(env, k+"="+values[k])
	}
	return env
}

// supervise runs the child, forwarding signals, restarting it on restartCh
// and signalling it on reloadCh, until it exits on its own (its status is
// returned) or ctx ends (it is stopped gracefully).
func (a *app) supervise(ctx context.Context, argv []string, envFn func() []string, restartCh, reloadCh <-chan struct{},
	reloadSig syscall.Signal, grace time.Duration, onStart func()) error {
	sigCh := make(chan os.Signal, 8)
	signal.Notify(sigCh, forwarded...)
	defer signal.Stop(sigCh)
	for {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env = envFn()
		cmd.Stdin, cmd.Stdout, cmd.Stderr = a.stdin, a.stdout, a.stderr
		if err := cmd.Start(); err != nil {
			return err
		}
		if onStart != nil {
			onStart()
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		stopping := false
		done := ctx.Done()
	wait:
		for {
			select {
			case err := <-exited:
				return exitStatus(err)
			case sig := <-sigCh:
				_ = cmd.Process.Signal(sig)
				if sig == syscall.SIGINT || sig == syscall.SIGTERM {
					stopping = true // the child decides; no restart after this
				}
			case <-done:
				done = nil
				// A terminal's ^C or a SIGTERM may have been forwarded already.
				for len(sigCh) > 0 {
					sig := <-sigCh
					_ = cmd.Process.Signal(sig)
					stopping = stopping || sig == syscall.SIGINT || sig == syscall.SIGTERM
				}
				return exitStatus(a.stop(cmd, exited, grace, !stopping))
			case <-restartCh:
				if stopping {
					continue
				}
				fmt.Fprintf(a.stderr, "secretctl: a restart-required secret changed; restarting %s\n", argv[0])
				a.stop(cmd, exited, grace, true)
				break wait
			case <-reloadCh:
				if reloadSig != 0 && !stopping {
					fmt.Fprintf(a.stderr, "secretctl: secrets changed; sending %s to %s\n", signalName(reloadSig), argv[0])
					_ = cmd.Process.Signal(reloadSig)
				}
			}
		}
		// The restart picks up every change made so far.
		select {
		case <-reloadCh:
		default:
		}
	}
}

// stop ends the child: SIGTERM (if term), then SIGKILL after grace.
func (a *app) stop(cmd *exec.Cmd, exited <-chan error, grace time.Duration, term bool) error {
	if term {
		_ = cmd.Process.Signal(syscall.SIGTERM)
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case err := <-exited:
		return err
	case <-t.C:
		fmt.Fprintf(a.stderr, "secretctl: %s did not stop within %v; killing it\n", cmd.Path, grace)
		_ = cmd.Process.Kill()
		return <-exited
	}
}

func signalName(s syscall.Signal) string {
	for n, sig := range signalNames {
		if sig == s {
			return "SIG" + n
		}
	}
	return s.String()
}

// exitStatus maps the child's end to secretctl's: its exit code, or 128 +
// the signal that killed it, as shells do.
func exitStatus(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return exitError{code: 128 + int(ws.Signal())}
		}
		return exitError{code: ee.ExitCode()}
	}
	return err
}
