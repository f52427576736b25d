package client

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/orient-bot/secrets/server/catalog"
)

// CacheOption configures a Cache.
type CacheOption func(*cacheOptions)

type cacheOptions struct {
	keys       []string
	categories []string
	maxStale   time.Duration
	interval   time.Duration
	probe      time.Duration
	onChange   func(Change)
	onRestart  func(Change)
	onError    func(error)
}

// DefaultRefusalProbe is how often a cache whose credentials were refused
// asks the service again.
const DefaultRefusalProbe = time.Minute

// CacheKeys adds keys to the cache's set.
func CacheKeys(keys ...string) CacheOption {
	return func(o *cacheOptions) { o.keys = append(o.keys, keys...) }
}

// CacheCategories adds every key of these categories (catalog slots
// included, and keys created later) to the cache's set.
func CacheCategories(categories ...string) CacheOption {
	return func(o *cacheOptions) { o.categories = append(o.categories, categories...) }
}

// CacheMaxStaleness bounds how long the cache keeps serving values it read
// from the service without contact with it (default 1 hour, AWS's cache
// TTL); after that Get fails with ErrStale for those keys until contact
// returns. Any answer counts as contact: change events, the stream's
// progress messages, re-fetches and reloads. Environment and default
// values do not depend on the service and never go stale. 0 serves
// forever. A bound below twice the progress interval would fail a healthy
// idle cache closed between two progress messages: NewCache raises it to
// twice the interval and logs a warning.
func CacheMaxStaleness(d time.Duration) CacheOption {
	return func(o *cacheOptions) { o.maxStale = d }
}

// CacheProgressInterval is the service's watch progress interval (the
// server's --watch-progress-interval, default 5 s); a change stream silent
// for twice as long is reconnected.
func CacheProgressInterval(d time.Duration) CacheOption {
	return func(o *cacheOptions) { o.interval = d }
}

// CacheRefusalProbe is how often a cache whose credentials the service
// refused (UNAUTHENTICATED or PERMISSION_DENIED: a revoked or expired
// token, a role or scope that no longer covers the set) asks again
// (default 1 minute). Such a refusal is not an outage and fast retries
// cannot fix it: until the service accepts the credentials again, Get
// fails for keys read from the service with the refusal (matching
// ErrUnauthenticated or ErrPermissionDenied), Status().Refused is set, the
// client's logger gets one error, and OnError hears of every attempt.
func CacheRefusalProbe(d time.Duration) CacheOption {
	return func(o *cacheOptions) { o.probe = d }
}

// OnError calls fn with every error that interrupts the cache's contact
// with the service (a failed load or re-fetch, a lost or stalled change
// stream), one call at a time, before it retries. Status().Err holds the
// last.
func OnError(fn func(error)) CacheOption {
	return func(o *cacheOptions) { o.onError = fn }
}

// OnChange calls fn after a key's resolved value changed (whatever the
// restart flag). Callbacks run one at a time on the cache's goroutine, in
// revision order: return quickly. Changes that queued up behind a slow
// callback are merged per key into one Change (the latest value, the
// latest event); its RestartRequired is set if any of the merged changes
// required a restart, so a restart notice is never lost by merging.
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
	// RestartRequired: consumers must restart to pick the change up (set
	// if any change merged into this one required it).
	RestartRequired bool
	// Event is the change that caused it (the latest, when several were
	// merged); zero after a reload.
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
	refused     atomic.Pointer[refusal]
	lastContact atomic.Int64 // unix nanoseconds
	rev         atomic.Int64
	// loaded is the revision of the values the process runs with, for
	// restart tracking: the first load's revision, or MarkLoaded's; 0 while
	// the process runs on fallbacks (the service was down at start).
	loaded atomic.Int64

	// Owned by the cache goroutine (and NewCache before it starts).
	needLoad bool
	// loadFloor is the revision a reload's reads must reflect at least:
	// the cache's own, so that a reload after a lost stream, answered by
	// a replica whose view trails, never steps back to older values (and
	// fires callbacks for a rollback). 0 when the service is behind the
	// cache (REVISION_AHEAD: a restored backup), where only a relist at
	// the service's revision can go on.
	loadFloor int64
	restart   map[string]bool

	mu        sync.Mutex
	lastErr   error
	onErrorMu sync.Mutex

	cancel    context.CancelFunc
	done      chan struct{}
	staleDone chan struct{}
}

// refusal is the service's refusal of the cache's credentials.
type refusal struct{ err error }

type cacheEntry struct {
	val string
	err error
	res Resolved
}

// fromService reports whether the entry's value came from the service, so
// that it goes stale without contact and is withheld after a refusal.
func (e *cacheEntry) fromService() bool {
	return e.res.Source == SourceDatabase || e.res.Source == SourceLastKnown
}

// NewCache loads the keys and categories named by opts in one snapshot
// (ListSecrets for categories, BatchAccess for the values), then follows
// the change stream from that snapshot's revision until Close (of the
// cache or of the client). Values resolve as Resolve does. If the service
// is unreachable, NewCache retries it for at most the client's fallback
// wait (WithFallbackWait, default 1 s), then starts from the environment
// and defaults (Resolved.Fallback) — for the keys named and for the
// catalog's keys of the categories named — and keeps trying in the
// background; ctx bounds only this first attempt. Other errors (bad keys,
// refused credentials) fail.
func (c *Client) NewCache(ctx context.Context, opts ...CacheOption) (*Cache, error) {
	o := cacheOptions{maxStale: time.Hour, interval: 5 * time.Second, probe: DefaultRefusalProbe}
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
	// As the service normalizes them ("Slack", " ai" from a comma list):
	// change events carry the normalized category, which the cache matches
	// against its own set.
	for i, cat := range o.categories {
		norm, err := catalog.NormalizeCategory(cat)
		if err != nil {
			return nil, fmt.Errorf("secrets: NewCache: category %q: %w", cat, err)
		}
		o.categories[i] = norm
	}
	if o.interval <= 0 {
		o.interval = 5 * time.Second
	}
	if o.probe <= 0 {
		o.probe = DefaultRefusalProbe
	}
	if floor := 2 * o.interval; o.maxStale > 0 && o.maxStale < floor {
		c.opts.logger.Warn("secrets: cache staleness bound is below twice the progress interval; raised, or a healthy idle cache would fail closed between progress messages",
			"requested", o.maxStale, "bound", floor, "progress_interval", o.interval)
		o.maxStale = floor
	}
	if c.life.Err() != nil {
		return nil, ErrClosed
	}
	cc := &Cache{client: c, o: o, keySet: map[string]bool{}, catSet: map[string]bool{}, restart: map[string]bool{},
		done: make(chan struct{}), staleDone: make(chan struct{})}
	for _, k := range o.keys {
		cc.keySet[k] = true
	}
	for _, cat := range o.categories {
		cc.catSet[cat] = true
	}
	cc.touch()
	empty := map[string]*cacheEntry{}
	cc.snap.Store(&empty)
	if err := cc.load(withRetryBudget(ctx, c.opts.fallbackWait), false); err != nil {
		if !unreachable(err) {
			return nil, err
		}
		c.opts.logger.Warn("secrets: service unreachable; cache starts from environment and defaults", "error", err)
		cc.setErr(err)
		cc.needLoad = true
		fb := make(map[string]*cacheEntry, len(o.keys))
		for _, k := range cc.fallbackKeys() {
			fb[k] = cc.fallbackEntry(k, err)
		}
		cc.snap.Store(&fb)
	} else if !cc.anyFallback() {
		// The process starts with the service's values of this revision.
		cc.loaded.Store(cc.rev.Load())
	}
	bg, cancel := context.WithCancel(c.life)
	cc.cancel = cancel
	if !c.spawn(func() { cc.run(bg) }) {
		cancel()
		return nil, ErrClosed
	}
	if o.maxStale <= 0 || !c.spawn(func() { cc.watchStaleness(bg) }) {
		close(cc.staleDone)
	}
	return cc, nil
}

// fallbackKeys are the keys a cache can serve without the service: those
// named, and the catalog's keys of the categories named.
func (c *Cache) fallbackKeys() []string {
	keys := maps.Clone(c.keySet)
	for _, e := range catalog.Entries() {
		for cat := range c.catSet {
			if strings.EqualFold(strings.TrimSpace(cat), e.Category) {
				keys[e.Key] = true
			}
		}
	}
	return slices.Sorted(maps.Keys(keys))
}

// anyFallback reports whether some cached value stands in for the service.
func (c *Cache) anyFallback() bool {
	for _, e := range *c.snap.Load() {
		if e.res.Fallback() {
			return true
		}
	}
	return false
}

// Get returns key's current value. It fails with ErrNotCached for a key
// outside its set and a *NotConfiguredError for a key configured nowhere.
// A value read from the service fails with the service's refusal
// (ErrUnauthenticated, ErrPermissionDenied) once it refused the cache's
// credentials, and with ErrStale once the cache has been out of contact
// longer than its bound; environment and default values are served
// regardless.
func (c *Cache) Get(key string) (string, error) {
	e, ok := (*c.snap.Load())[key]
	if !ok {
		return "", ErrNotCached
	}
	if e.fromService() {
		if err := c.withheld(); err != nil {
			return "", err
		}
	}
	return e.val, e.err
}

// Resolved returns key's value with its provenance, like Client.Resolve,
// failing as Get does.
func (c *Cache) Resolved(key string) (Resolved, error) {
	e, ok := (*c.snap.Load())[key]
	if !ok {
		return Resolved{}, ErrNotCached
	}
	if e.fromService() {
		if err := c.withheld(); err != nil {
			return Resolved{}, err
		}
	}
	return e.res, e.err
}

// withheld says why values from the service cannot be served now, if so.
func (c *Cache) withheld() error {
	if r := c.refused.Load(); r != nil {
		return r.err
	}
	if c.stale.Load() {
		return ErrStale
	}
	return nil
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
	// Revision is the revision the cached values are at least as new as.
	Revision int64
	// LoadedRevision is the revision of the values the process runs with,
	// as reported for restart tracking: the first load's, or MarkLoaded's;
	// 0 while it runs on fallbacks (the service was down when it started).
	LoadedRevision int64
	LastContact    time.Time
	// MaxStaleness is the staleness bound in force (see CacheMaxStaleness).
	MaxStaleness time.Duration
	Stale        bool
	// Refused: the service refused the cache's credentials (Err says how);
	// values from the service are withheld until it accepts them again.
	Refused bool
	// Err is the last error talking to the service, nil once it answers.
	Err error
}

// Status reports the cache's health, e.g. for a readiness probe.
func (c *Cache) Status() CacheStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	return CacheStatus{Revision: c.rev.Load(), LoadedRevision: c.loaded.Load(), LastContact: time.Unix(0, c.lastContact.Load()),
		MaxStaleness: c.o.maxStale, Stale: c.stale.Load(), Refused: c.refused.Load() != nil, Err: c.lastErr}
}

// MarkLoaded records that the process now runs with the cache's current
// values (e.g. after restarting for a restart-required change): the cache
// reports their revision as the consumer's loaded revision, now (when the
// client has a WithConsumer identity) and on every reconnect. A cache that
// has not loaded from the service yet reports none (0): the process runs
// on fallbacks, and every restart-required change to its keys is pending.
func (c *Cache) MarkLoaded(ctx context.Context) error {
	rev := c.rev.Load()
	if c.anyFallback() {
		rev = 0
	}
	c.loaded.Store(rev)
	return c.reportLoaded(ctx, rev)
}

// reportLoaded tells the service the revision the process runs with (0:
// none, only fallbacks), when the client has a consumer identity.
func (c *Cache) reportLoaded(ctx context.Context, rev int64) error {
	if c.client.opts.service == "" {
		return nil
	}
	keys, categories := c.scope()
	_, err := c.client.ReportConsumerState(ctx, Consumer{}, rev, keys, categories)
	return err
}

// Close stops following changes and returns once the cache's goroutines
// have ended. Get keeps answering from the last values.
func (c *Cache) Close() error {
	c.cancel()
	<-c.done
	<-c.staleDone
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
	defer close(c.staleDone)
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
