// Package readcache keeps the sealed newest versions of recently read
// secrets in memory, so that an access costs no database read — only its
// audit commit. It is kept exact by the change stream: every change the
// replica's hub publishes drops the changed key before the cache claims to
// reflect that revision, and an entry read from the database is kept only
// if no change after its snapshot can have been missed.
//
// What it holds is what the database holds: ciphertext and wrapped data
// key, never a plaintext value. A read it serves reflects every change up
// to the revision it reports; it trails the database by the change
// stream's delivery delay (milliseconds while the hub listens; it serves
// nothing while the hub only polls), never a replica's own writes (those
// are waited for), and never a caller's min_revision.
package readcache

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/orient-bot/secrets/server/store"
	"github.com/orient-bot/secrets/server/watch"
)

// Feed is the change stream the cache follows: the replica's hub.
type Feed interface {
	Subscribe(ctx context.Context, consumer *store.ConsumerID) (*watch.Subscription, error)
	Listening() bool
}

// Cache is the read cache. The zero value is not usable; call New.
type Cache struct {
	feed      Feed
	lastWrite func() int64
	max       int
	log       *slog.Logger

	hits, misses atomic.Int64

	mu      sync.Mutex
	entries map[string]entry
	// applied: every change up to this revision has been applied.
	applied int64
	// following: a subscription is open and applied is its position.
	following bool
}

type entry struct {
	sv  store.SealedVersion
	rev int64 // the database revision its read reflected
}

// New returns a cache of at most max entries following feed; Run feeds it.
// lastWrite reports the revision of this replica's latest committed write,
// which a read must reflect.
func New(feed Feed, lastWrite func() int64, max int, log *slog.Logger) *Cache {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Cache{feed: feed, lastWrite: lastWrite, max: max, log: log, entries: map[string]entry{}}
}

// Get returns the sealed newest version of key and the revision the answer
// reflects, if the cache holds it and reflects at least minRevision and
// this replica's own writes. ok is false otherwise: read the database.
func (c *Cache) Get(key string, minRevision int64) (sv store.SealedVersion, rev int64, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[key]
	if !ok || !c.fresh(minRevision) {
		c.misses.Add(1)
		return store.SealedVersion{}, 0, false
	}
	c.hits.Add(1)
	return e.sv, max(c.applied, e.rev), true
}

// GetAll is Get for several keys answered at one revision: all or none.
func (c *Cache) GetAll(keys []string, minRevision int64) ([]store.SealedVersion, int64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.fresh(minRevision) {
		c.misses.Add(1)
		return nil, 0, false
	}
	out := make([]store.SealedVersion, len(keys))
	rev := c.applied
	for i, k := range keys {
		// An entry read after c.applied may hold a change the cache has
		// not applied yet; beside others exact at c.applied, that would
		// be a combination the database never held.
		e, ok := c.entries[k]
		if !ok || e.rev > c.applied {
			c.misses.Add(1)
			return nil, 0, false
		}
		out[i] = e.sv
	}
	c.hits.Add(1)
	return out, rev, true
}

// fresh reports whether the cache may answer; c.mu must be held.
func (c *Cache) fresh(minRevision int64) bool {
	return c.following && c.feed.Listening() && c.applied >= minRevision && c.applied >= c.lastWrite()
}

// Put offers the newest version of key as read from the database at
// revision rev. It is kept only if every change after rev will still reach
// the cache (rev is not older than what the cache has applied) and it is
// not older than what the cache holds for key.
func (c *Cache) Put(key string, sv store.SealedVersion, rev int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.following || rev < c.applied {
		return
	}
	old, ok := c.entries[key]
	if ok && old.rev > rev {
		return // a concurrent, newer read got here first: never go back
	}
	if !ok && len(c.entries) >= c.max {
		for k := range c.entries { // evict one, at random
			delete(c.entries, k)
			break
		}
	}
	c.entries[key] = entry{sv: sv, rev: rev}
}

// Stats are the cache's figures, for metrics.
type Stats struct {
	Entries      int
	Hits, Misses int64
}

// Stats returns current figures.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Stats{Entries: len(c.entries), Hits: c.hits.Load(), Misses: c.misses.Load()}
}

// Run follows the feed until ctx ends. When the subscription ends (it fell
// behind, or the hub stops) the cache is emptied and starts over.
func (c *Cache) Run(ctx context.Context) {
	for ctx.Err() == nil {
		sub, err := c.feed.Subscribe(ctx, nil)
		if err != nil {
			if errors.Is(err, watch.ErrStopped) || ctx.Err() != nil {
				return
			}
			c.log.Warn("read cache: subscribing to the change stream", "error", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		c.mu.Lock()
		clear(c.entries)
		c.applied, c.following = sub.Start(), true
		c.mu.Unlock()
		c.follow(ctx, sub)
		c.mu.Lock()
		clear(c.entries)
		c.following = false
		c.mu.Unlock()
		sub.Close()
		if errors.Is(sub.Err(), watch.ErrStopped) {
			return
		}
	}
}

func (c *Cache) follow(ctx context.Context, sub *watch.Subscription) {
	var items []watch.Item
	for {
		var err error
		items, err = sub.Next(ctx, items[:0])
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, watch.ErrStopped) {
				c.log.Info("read cache: change stream ended; starting over", "error", err)
			}
			return
		}
		for _, item := range items {
			c.apply(item)
		}
		clear(items)
	}
}

func (c *Cache) apply(item watch.Item) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if item.Change == nil {
		// A progress mark: everything up to it has been delivered.
		c.applied = max(c.applied, item.Progress)
		return
	}
	if item.Change.Key != "" {
		delete(c.entries, item.Change.Key)
	}
	c.applied = max(c.applied, item.Change.Revision)
}
