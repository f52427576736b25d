package client_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/orient-bot/secrets/client"
)

// recorder collects cache callbacks.
type recorder struct {
	mu       sync.Mutex
	changes  []client.Change
	restarts []client.Change
}

func (r *recorder) options() []client.CacheOption {
	return []client.CacheOption{
		client.OnChange(func(c client.Change) { r.mu.Lock(); r.changes = append(r.changes, c); r.mu.Unlock() }),
		client.OnRestartRequired(func(c client.Change) { r.mu.Lock(); r.restarts = append(r.restarts, c); r.mu.Unlock() }),
	}
}

func (r *recorder) keys() (changed, restarted []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.changes {
		changed = append(changed, c.Key)
	}
	for _, c := range r.restarts {
		restarted = append(restarted, c.Key)
	}
	return changed, restarted
}

func waitValue(t *testing.T, cache *client.Cache, key, want string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	eventually(t, within, key+" never became "+want, func() bool {
		v, err := cache.Get(key)
		return err == nil && v == want
	})
	return time.Since(start)
}

func TestCacheFollowsChanges(t *testing.T) {
	t.Parallel()
	srv := startServer(t, serverOpts{})
	env := envOf(map[string]string{"OPENAI_API_KEY": "sk-env", "CUSTOM_ENVONLY": "e"})
	c := dial(t, srv.GRPCAddr(), client.WithEnvironment(env), client.WithConsumer("orient-bot", "test-1"), client.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, nil))))
	ctx := context.Background()
	put(t, c, "SLACK_BOT_TOKEN", "xoxb-1")
	put(t, c, "OPENAI_API_KEY", "sk-1")

	rec := &recorder{}
	cache, err := c.NewCache(ctx, append(rec.options(),
		client.CacheKeys("SLACK_BOT_TOKEN", "OPENAI_API_KEY", "CUSTOM_ENVONLY", "CUSTOM_MISSING"),
		client.CacheProgressInterval(progressInterval))...)
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	for key, want := range map[string]string{"SLACK_BOT_TOKEN": "xoxb-1", "OPENAI_API_KEY": "sk-1", "CUSTOM_ENVONLY": "e"} {
		if v, err := cache.Get(key); err != nil || v != want {
			t.Fatalf("Get(%s) = %q, %v", key, v, err)
		}
	}
	if _, err := cache.Get("CUSTOM_MISSING"); !errors.Is(err, client.ErrNotConfigured) {
		t.Fatalf("Get(missing) = %v", err)
	}
	if _, err := cache.Get("GITHUB_TOKEN"); !errors.Is(err, client.ErrNotCached) {
		t.Fatalf("Get(not in set) = %v", err)
	}
	if r, _ := cache.Resolved("CUSTOM_ENVONLY"); r.Source != client.SourceEnvironment {
		t.Fatalf("source = %v", r.Source)
	}

	t0 := time.Now()
	put(t, c, "OPENAI_API_KEY", "sk-2")
	waitValue(t, cache, "OPENAI_API_KEY", "sk-2", 3*time.Second)
	t.Logf("change visible in the cache %v after the write began", time.Since(t0))
	put(t, c, "SLACK_BOT_TOKEN", "xoxb-2")
	waitValue(t, cache, "SLACK_BOT_TOKEN", "xoxb-2", 3*time.Second)
	// The database value goes: the environment takes over.
	if _, err := c.DeleteSecret(ctx, "OPENAI_API_KEY"); err != nil {
		t.Fatal(err)
	}
	waitValue(t, cache, "OPENAI_API_KEY", "sk-env", 3*time.Second)
	// A new version with the same value changes nothing.
	put(t, c, "SLACK_BOT_TOKEN", "xoxb-2")
	put(t, c, "CUSTOM_MISSING", "now")
	waitValue(t, cache, "CUSTOM_MISSING", "now", 3*time.Second)

	changed, restarted := rec.keys()
	if want := []string{"OPENAI_API_KEY", "SLACK_BOT_TOKEN", "OPENAI_API_KEY", "CUSTOM_MISSING"}; !slices.Equal(changed, want) {
		t.Fatalf("changed = %v, want %v", changed, want)
	}
	if want := []string{"SLACK_BOT_TOKEN"}; !slices.Equal(restarted, want) {
		t.Fatalf("restart required = %v, want %v", restarted, want)
	}
	rec.mu.Lock()
	first := rec.changes[0]
	rec.mu.Unlock()
	if first.Old.Value != "sk-1" || first.New.Value != "sk-2" || first.Event.Kind != client.ChangeValueAdded || first.RestartRequired {
		t.Fatalf("first change = %+v", first)
	}

	// Restart tracking: the cache registered its loaded revision.
	pending, _, err := c.ListConsumers(ctx, true)
	if err != nil || len(pending) != 1 || pending[0].Pending[0].Key != "SLACK_BOT_TOKEN" {
		t.Fatalf("pending consumers = %+v, %v", pending, err)
	}
	if err := cache.MarkLoaded(ctx); err != nil {
		t.Fatal(err)
	}
	if pending, _, err := c.ListConsumers(ctx, true); err != nil || len(pending) != 0 {
		t.Fatalf("pending after MarkLoaded = %+v, %v", pending, err)
	}
}

func TestCacheKeepsServingThroughServerRestart(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	a := startServer(t, serverOpts{addr: addr})
	c := dial(t, addr)
	put(t, c, "CUSTOM_R", "before")
	const bound = 1500 * time.Millisecond
	cache, err := c.NewCache(context.Background(), client.CacheKeys("CUSTOM_R"),
		client.CacheMaxStaleness(bound), client.CacheProgressInterval(progressInterval))
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()

	stopping := time.Now()
	a.Stop()
	// Down, within the bound: the last value is served.
	if v, err := cache.Get("CUSTOM_R"); err != nil || v != "before" {
		t.Fatalf("Get while down = %q, %v", v, err)
	}
	b := startServer(t, serverOpts{databaseURL: a.DatabaseURL, kekURL: a.KEKURL})
	put(t, dial(t, b.GRPCAddr()), "CUSTOM_R", "during")
	// Past the bound: fails closed.
	eventually(t, 5*time.Second, "cache still serving after its staleness bound", func() bool {
		_, err := cache.Get("CUSTOM_R")
		return errors.Is(err, client.ErrStale)
	})
	// The last contact was at most one progress interval before the stop.
	if d := time.Since(stopping); d < bound-progressInterval {
		t.Fatalf("failed closed %v after the server stopped, before the %v bound", d, bound)
	}
	if st := cache.Status(); !st.Stale || st.Err == nil {
		t.Fatalf("status = %+v", st)
	}
	// Back on the same address: caught up, including the change made
	// while it was away.
	startServer(t, serverOpts{addr: addr, databaseURL: a.DatabaseURL, kekURL: a.KEKURL})
	waitValue(t, cache, "CUSTOM_R", "during", 5*time.Second)
	put(t, c, "CUSTOM_R", "after")
	waitValue(t, cache, "CUSTOM_R", "after", 3*time.Second)
}

func TestCacheStartsWhileServiceDown(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	env := envOf(map[string]string{"SLACK_BOT_TOKEN": "xoxb-env"})
	c := dial(t, addr, client.WithEnvironment(env))
	rec := &recorder{}
	cache, err := c.NewCache(context.Background(), append(rec.options(), client.CacheKeys("SLACK_BOT_TOKEN"),
		client.CacheProgressInterval(progressInterval))...)
	if err != nil {
		t.Fatalf("NewCache with the service down: %v", err)
	}
	defer cache.Close()
	r, err := cache.Resolved("SLACK_BOT_TOKEN")
	if err != nil || r.Value != "xoxb-env" || r.Source != client.SourceEnvironment || !r.Fallback() {
		t.Fatalf("fallback = %v, %v", r, err)
	}
	// The service comes up with a value: the background retry loads it.
	srv := startServer(t, serverOpts{addr: addr})
	put(t, dial(t, srv.GRPCAddr()), "SLACK_BOT_TOKEN", "xoxb-db")
	waitValue(t, cache, "SLACK_BOT_TOKEN", "xoxb-db", 10*time.Second)
	if r, _ := cache.Resolved("SLACK_BOT_TOKEN"); r.Source != client.SourceDatabase || r.Fallback() {
		t.Fatalf("after recovery = %v", r)
	}
	if _, restarted := rec.keys(); !slices.Equal(restarted, []string{"SLACK_BOT_TOKEN"}) {
		t.Fatalf("restarts = %v", restarted)
	}
}

func TestCacheCategories(t *testing.T) {
	t.Parallel()
	srv := startServer(t, serverOpts{})
	c := dial(t, srv.GRPCAddr())
	put(t, c, "SLACK_BOT_TOKEN", "xoxb-1")
	cache, err := c.NewCache(context.Background(), client.CacheCategories("slack"), client.CacheKeys("CUSTOM_ALSO"),
		client.CacheProgressInterval(progressInterval))
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	keys := cache.Keys()
	for _, k := range []string{"SLACK_APP_TOKEN", "SLACK_BOT_TOKEN", "CUSTOM_ALSO"} {
		if !slices.Contains(keys, k) {
			t.Fatalf("keys %v lack %s", keys, k)
		}
	}
	if slices.Contains(keys, "OPENAI_API_KEY") {
		t.Fatalf("keys %v include another category", keys)
	}
	// A key created later in the category joins; other categories don't.
	put(t, c, "CUSTOM_SLACK_EXTRA", "x", client.WithCategory("slack"))
	put(t, c, "CUSTOM_ALSO", "y")
	put(t, c, "OPENAI_API_KEY", "sk-1")
	waitValue(t, cache, "CUSTOM_SLACK_EXTRA", "x", 3*time.Second)
	waitValue(t, cache, "CUSTOM_ALSO", "y", 3*time.Second)
	if _, err := cache.Get("OPENAI_API_KEY"); !errors.Is(err, client.ErrNotCached) {
		t.Fatalf("Get(other category) = %v", err)
	}
	var cfg struct {
		Token string `env:"SLACK_BOT_TOKEN,required"`
		Extra string `env:"CUSTOM_SLACK_EXTRA"`
	}
	if err := cache.Load(context.Background(), &cfg); err != nil || cfg.Token != "xoxb-1" || cfg.Extra != "x" {
		t.Fatalf("Load = %+v, %v", cfg, err)
	}
	// A category as a person writes it ("Slack", " slack" from a comma
	// list) is the service's "slack": the cache follows its changes too
	// (it loaded them, and then ignored every change event: the events
	// carry "slack").
	spaced, err := c.NewCache(context.Background(), client.CacheCategories(" Slack"), client.CacheProgressInterval(progressInterval))
	if err != nil {
		t.Fatal(err)
	}
	defer spaced.Close()
	put(t, c, "SLACK_BOT_TOKEN", "xoxb-2")
	waitValue(t, spaced, "SLACK_BOT_TOKEN", "xoxb-2", 3*time.Second)
	if _, err := c.NewCache(context.Background(), client.CacheCategories("no such category!")); err == nil {
		t.Error("NewCache accepted a category that is not one")
	}
}

func BenchmarkCacheGet(b *testing.B) {
	srv := startServer(b, serverOpts{})
	c := dial(b, srv.GRPCAddr())
	keys := []string{"SLACK_SIGNING_SECRET", "GOOGLE_AI_API_KEY", "CUSTOM_BENCH", "GITHUB_TOKEN"}
	for _, k := range keys {
		put(b, c, k, "value-of-"+k)
	}
	cache, err := c.NewCache(context.Background(), client.CacheKeys(keys...), client.CacheCategories("slack", "ai", "github"))
	if err != nil {
		b.Fatal(err)
	}
	defer cache.Close()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := cache.Get(keys[i&3]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}
