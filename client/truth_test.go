package client_test

// Tests of the client's promises under failure (issue 20): what a cache
// says when its credentials are refused, that Close ends everything, what
// it reports as loaded, how it counts contact, the order of its callbacks,
// and how long it waits for a service that is down.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/orient-bot/secrets/client"
)

// logRecords is a slog handler that keeps what it is given.
type logRecords struct {
	mu      sync.Mutex
	records []slog.Record
}

func (l *logRecords) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecords) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.records = append(l.records, r.Clone())
	l.mu.Unlock()
	return nil
}
func (l *logRecords) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecords) WithGroup(string) slog.Handler      { return l }

// count returns how many records at level or above have message msg.
func (l *logRecords) count(level slog.Level, msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.records {
		if r.Level >= level && r.Message == msg {
			n++
		}
	}
	return n
}

const refusedMsg = "secrets: the service refused the cache's credentials; values from the service are withheld until it accepts them"

// Not parallel: it installs its own default logger, to show that the
// client's default logger is the process's.
func TestCacheRefusedCredentialsAreTerminal(t *testing.T) {
	logs := &logRecords{}
	prev := slog.Default()
	slog.SetDefault(slog.New(logs))
	t.Cleanup(func() { slog.SetDefault(prev) })

	srv := startServer(t, serverOpts{})
	admin := dial(t, srv.GRPCAddr(), client.WithLogger(slog.New(slog.DiscardHandler)))
	ctx := context.Background()
	put(t, admin, "CUSTOM_REVOKED", "v1")
	token, _, err := admin.CreateToken(ctx, client.NewToken{Name: "revoked-bot", Role: "reader"})
	if err != nil {
		t.Fatal(err)
	}
	// No WithLogger: the default logger.
	c := dial(t, srv.GRPCAddr(), client.WithToken(token), client.WithEnvironment(envOf(map[string]string{"CUSTOM_ENV_ONLY": "e"})))
	const probe = 150 * time.Millisecond
	var mu sync.Mutex
	var errTimes []time.Time
	var errs []error
	cache, err := c.NewCache(ctx, client.CacheKeys("CUSTOM_REVOKED", "CUSTOM_ENV_ONLY"), client.CacheProgressInterval(progressInterval),
		client.CacheRefusalProbe(probe), client.OnError(func(err error) {
			mu.Lock()
			errTimes, errs = append(errTimes, time.Now()), append(errs, err)
			mu.Unlock()
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	if v, err := cache.Get("CUSTOM_REVOKED"); err != nil || v != "v1" {
		t.Fatalf("Get before revocation = %q, %v", v, err)
	}

	if _, err := admin.RevokeToken(ctx, "revoked-bot"); err != nil {
		t.Fatal(err)
	}
	// The change makes the cache ask the service with its revoked token.
	put(t, admin, "CUSTOM_REVOKED", "v2")
	eventually(t, 5*time.Second, "Get never reported the refused credentials", func() bool {
		_, err := cache.Get("CUSTOM_REVOKED")
		return errors.Is(err, client.ErrUnauthenticated)
	})
	_, err = cache.Get("CUSTOM_REVOKED")
	if errors.Is(err, client.ErrStale) || errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("refusal reported as an outage: %v", err)
	}
	// The environment's value does not depend on the token.
	if v, err := cache.Get("CUSTOM_ENV_ONLY"); err != nil || v != "e" {
		t.Fatalf("Get(environment key) after refusal = %q, %v", v, err)
	}
	if st := cache.Status(); !st.Refused || !errors.Is(st.Err, client.ErrUnauthenticated) || st.Stale {
		t.Fatalf("status after refusal = %+v", st)
	}
	// Retries become a slow probe: wait for several, then check their pace.
	eventually(t, 5*time.Second, "no further probes", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(errTimes) >= 4
	})
	mu.Lock()
	for i, e := range errs {
		if !errors.Is(e, client.ErrUnauthenticated) {
			t.Errorf("OnError #%d = %v, want the refusal", i, e)
		}
	}
	for i := 1; i < len(errTimes); i++ {
		if gap := errTimes[i].Sub(errTimes[i-1]); gap < probe*3/4 {
			t.Errorf("attempt %d came %v after the previous one; a refusal is probed every ~%v", i, gap, probe)
		}
	}
	attempts := len(errTimes)
	mu.Unlock()
	if n := logs.count(slog.LevelError, refusedMsg); n != 1 {
		t.Fatalf("refusal logged %d times over %d attempts by the default logger, want once", n, attempts)
	}
}

// Not parallel: goleak compares every goroutine of the test binary.
func TestClientCloseEndsWatchesAndCaches(t *testing.T) {
	srv := startServer(t, serverOpts{})
	admin := dial(t, srv.GRPCAddr())
	put(t, admin, "SLACK_BOT_TOKEN", "xoxb-1")
	admin.Close()
	before := goleak.IgnoreCurrent()

	ctx := context.Background()
	c, err := client.New(ctx, srv.GRPCAddr(), client.WithToken(srv.AdminToken), client.WithRetry(fastRetry),
		client.WithEnvironment(envOf(nil)), client.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	all := c.Watch(ctx)
	if r := <-all; !r.Created {
		t.Fatalf("first response = %+v", r)
	}
	keyed := c.Watch(ctx, client.WatchKeys("SLACK_BOT_TOKEN"), client.WatchProgressNotify())
	var caches []*client.Cache
	for _, o := range [][]client.CacheOption{{client.CacheKeys("SLACK_BOT_TOKEN")}, {client.CacheCategories("slack")}} {
		cache, err := c.NewCache(ctx, append(o, client.CacheProgressInterval(progressInterval))...)
		if err != nil {
			t.Fatal(err)
		}
		caches = append(caches, cache)
	}

	t0 := time.Now()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	closed := time.Since(t0)
	for i, ch := range []<-chan client.WatchResponse{all, keyed} {
		timeout := time.After(2 * time.Second)
	drain:
		for {
			select {
			case r, ok := <-ch:
				if !ok {
					break drain
				}
				if r.Err != nil {
					t.Fatalf("watch %d ended with %v", i, r.Err)
				}
			case <-timeout:
				t.Fatalf("watch %d still open 2s after Close", i)
			}
		}
	}
	if closed > 2*time.Second {
		t.Fatalf("Close took %v", closed)
	}
	t.Logf("Close ended 2 watches and 2 caches in %v", closed)
	// A closed client starts nothing; closed caches still answer.
	if _, err := c.NewCache(ctx, client.CacheKeys("SLACK_BOT_TOKEN")); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("NewCache after Close = %v", err)
	}
	if _, ok := <-c.Watch(ctx); ok {
		t.Fatal("Watch after Close delivered a response")
	}
	if v, err := caches[0].Get("SLACK_BOT_TOKEN"); err != nil || v != "xoxb-1" {
		t.Fatalf("Get after Close = %q, %v", v, err)
	}
	for _, cache := range caches {
		cache.Close() // returns at once
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
	// The server's goroutines for our calls end with it.
	srv.Stop()
	goleak.VerifyNone(t, before)
}

func TestCacheOnFallbackReportsNoLoadedRevision(t *testing.T) {
	t.Parallel()
	// The database has the value before the cache first reaches it.
	db := startServer(t, serverOpts{})
	changed := put(t, dial(t, db.GRPCAddr()), "SLACK_BOT_TOKEN", "xoxb-db").Revision
	addr := freeAddr(t)
	env := envOf(map[string]string{"SLACK_BOT_TOKEN": "xoxb-env"})
	c := dial(t, addr, client.WithEnvironment(env), client.WithConsumer("orient-bot", "fallback-1"))
	ctx := context.Background()
	rec := &recorder{}
	cache, err := c.NewCache(ctx, append(rec.options(), client.CacheKeys("SLACK_BOT_TOKEN"),
		client.CacheProgressInterval(progressInterval))...)
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	if st := cache.Status(); st.LoadedRevision != 0 {
		t.Fatalf("loaded revision on fallback values = %d", st.LoadedRevision)
	}

	if v, _ := cache.Get("SLACK_BOT_TOKEN"); v != "xoxb-env" {
		t.Fatalf("Get while down = %q", v)
	}
	startServer(t, serverOpts{addr: addr, databaseURL: db.DatabaseURL, kekURL: db.KEKURL})
	waitValue(t, cache, "SLACK_BOT_TOKEN", "xoxb-db", 10*time.Second)
	eventually(t, 3*time.Second, "no restart notice", func() bool {
		_, restarted := rec.keys()
		return slices.Contains(restarted, "SLACK_BOT_TOKEN")
	})
	// The process still runs on the environment's value: the service must
	// list it as needing a restart.
	var pending []client.ConsumerState
	eventually(t, 5*time.Second, "the instance on fallback values is not listed as pending", func() bool {
		pending, _, err = c.ListConsumers(ctx, true)
		if err != nil {
			t.Fatal(err)
		}
		return len(pending) == 1 && len(pending[0].Pending) == 1 && pending[0].Pending[0].Key == "SLACK_BOT_TOKEN" &&
			pending[0].Pending[0].Revision == changed
	})
	if pending[0].Consumer.Instance != "fallback-1" || pending[0].LoadedRevision != 0 {
		t.Fatalf("pending consumer = %+v", pending[0])
	}
	if st := cache.Status(); st.LoadedRevision != 0 {
		t.Fatalf("loaded revision before MarkLoaded = %d", st.LoadedRevision)
	}

	// After the restart, the process runs with the cache's values.
	if err := cache.MarkLoaded(ctx); err != nil {
		t.Fatal(err)
	}
	rev := cache.Revision()
	if rev < changed || cache.Status().LoadedRevision != rev {
		t.Fatalf("after MarkLoaded: revision %d, status %+v, change at %d", rev, cache.Status(), changed)
	}
	all, _, err := c.ListConsumers(ctx, false)
	if err != nil || len(all) != 1 || all[0].LoadedRevision != rev || len(all[0].Pending) != 0 {
		t.Fatalf("consumers after MarkLoaded = %+v, %v", all, err)
	}
}

func TestCacheStalenessBoundBelowTwoProgressIntervalsIsRaised(t *testing.T) {
	t.Parallel()
	srv := startServer(t, serverOpts{})
	logs := &logRecords{}
	c := dial(t, srv.GRPCAddr(), client.WithLogger(slog.New(logs)))
	put(t, c, "CUSTOM_IDLE", "v")
	// Half the server's progress interval: an idle stream is silent for
	// longer than that between two healthy progress messages.
	cache, err := c.NewCache(context.Background(), client.CacheKeys("CUSTOM_IDLE"),
		client.CacheProgressInterval(progressInterval), client.CacheMaxStaleness(progressInterval/2))
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	// Idle for several progress intervals: never stale.
	for deadline := time.Now().Add(8 * progressInterval); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if v, err := cache.Get("CUSTOM_IDLE"); err != nil || v != "v" {
			t.Fatalf("healthy idle cache: Get = %q, %v (status %+v)", v, err, cache.Status())
		}
	}
	if got := cache.Status().MaxStaleness; got != 2*progressInterval {
		t.Fatalf("staleness bound = %v, want it raised to %v", got, 2*progressInterval)
	}
	if logs.count(slog.LevelWarn, "secrets: cache staleness bound is below twice the progress interval; raised, or a healthy idle cache would fail closed between progress messages") != 1 {
		t.Fatal("raising the bound was not logged")
	}
}

func TestCacheCallbacksFollowRevisionsAndKeepRestartNotices(t *testing.T) {
	t.Parallel()
	srv := startServer(t, serverOpts{})
	c := dial(t, srv.GRPCAddr())
	ctx := context.Background()
	keys := []string{"CUSTOM_GATE", "CUSTOM_MIXED"}
	for i := range 8 {
		keys = append(keys, fmt.Sprintf("CUSTOM_CONC_%d", i))
	}
	for _, k := range keys {
		put(t, c, k, "initial", client.WithRestartRequired(false))
	}

	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	var mu sync.Mutex
	var changes, restarts []client.Change
	cache, err := c.NewCache(ctx, client.CacheKeys(keys...), client.CacheProgressInterval(progressInterval),
		client.OnChange(func(ch client.Change) {
			if ch.Key == "CUSTOM_GATE" {
				once.Do(func() { close(entered); <-release }) // a slow callback
			}
			mu.Lock()
			changes = append(changes, ch)
			mu.Unlock()
		}),
		client.OnRestartRequired(func(ch client.Change) {
			mu.Lock()
			restarts = append(restarts, ch)
			mu.Unlock()
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	// Runs first: a failing test must not leave the callback blocked.
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	defer unblock()
	// Follow the same changes, to know when they have all been streamed.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	side := c.Watch(wctx)
	<-side

	put(t, c, "CUSTOM_GATE", "blocked")
	<-entered
	// Behind the slow callback: a restart-required change, then a plain
	// one, to the same key; and concurrent writers with mixed flags.
	type write struct {
		key      string
		value    string
		restart  bool
		revision int64
	}
	var wmu sync.Mutex
	var writes []write
	record := func(k, v string, restart bool) {
		rev := put(t, c, k, v, client.WithRestartRequired(restart)).Revision
		wmu.Lock()
		writes = append(writes, write{k, v, restart, rev})
		wmu.Unlock()
	}
	record("CUSTOM_MIXED", "restart", true)
	record("CUSTOM_MIXED", "plain", false)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 10 {
				k := keys[2+rand.IntN(8)]
				record(k, fmt.Sprintf("w%d-%d", w, i), rand.IntN(3) == 0)
			}
		})
	}
	wg.Wait()
	var maxRev int64
	last := map[string]write{}
	for _, w := range writes {
		maxRev = max(maxRev, w.revision)
		if w.revision > last[w.key].revision {
			last[w.key] = w
		}
	}
	// Every change has been streamed before the callback returns.
	for seen := int64(0); seen < maxRev; {
		select {
		case r := <-side:
			seen = max(seen, r.Revision)
		case <-time.After(5 * time.Second):
			t.Fatalf("side watch at revision %d of %d", seen, maxRev)
		}
	}
	time.Sleep(100 * time.Millisecond)
	unblock()
	for k, w := range last {
		waitValue(t, cache, k, w.value, 5*time.Second)
	}

	mu.Lock()
	defer mu.Unlock()
	for i := 1; i < len(changes); i++ {
		if changes[i].Event.Revision <= changes[i-1].Event.Revision {
			t.Fatalf("callback %d (%s at revision %d) after %s at revision %d: not in revision order",
				i, changes[i].Key, changes[i].Event.Revision, changes[i-1].Key, changes[i-1].Event.Revision)
		}
	}
	// Every restart-required change is followed by a restart notice for
	// its key, at or after its revision.
	for _, w := range writes {
		if !w.restart {
			continue
		}
		if !slices.ContainsFunc(restarts, func(ch client.Change) bool { return ch.Key == w.key && ch.Event.Revision >= w.revision }) {
			t.Errorf("restart-required change of %s at revision %d got no restart notice", w.key, w.revision)
		}
	}
	// And no notice without one.
	for _, ch := range restarts {
		if !slices.ContainsFunc(writes, func(w write) bool { return w.key == ch.Key && w.restart && w.revision <= ch.Event.Revision }) {
			t.Errorf("restart notice for %s at revision %d without a restart-required change", ch.Key, ch.Event.Revision)
		}
	}
	t.Logf("%d writes, %d change callbacks, %d restart notices", len(writes)+1, len(changes), len(restarts))
}

func TestStartupWaitWhileServiceDownIsBounded(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t) // nothing listens there
	env := envOf(map[string]string{"SLACK_BOT_TOKEN": "xoxb-env", "CUSTOM_DOWN": "env"})
	// The default retry policy: about 3 s of retries without the bound.
	c := dial(t, addr, client.WithEnvironment(env), client.WithRetry(client.DefaultRetryPolicy),
		client.WithDefaults(map[string]string{"SLACK_APP_TOKEN": "xapp-default"}))
	ctx := context.Background()
	limit := client.DefaultFallbackWait + time.Second // without the bound: 2.4 s at least

	t0 := time.Now()
	r, err := c.Resolve(ctx, "CUSTOM_DOWN")
	if d := time.Since(t0); err != nil || r.Value != "env" || !r.Fallback() || d > limit {
		t.Fatalf("Resolve while down = %v, %v after %v (bound %v)", r, err, d, client.DefaultFallbackWait)
	}
	t0 = time.Now()
	cache, err := c.NewCache(ctx, client.CacheCategories("slack"), client.CacheKeys("CUSTOM_DOWN"))
	d := time.Since(t0)
	if err != nil || d > limit {
		t.Fatalf("NewCache while down = %v after %v (bound %v)", err, d, client.DefaultFallbackWait)
	}
	defer cache.Close()
	t.Logf("NewCache fell back after %v", d)
	// A category cache serves the catalog's keys of its categories.
	for key, want := range map[string]string{"SLACK_BOT_TOKEN": "xoxb-env", "SLACK_APP_TOKEN": "xapp-default", "CUSTOM_DOWN": "env"} {
		if v, err := cache.Get(key); err != nil || v != want {
			t.Fatalf("Get(%s) while down = %q, %v", key, v, err)
		}
	}
	if _, err := cache.Get("SLACK_USER_TOKEN"); !errors.Is(err, client.ErrNotConfigured) {
		t.Fatalf("Get(catalog key configured nowhere) = %v", err)
	}
	if _, err := cache.Get("OPENAI_API_KEY"); !errors.Is(err, client.ErrNotCached) {
		t.Fatalf("Get(other category) = %v", err)
	}
}

func TestCacheFallbackValuesNeverGoStale(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	env := envOf(map[string]string{"CUSTOM_ENV": "env"})
	c := dial(t, addr, client.WithEnvironment(env), client.WithDefaults(map[string]string{"CUSTOM_DEF": "def"}))
	const interval = 50 * time.Millisecond
	cache, err := c.NewCache(context.Background(), client.CacheKeys("CUSTOM_ENV", "CUSTOM_DEF"),
		client.CacheProgressInterval(interval), client.CacheMaxStaleness(2*interval))
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	eventually(t, 5*time.Second, "cache never went stale without the service", func() bool { return cache.Status().Stale })
	for key, want := range map[string]string{"CUSTOM_ENV": "env", "CUSTOM_DEF": "def"} {
		if v, err := cache.Get(key); err != nil || v != want {
			t.Fatalf("Get(%s) of a stale cache = %q, %v", key, v, err)
		}
	}
}

// A soak under -race (make test): readers hammer the cache while values change and the
// server is stopped and replaced. No reader may see an error, a value that
// was never written, or a version going backwards.
func TestCacheSoakReadersDuringChangesAndServerStop(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	a := startServer(t, serverOpts{addr: addr})
	c := dial(t, addr)
	keys := []string{"CUSTOM_SOAK_A", "CUSTOM_SOAK_B", "CUSTOM_SOAK_C"}
	for _, k := range keys {
		put(t, c, k, k+"-0")
	}
	cache, err := c.NewCache(context.Background(), client.CacheKeys(keys...), client.CacheProgressInterval(progressInterval))
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()

	const readers = 8
	var stop atomic.Bool
	var reads atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, readers)
	// Readers pause between rounds: spinning ones would starve the
	// in-process server of the machine's two cores.
	defer func() { stop.Store(true); wg.Wait() }()
	for range readers {
		wg.Go(func() {
			versions := map[string]int64{}
			for ; !stop.Load(); time.Sleep(200 * time.Microsecond) {
				for _, k := range keys {
					r, err := cache.Resolved(k)
					reads.Add(1)
					switch {
					case err != nil:
						errs <- fmt.Errorf("Resolved(%s): %w", k, err)
						return
					case r.Source != client.SourceDatabase || len(r.Value) < len(k) || r.Value[:len(k)] != k:
						errs <- fmt.Errorf("Resolved(%s) = %v, not a written value", k, r)
						return
					case r.Version < versions[k]:
						errs <- fmt.Errorf("%s went back from version %d to %d", k, versions[k], r.Version)
						return
					}
					versions[k] = r.Version
				}
			}
		})
	}
	t0 := time.Now()
	final := map[string]string{}
	write := func(i int) {
		k := keys[i%len(keys)]
		final[k] = fmt.Sprintf("%s-%d", k, i)
		put(t, c, k, final[k])
	}
	for i := range 30 {
		write(i)
	}
	a.Stop()
	startServer(t, serverOpts{addr: addr, databaseURL: a.DatabaseURL, kekURL: a.KEKURL})
	for i := 30; i < 60; i++ {
		write(i)
	}
	for k, v := range final {
		waitValue(t, cache, k, v, 10*time.Second)
	}
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d reads by %d readers in %v, across 60 changes and a server stop", reads.Load(), readers, time.Since(t0).Round(time.Millisecond))
}
