package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/orient-bot/secrets/server/store"
)

// negFakeTokens knows one token and counts lookups; block holds lookups until
// closed.
type negFakeTokens struct {
	known    []byte
	lookups  atomic.Int64
	inFlight atomic.Int64
	peak     atomic.Int64
	block    chan struct{}
}

func (f *negFakeTokens) TokenByHash(ctx context.Context, hash []byte) (store.Token, error) {
	f.lookups.Add(1)
	n := f.inFlight.Add(1)
	defer f.inFlight.Add(-1)
	for {
		p := f.peak.Load()
		if n <= p || f.peak.CompareAndSwap(p, n) {
			break
		}
	}
	if f.block != nil {
		<-f.block
	}
	if string(hash) == string(f.known) {
		return store.Token{Name: "ok", Role: string(RoleReader)}, nil
	}
	return store.Token{}, store.ErrNotFound
}

func (f *negFakeTokens) TouchTokens(context.Context, map[string]time.Time) error { return nil }

// TestUnknownTokensCached: a bad token retried costs one lookup per
// NegativeTTL, the cache of unknown tokens stays bounded, and a flood of
// distinct bad tokens holds at most maxLookups lookups at once.
func TestUnknownTokensCached(t *testing.T) {
	ctx := context.Background()
	f := &negFakeTokens{known: Hash("osk_good")}
	a := NewAuthenticator(f, slog.New(slog.DiscardHandler))
	now := time.Unix(1000, 0)
	a.now = func() time.Time { return now }
	for range 100 {
		if _, err := a.Authenticate(ctx, "osk_bad"); !errors.Is(err, ErrUnknownToken) {
			t.Fatalf("bad token: %v", err)
		}
	}
	if n := f.lookups.Load(); n != 1 {
		t.Fatalf("100 tries of one bad token: %d lookups, want 1", n)
	}
	now = now.Add(NegativeTTL + time.Millisecond)
	if _, err := a.Authenticate(ctx, "osk_bad"); !errors.Is(err, ErrUnknownToken) || f.lookups.Load() != 2 {
		t.Fatalf("after NegativeTTL: %v, %d lookups, want 2", err, f.lookups.Load())
	}
	if p, err := a.Authenticate(ctx, "osk_good"); err != nil || p.Name != "ok" {
		t.Fatalf("good token: %v, %v", p, err)
	}
	for i := range 3 * maxNegative {
		a.Authenticate(ctx, fmt.Sprint("osk_flood_", i))
	}
	a.mu.Lock()
	size := len(a.unknown)
	a.mu.Unlock()
	if size > maxNegative {
		t.Fatalf("unknown-token cache holds %d, bound %d", size, maxNegative)
	}

	// Concurrency: distinct bad tokens never hold more than maxLookups.
	f2 := &negFakeTokens{block: make(chan struct{})}
	b := NewAuthenticator(f2, slog.New(slog.DiscardHandler))
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() { b.Authenticate(ctx, fmt.Sprint("osk_distinct_", i)) })
	}
	deadline := time.Now().Add(5 * time.Second)
	for f2.inFlight.Load() < maxLookups && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond) // would let more in, if the bound leaked
	if p := f2.peak.Load(); p != maxLookups {
		t.Errorf("peak lookups in flight %d, want %d", p, maxLookups)
	}
	close(f2.block)
	wg.Wait()
	if n := f2.lookups.Load(); n != 50 {
		t.Errorf("%d lookups, want 50", n)
	}
}
