package auth

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/orient-bot/secrets/server/store"
)

// fakeTokens is a token table in memory.
type fakeTokens struct {
	mu     sync.Mutex
	byHash map[string]store.Token
	reads  int
}

func (f *fakeTokens) TokenByHash(_ context.Context, hash []byte) (store.Token, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads++
	t, ok := f.byHash[string(hash)]
	if !ok {
		return store.Token{}, store.ErrNotFound
	}
	return t, nil
}

func (f *fakeTokens) TouchTokens(context.Context, map[string]time.Time) error { return nil }

// clock is a settable time source.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }
func newAuth(st TokenStore, c *clock) *Authenticator {
	a := NewAuthenticator(st, slog.New(slog.DiscardHandler))
	a.now = c.now
	return a
}

// TestTokenExpiry: a token works until its expiry time and not from it on,
// judged on every call (a cached lookup does not extend it); the clock is
// injected, nothing sleeps.
func TestTokenExpiry(t *testing.T) {
	c := &clock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	const tok = "osk_test-expiring-token"
	st := &fakeTokens{byHash: map[string]store.Token{string(Hash(tok)): {Name: "short", Role: "reader", ExpireTime: c.t.Add(1500 * time.Millisecond)}}}
	a := newAuth(st, c)
	ctx := context.Background()
	if p, err := a.Authenticate(ctx, tok); err != nil || p.Name != "short" {
		t.Fatalf("before expiry: %+v, %v", p, err)
	}
	c.advance(1499 * time.Millisecond)
	if _, err := a.Authenticate(ctx, tok); err != nil {
		t.Fatalf("1 ms before expiry: %v", err)
	}
	c.advance(time.Millisecond)
	if _, err := a.Authenticate(ctx, tok); !errors.Is(err, ErrExpired) {
		t.Fatalf("at expiry: %v", err)
	}
	if st.reads != 1 {
		t.Errorf("%d store reads within the cache TTL, want 1 (expiry is judged from the cached token)", st.reads)
	}
}

// TestTokenCacheTTL: a revocation made on another replica takes effect once
// the cached lookup is older than CacheTTL, and not before.
func TestTokenCacheTTL(t *testing.T) {
	c := &clock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	const tok = "osk_test-revoked-elsewhere"
	st := &fakeTokens{byHash: map[string]store.Token{string(Hash(tok)): {Name: "bot", Role: "reader"}}}
	a := newAuth(st, c)
	ctx := context.Background()
	if _, err := a.Authenticate(ctx, tok); err != nil {
		t.Fatal(err)
	}
	st.mu.Lock()
	st.byHash[string(Hash(tok))] = store.Token{Name: "bot", Role: "reader", RevokeTime: c.t}
	st.mu.Unlock()
	c.advance(CacheTTL)
	if _, err := a.Authenticate(ctx, tok); err != nil {
		t.Fatalf("within the cache TTL: %v", err)
	}
	c.advance(time.Millisecond)
	if _, err := a.Authenticate(ctx, tok); !errors.Is(err, ErrRevoked) {
		t.Fatalf("after the cache TTL: %v", err)
	}
}
