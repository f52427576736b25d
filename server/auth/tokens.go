package auth

import (
	"context"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/orient-bot/secrets/server/store"
)

// TokenStore is what the authenticator reads and writes.
type TokenStore interface {
	TokenByHash(ctx context.Context, hash []byte) (store.Token, error)
	// TouchTokens records last-use times by hex-encoded token hash.
	TouchTokens(ctx context.Context, used map[string]time.Time) error
}

// CacheTTL bounds how long a token lookup is reused. A revocation takes
// effect at once on the replica that made it and within CacheTTL elsewhere.
const CacheTTL = 2 * time.Second

// RecheckInterval is how often an open stream's credentials are checked
// again: a stream ends within RecheckInterval+CacheTTL of its token's
// revocation on another replica, and at once at its expiry time.
const RecheckInterval = time.Second

// maxCache bounds the lookup cache.
const maxCache = 10000

// NegativeTTL is how long an unknown token is remembered as unknown, so a
// client retrying a bad token costs no database lookup. Tokens are random
// and shown once, so none becomes valid soon after being tried, except a
// bootstrap token set on another replica (usable here within NegativeTTL).
const NegativeTTL = 2 * time.Second

// maxNegative bounds the unknown-token cache.
const maxNegative = 10000

// maxLookups bounds the token lookups in flight: a flood of distinct bad
// tokens holds at most this many pool connections, not the pool.
const maxLookups = 4

// Authenticator resolves bearer tokens to principals.
type Authenticator struct {
	store TokenStore
	log   *slog.Logger
	now   func() time.Time

	lookups chan struct{} // semaphore of maxLookups

	mu sync.Mutex
	// gen counts Forget calls: a lookup that began before one (it may have
	// read the row before the revocation) does not store its result.
	gen     uint64
	cache   map[string]cached    // by hex hash
	unknown map[string]time.Time // by hex hash: when it was found unknown
	used    map[string]time.Time // last use by hex hash
}

type cached struct {
	hash    []byte
	token   store.Token
	fetched time.Time
}

// NewAuthenticator returns an authenticator over st.
func NewAuthenticator(st TokenStore, log *slog.Logger) *Authenticator {
	return &Authenticator{store: st, log: log, now: time.Now, lookups: make(chan struct{}, maxLookups),
		cache: map[string]cached{}, unknown: map[string]time.Time{}, used: map[string]time.Time{}}
}

// Authenticate returns the principal of a bearer token.
func (a *Authenticator) Authenticate(ctx context.Context, token string) (Principal, error) {
	if token == "" {
		return Principal{}, ErrNoCredentials
	}
	hash := Hash(token)
	id := hex.EncodeToString(hash)
	now := a.now()
	a.mu.Lock()
	c, ok := a.cache[id]
	missed, isUnknown := a.unknown[id]
	a.mu.Unlock()
	if !ok && isUnknown && now.Sub(missed) <= NegativeTTL {
		return Principal{}, ErrUnknownToken
	}
	if !ok || now.Sub(c.fetched) > CacheTTL {
		a.mu.Lock()
		gen := a.gen
		a.mu.Unlock()
		t, err := a.lookup(ctx, hash)
		if errors.Is(err, store.ErrNotFound) {
			a.mu.Lock()
			if len(a.unknown) >= maxNegative {
				clear(a.unknown) // bounded; a flood of distinct tokens is not helped by any cache
			}
			a.unknown[id] = now
			a.mu.Unlock()
			return Principal{}, ErrUnknownToken
		}
		if err != nil {
			// A lookup that did not finish is no verdict on the token: the
			// caller's own deadline or cancellation is reported as such,
			// anything else (a statement timeout, a lost connection) as
			// the database being unavailable, never as bad credentials.
			if ctx.Err() != nil {
				return Principal{}, ctx.Err()
			}
			if errors.Is(err, store.ErrUnavailable) {
				return Principal{}, err
			}
			return Principal{}, fmt.Errorf("%w: token lookup: %w", store.ErrUnavailable, err)
		}
		c = cached{hash: hash, token: t, fetched: now}
		a.mu.Lock()
		if a.gen == gen { // else a token was revoked here meanwhile: this row may predate it
			if len(a.cache) >= maxCache {
				clear(a.cache) // crude but bounded; entries are cheap to refetch
			}
			a.cache[id] = c
		}
		a.mu.Unlock()
	}
	// The lookup was by hash; compare again in constant time anyway.
	if subtle.ConstantTimeCompare(c.hash, hash) != 1 {
		return Principal{}, ErrUnknownToken
	}
	t := c.token
	switch {
	case !t.RevokeTime.IsZero():
		return Principal{}, ErrRevoked
	case !t.ExpireTime.IsZero() && !now.Before(t.ExpireTime):
		return Principal{}, ErrExpired
	}
	a.mu.Lock()
	a.used[id] = now // by hash: a later token of the same name is another token
	a.mu.Unlock()
	return Principal{Name: t.Name, Role: Role(t.Role), Scope: Scope{KeyPatterns: t.KeyPatterns, Categories: t.Categories}, ExpireTime: t.ExpireTime}, nil
}

// lookup reads a token by hash, at most maxLookups at once.
func (a *Authenticator) lookup(ctx context.Context, hash []byte) (store.Token, error) {
	select {
	case a.lookups <- struct{}{}:
	case <-ctx.Done():
		return store.Token{}, ctx.Err()
	}
	defer func() { <-a.lookups }()
	return a.store.TokenByHash(ctx, hash)
}

// Forget drops a token from the cache (after it is revoked here).
func (a *Authenticator) Forget(name string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.gen++
	for id, c := range a.cache {
		if c.token.Name == name {
			delete(a.cache, id)
		}
	}
}

// Run records last-use times in batches until ctx ends, so a read is not
// also a write.
func (a *Authenticator) Run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			a.flush(context.WithoutCancel(ctx))
			return
		case <-t.C:
			a.flush(ctx)
		}
	}
}

func (a *Authenticator) flush(ctx context.Context) {
	a.mu.Lock()
	used := a.used
	a.used = map[string]time.Time{}
	a.mu.Unlock()
	if len(used) == 0 {
		return
	}
	tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := a.store.TouchTokens(tctx, used); err != nil {
		a.log.Warn("recording token last use", "error", err)
	}
}
