package client_test

import (
	"context"
	"testing"
	"time"

	"github.com/orient-bot/secrets/client"
	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/server/app"
)

// TestCacheDropsExpiredValue: a cached value stops being served once the
// service publishes SECRET_EXPIRED for it: the key resolves as for a
// disabled version (here the environment), OnChange and OnRestartRequired
// hear of it, and Resolve's last-known value is forgotten too, so an
// outage afterwards does not bring the expired value back.
func TestCacheDropsExpiredValue(t *testing.T) {
	t.Parallel()
	if got := client.ChangeKind(pb.ChangeKind_CHANGE_KIND_SECRET_EXPIRED); got != client.ChangeSecretExpired || got.String() != "secret_expired" {
		t.Fatalf("CHANGE_KIND_SECRET_EXPIRED is %v (%d)", got, int(got))
	}
	if k, ok := client.ParseChangeKind("secret_expired"); !ok || k != client.ChangeSecretExpired {
		t.Fatalf("ParseChangeKind(secret_expired) = %v, %v", k, ok)
	}
	addr := freeAddr(t)
	srv := startServer(t, serverOpts{addr: addr, configure: func(c *app.Config) { c.RotationCheckInterval = 100 * time.Millisecond }})
	env := envOf(map[string]string{"CUSTOM_EXP": "from-env"})
	c := dial(t, addr, client.WithEnvironment(env), client.WithRetry(fastRetry), client.WithFallbackWait(200*time.Millisecond))
	ctx := context.Background()
	put(t, c, "CUSTOM_EXP", "from-db", client.WithRestartRequired(true))
	put(t, c, "CUSTOM_KEEP", "kept")
	// The API refuses a past expire time: expire shortly, but after the
	// cache below has loaded (under CI's -race load its set-up took more
	// than 1.5 s, and the first Get already saw the value expired).
	expire := time.Now().Add(5 * time.Second)
	if _, err := c.UpdateSecret(ctx, "CUSTOM_EXP", client.WithExpireTime(expire)); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	cache, err := c.NewCache(ctx, append(rec.options(), client.CacheKeys("CUSTOM_EXP", "CUSTOM_KEEP"),
		client.CacheProgressInterval(progressInterval))...)
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	if v, err := cache.Get("CUSTOM_EXP"); err != nil || v != "from-db" {
		t.Fatalf("Get before expiry = %q, %v", v, err)
	}
	if r, err := c.Resolve(ctx, "CUSTOM_EXP"); err != nil || r.Source != client.SourceDatabase {
		t.Fatalf("Resolve before expiry = %v, %v", r, err)
	}

	waitValue(t, cache, "CUSTOM_EXP", "from-env", 10*time.Second)
	if time.Now().Before(expire) {
		t.Fatal("the cached value was dropped before its expire time")
	}
	if r, err := cache.Resolved("CUSTOM_EXP"); err != nil || r.Source != client.SourceEnvironment {
		t.Fatalf("Resolved after expiry = %v, %v; want the environment", r, err)
	}
	if v, err := cache.Get("CUSTOM_KEEP"); err != nil || v != "kept" {
		t.Fatalf("an unexpired key changed: %q, %v", v, err)
	}
	eventually(t, 5*time.Second, "no OnRestartRequired for the expiry", func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		for _, ch := range rec.restarts {
			if ch.Key == "CUSTOM_EXP" && ch.Event.Kind == client.ChangeSecretExpired && ch.Old.Value == "from-db" && ch.New.Value == "from-env" {
				return true
			}
		}
		return false
	})

	// The service goes away: Resolve must not fall back to the expired
	// value it read before (its last-known value), but to the environment.
	srv.Stop()
	r, err := c.Resolve(ctx, "CUSTOM_EXP")
	if err != nil || r.Source != client.SourceEnvironment || r.Value != "from-env" {
		t.Fatalf("Resolve during an outage after expiry = %v (source %v), %v; want the environment", r, r.Source, err)
	}
}
