package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/orient-bot/secrets/client"
)

// forwarded are the signals run passes on to its child.
var forwarded = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT,
	syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH}

var signalNames = map[string]syscall.Signal{"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "TERM": syscall.SIGTERM,
	"QUIT": syscall.SIGQUIT, "USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2}

func parseSignal(s string) (syscall.Signal, error) {
	if s == "" || strings.EqualFold(s, "none") {
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

The command runs in a process group of its own (unless stdin is a terminal):
secretctl forwards signals to the whole group and exits with the command's
status, after stopping whatever the command left running in its group.
When stdin is a terminal the command shares secretctl's group, which the
terminal's ^C, ^\, hangup and resize reach directly: secretctl does not
forward SIGINT, SIGQUIT, SIGHUP or SIGWINCH then (TERM, USR1 and USR2 it
does), it only waits for the command to stop.

With --watch it follows the change stream: a change to one of the command's
secrets restarts it gracefully (SIGTERM to its group, then SIGKILL to the
group after --grace), since its environment cannot change in place. With
--signal SIG, a change to a secret that is not restart-required sends SIG to
the group instead (for a command that re-reads its secrets on SIG), and a
command that dies of SIG is restarted rather than ending secretctl.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return a.run(cmd.Context(), f, args) },
	}
	fl := cmd.Flags()
	fl.SetInterspersed(false)
	fl.StringSliceVar(&f.keys, "keys", nil, "the secrets to pass (comma-separated)")
	fl.StringSliceVar(&f.categories, "category", nil, "pass every secret of these categories")
	fl.BoolVar(&f.watch, "watch", false, "restart or signal the command when its secrets change")
	fl.StringVar(&f.defaultsFile, "defaults", "", "YAML or JSON file of default values")
	fl.StringVar(&f.signal, "signal", "none", "with --watch, the reload signal sent for changes that need no restart (HUP, USR1, …); none: restart on every change")
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
	// The command's environment cannot change in place: a changed value
	// restarts it, unless --signal names how it reloads (then only a
	// restart-required secret restarts it).
	cache, err := c.NewCache(ctx, client.CacheKeys(keys...), client.CacheCategories(f.categories...),
		client.OnChange(func(ch client.Change) {
			if reloadSig == 0 || ch.RestartRequired {
				notify(restartCh)
			} else {
				notify(reloadCh)
			}
		}))
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
//
// The child runs in a process group of its own (unless stdin is a
// terminal: a background group could not read it), and every signal,
// restart and stop goes to the whole group, so `sh -c 'app'` or a
// forking server leaves nothing behind: the grace period, then SIGKILL to
// the group. When the child dies of the reload signal run sent (a shell
// does, by default), it is restarted rather than ending run.
func (a *app) supervise(ctx context.Context, argv []string, envFn func() []string, restartCh, reloadCh <-chan struct{},
	reloadSig syscall.Signal, grace time.Duration, onStart func()) error {
	sigCh := make(chan os.Signal, 8)
	signal.Notify(sigCh, forwarded...)
	defer signal.Stop(sigCh)
	ownGroup := !readsTerminal(a.stdin)
	for {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env = envFn()
		cmd.Stdin, cmd.Stdout, cmd.Stderr = a.stdin, a.stdout, a.stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: ownGroup}
		// When our output is not a file (run embedded, or in tests), exec
		// copies it through pipes, and Wait would also wait for whatever
		// the child left running holding them: give up on them shortly
		// after the child exits, so its group can be stopped.
		cmd.WaitDelay = 200 * time.Millisecond
		if err := cmd.Start(); err != nil {
			return err
		}
		c := &child{cmd: cmd, group: ownGroup, exited: make(chan error, 1)}
		go func() { c.exited <- cmd.Wait() }()
		if onStart != nil {
			onStart()
		}
		stopping := false
		reloaded := false // the reload signal was sent to this instance
		done := ctx.Done()
	wait:
		for {
			select {
			case err := <-c.exited:
				c.err, c.done = err, true
				if reloaded && !stopping && diedOf(err, reloadSig) {
					fmt.Fprintf(a.stderr, "secretctl: %s ended on %s; restarting it\n", argv[0], signalName(reloadSig))
					a.reapGroup(c, grace)
					break wait
				}
				a.reapGroup(c, grace)
				return exitStatus(err)
			case sig := <-sigCh:
				// After a stop, the child decides; no restart after this.
				stopping = c.pass(sig.(syscall.Signal)) || stopping
			case <-done:
				done = nil
				// A signal that ended ctx (main's NotifyContext) is on its
				// way to sigCh too, maybe not there yet: wait for it, so that
				// a terminal's ^C, which the child has already, is not
				// followed by a SIGTERM from us.
				if context.Cause(ctx) != ctx.Err() {
					select {
					case sig := <-sigCh:
						stopping = c.pass(sig.(syscall.Signal)) || stopping
					case <-time.After(time.Second):
					}
				}
				for len(sigCh) > 0 {
					stopping = c.pass((<-sigCh).(syscall.Signal)) || stopping
				}
				return exitStatus(a.stop(c, grace, !stopping))
			case <-restartCh:
				if stopping {
					continue
				}
				fmt.Fprintf(a.stderr, "secretctl: an injected secret changed; restarting %s\n", argv[0])
				a.stop(c, grace, true)
				break wait
			case <-reloadCh:
				if reloadSig != 0 && !stopping {
					fmt.Fprintf(a.stderr, "secretctl: secrets changed; sending %s to %s\n", signalName(reloadSig), argv[0])
					c.signal(reloadSig)
					reloaded = true
				}
			}
		}
		// The restart picks up every change made so far.
		for _, ch := range []<-chan struct{}{reloadCh, restartCh} {
			select {
			case <-ch:
			default:
			}
		}
	}
}

// child is one run of the command.
type child struct {
	cmd    *exec.Cmd
	group  bool // in a process group of its own, whose id is its pid
	exited chan error
	err    error // what exited delivered, once it has
	done   bool
}

// terminalSignals are the signals a terminal sends to its whole
// foreground process group: ^C, ^\, a hangup, a new window size.
var terminalSignals = map[syscall.Signal]bool{syscall.SIGINT: true, syscall.SIGQUIT: true, syscall.SIGHUP: true, syscall.SIGWINCH: true}

// pass passes on a signal run received and reports whether it asks to
// stop. A child that shares our process group on a terminal has had the
// terminal's signals from the kernel already, with us: forwarding them
// would make one ^C two (and a second ^C often means "quit now").
func (c *child) pass(sig syscall.Signal) (stop bool) {
	if c.group || !terminalSignals[sig] {
		c.signal(sig)
	}
	switch sig {
	case syscall.SIGINT, syscall.SIGTERM:
		return true
	case syscall.SIGQUIT, syscall.SIGHUP:
		return !c.group // ^\ or a hangup at the terminal
	}
	return false
}

// signal sends sig to the child's process group (or to the child alone
// when it shares ours).
func (c *child) signal(sig syscall.Signal) {
	if c.group {
		_ = syscall.Kill(-c.cmd.Process.Pid, sig)
		return
	}
	_ = c.cmd.Process.Signal(sig)
}

// groupAlive reports whether any process of the child's group still runs.
//
// A member that has exited but is not yet reaped (a zombie) has stopped:
// once the shell in front of it is gone it waits for init, which in a
// container may reap it seconds late, or, when run itself is PID 1 (the
// container's entrypoint), never. Counting it would hold every restart for
// the grace period and a SIGKILL. Zombies that are run's own children (run
// is PID 1 or a subreaper) are reaped here, once the child itself has
// been, so its status is never taken from exec's Wait.
func (c *child) groupAlive() bool {
	if !c.group {
		return false
	}
	pg := c.cmd.Process.Pid
	if c.done {
		reapOrphans(pg)
	}
	if syscall.Kill(-pg, 0) != nil {
		return false
	}
	running, known := groupRunning(pg)
	return running || !known
}

// reapOrphans reaps the exited members of group pg that are run's children.
func reapOrphans(pg int) {
	for {
		var ws syscall.WaitStatus
		if pid, err := syscall.Wait4(-pg, &ws, syscall.WNOHANG, nil); pid <= 0 || err != nil {
			return
		}
	}
}

// groupRunning reports whether a process of group pg is running, from
// /proc; known is false where /proc cannot tell: it is not mounted, or it
// shows no member at all (hidepid hides other users' processes). A zombie
// whose threads still run (its main thread exited first) is running.
func groupRunning(pg int) (running, known bool) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return false, false
	}
	group := strconv.Itoa(pg)
	seen := false
	for _, e := range entries {
		name := e.Name()
		if name[0] < '1' || name[0] > '9' {
			continue
		}
		state, pgrp, ok := procStat(name)
		if !ok || pgrp != group {
			continue // exited meanwhile, or another group's
		}
		seen = true
		if state != "Z" && state != "X" {
			return true, true
		}
		if tasks, err := os.ReadDir("/proc/" + name + "/task"); err == nil && len(tasks) > 1 {
			return true, true
		}
	}
	return false, seen
}

// procStat reads a process's state letter and process group from
// /proc/<pid>/stat; ok is false once it is gone (or unreadable).
func procStat(pid string) (state, pgrp string, ok bool) {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return "", "", false
	}
	// pid (comm) state ppid pgrp …; comm may hold spaces and parentheses.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return "", "", false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 3 {
		return "", "", false
	}
	return f[0], f[2], true
}

// wait waits for the child itself to exit, at most until deadline.
func (c *child) wait(deadline <-chan time.Time) bool {
	if c.done {
		return true
	}
	select {
	case c.err = <-c.exited:
		c.done = true
		return true
	case <-deadline:
		return false
	}
}

// stop ends the child and everything in its group: SIGTERM (if term), then
// SIGKILL to the group after grace, whatever is still running then. It
// returns how the child itself ended.
func (a *app) stop(c *child, grace time.Duration, term bool) error {
	if term {
		c.signal(syscall.SIGTERM)
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	if c.wait(t.C) && a.groupGone(c, t.C) {
		return c.err
	}
	fmt.Fprintf(a.stderr, "secretctl: %s did not stop within %v; killing it\n", c.cmd.Path, grace)
	a.kill(c)
	c.wait(nil)
	return c.err
}

// kill sends SIGKILL to the child's group and waits (a moment at most) for
// the group to be gone, so nothing of it runs once run goes on.
func (a *app) kill(c *child) {
	c.signal(syscall.SIGKILL)
	t := time.NewTimer(time.Second)
	defer t.Stop()
	a.groupGone(c, t.C)
}

// reapGroup ends what the child left running in its group when it exited:
// SIGTERM, then SIGKILL after grace.
func (a *app) reapGroup(c *child, grace time.Duration) {
	if !c.groupAlive() {
		return
	}
	c.signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	if !a.groupGone(c, t.C) {
		fmt.Fprintf(a.stderr, "secretctl: processes started by %s did not stop within %v; killing them\n", c.cmd.Path, grace)
		a.kill(c)
	}
}

// groupGone waits until the child's group is empty, at most until deadline.
func (a *app) groupGone(c *child, deadline <-chan time.Time) bool {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for c.groupAlive() {
		select {
		case <-deadline:
			return false
		case <-tick.C:
		}
	}
	return true
}

// diedOf reports whether the child was killed by sig.
func diedOf(err error, sig syscall.Signal) bool {
	var ee *exec.ExitError
	if sig == 0 || !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == sig
}

// readsTerminal reports whether r is a terminal (a tty, not merely a
// character device such as /dev/null, which services get).
func readsTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
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
