package client

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// CacheOption configures a Cache.
type CacheOption func(*cacheOptions)

type cacheOptions struct {
	keys       []string
	categories []string
	maxStale   time.Duration
	interval   time.Duration
	onChange   func(Change)
	onRestart  func(Change)
}

// CacheKeys adds keys to the cache's set.
func CacheKeys(keys ...string) CacheOption {
	return func(o *cacheOptions) { o.keys = append(o.keys, keys...) }
}

// CacheCategories adds every key of these categories (catalog slots
// included, and keys created later) to the cache's set.
func CacheCategories(categories ...string) CacheOption {
	return func(o *cacheOptions) { o.categories = append(o.categories, categories...) }
}

// CacheMaxStaleness bounds how long the cache keeps serving its values
// without contact with the service (default 1 hour, AWS's cache TTL); after
// that Get fails with ErrStale until contact returns. 0 serves forever.
func CacheMaxStaleness(d time.Duration) CacheOption {
	return func(o *cacheOptions) { o.maxStale = d }
}

// CacheProgressInterval is the service's watch progress interval (default
// 5 s); a change stream silent for twice as long is reconnected.
func CacheProgressInterval(d time.Duration) CacheOption {
	return func(o *cacheOptions) { o.interval = d }
}

// OnChange calls fn after a key's resolved value changed (whatever the
// restart flag). Callbacks run one at a time on the cache's goroutine:
// return quickly.
func OnChange(fn func(Change)) CacheOption {
	return func(o *cacheOptions) { o.onChange = fn }
}

// OnRestartRequired calls fn after the value of a key whose consumers must
// restart changed (after OnChange). Get already returns the new value.
func OnRestartRequired(fn func(Change)) CacheOption {
	return func(o *cacheOptions) { o.onRestart = fn }
}

// Change describes a changed value for the cache's callbacks.
type Change struct {
	Key string
	// Old and New are the resolutions before and after; Source is
	// SourceNone when the key was (or is now) configured nowhere.
	Old, New Resolved
	// RestartRequired: consumers must restart to pick the change up.
	RestartRequired bool
	// Event is the change that caused it; zero after a reload.
	Event ChangeEvent
}

// Cache serves a set of keys from memory and keeps them fresh through the
// change stream. Get is lock-free and allocation-free.
type Cache struct {
	client *Client
	o      cacheOptions
	keySet map[string]bool
	catSet map[string]bool

	snap        atomic.Pointer[map[string]*cacheEntry]
	stale       atomic.Bool
	lastContact atomic.Int64 // unix nanoseconds
	rev         atomic.Int64
	loaded      atomic.Int64

	// Owned by the cache goroutine (and NewCache before it starts).
	needLoad bool
	restart  map[string]bool

	mu      sync.Mutex
	lastErr error

	cancel context.CancelFunc
	done   chan struct{}
}

type cacheEntry struct {
	val string
	err error
	res Resolved
}

// NewCache loads the keys and categories named by opts in one snapshot
// (ListSecrets for categories, BatchAccess for the values), then follows
// the change stream from that snapshot's revision until Close. Values
// resolve as Resolve does. If the service is unreachable, the cache starts
// from the environment and defaults (Resolved.Fallback) and keeps trying
// in the background; ctx bounds only this first attempt. Other errors
// (bad keys, missing rights) fail.
func (c *Client) NewCache(ctx context.Context, opts ...CacheOption) (*Cache, error) {
	o := cacheOptions{maxStale: time.Hour, interval: 5 * time.Second}
	for _, opt := range opts {
		opt(&o)
	}
	if len(o.keys) == 0 && len(o.categories) == 0 {
		return nil, errors.New("secrets: NewCache needs CacheKeys or CacheCategories")
	}
	for _, k := range o.keys {
		if !ValidKey(k) {
			return nil, fmt.Errorf("secrets: NewCache: %q is not a valid key (^[A-Z][A-Z0-9_]{0,127}$)", k)
		}
	}
	cc := &Cache{client: c, o: o, keySet: map[string]bool{}, catSet: map[string]bool{}, restart: map[string]bool{}, done: make(chan struct{})}
	for _, k := range o.keys {
		cc.keySet[k] = true
	}
	for _, cat := range o.categories {
		cc.catSet[cat] = true
	}
	cc.touch()
	empty := map[string]*cacheEntry{}
	cc.snap.Store(&empty)
	if err := cc.load(ctx, false); err != nil {
		if !unreachable(err) {
			return nil, err
		}
		c.opts.logger.Warn("secrets: service unreachable; cache starts from environment and defaults", "error", err)
		cc.setErr(err)
		cc.needLoad = true
		fb := make(map[string]*cacheEntry, len(o.keys))
		for _, k := range o.keys {
			fb[k] = cc.fallbackEntry(k, err)
		}
		cc.snap.Store(&fb)
	}
	bg, cancel := context.WithCancel(context.Background())
	cc.cancel = cancel
	go cc.run(bg)
	if o.maxStale > 0 {
		go cc.watchStaleness(bg)
	}
	return cc, nil
}

// Get returns key's current value. It fails with ErrStale once the cache
// has been out of contact longer than its bound, ErrNotCached for a key
// outside its set, and a *NotConfiguredError for a key configured nowhere.
func (c *Cache) Get(key string) (string, error) {
	if c.stale.Load() {
		return "", ErrStale
	}
	e, ok := (*c.snap.Load())[key]
	if !ok {
		return "", ErrNotCached
	}
	return e.val, e.err
}

// Resolved returns key's value with its provenance, like Client.Resolve.
func (c *Cache) Resolved(key string) (Resolved, error) {
	if c.stale.Load() {
		return Resolved{}, ErrStale
	}
	e, ok := (*c.snap.Load())[key]
	if !ok {
		return Resolved{}, ErrNotCached
	}
	return e.res, e.err
}

// Keys returns the cached keys, sorted.
func (c *Cache) Keys() []string {
	m := *c.snap.Load()
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// Revision returns the revision the cached values are at least as new as
// (0 before the first successful load).
func (c *Cache) Revision() int64 { return c.rev.Load() }

// CacheStatus is a cache's health.
type CacheStatus struct {
	Revision    int64
	LastContact time.Time
	Stale       bool
	// Err is the last error talking to the service, nil once it answers.
	Err error
}

// Status reports the cache's health, e.g. for a readiness probe.
func (c *Cache) Status() CacheStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	return CacheStatus{Revision: c.rev.Load(), LastContact: time.Unix(0, c.lastContact.Load()),
		Stale: c.stale.Load(), Err: c.lastErr}
}

// MarkLoaded records that the process now runs with the cache's current
// values (e.g. after restarting for a restart-required change): the cache
// reports its revision as the consumer's loaded revision, now (when the
// client has a WithConsumer identity) and on every reconnect.
func (c *Cache) MarkLoaded(ctx context.Context) error {
	rev := c.rev.Load()
	if rev == 0 {
		return nil
	}
	c.loaded.Store(rev)
	if c.client.opts.service == "" {
		return nil
	}
	_, err := c.client.ReportConsumerState(ctx, Consumer{}, rev, c.o.keys, c.o.categories)
	return err
}

// Close stops following changes. Get keeps answering from the last values.
func (c *Cache) Close() error {
	c.cancel()
	<-c.done
	return nil
}

func (c *Cache) touch() {
	c.lastContact.Store(time.Now().UnixNano())
	c.stale.Store(false)
	c.setErr(nil)
}

func (c *Cache) setErr(err error) {
	c.mu.Lock()
	c.lastErr = err
	c.mu.Unlock()
}

// watchStaleness fails the cache closed when contact has been lost for
// longer than the bound; a flag keeps the check out of Get.
func (c *Cache) watchStaleness(ctx context.Context) {
	tick := min(max(c.o.maxStale/10, 10*time.Millisecond), time.Second)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		since := time.Since(time.Unix(0, c.lastContact.Load()))
		if since > c.o.maxStale && !c.stale.Swap(true) {
			c.client.opts.logger.Error("secrets: no contact with the service; cache fails closed", "since", since.Round(time.Second), "bound", c.o.maxStale)
		}
	}
}
