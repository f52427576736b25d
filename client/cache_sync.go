package client

import (
	"cmp"
	"context"
	"errors"
	"maps"
	"math/rand/v2"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
)

// load reads the whole set in one snapshot and swaps it in; with notify,
// values that differ from the previous snapshot fire the callbacks.
func (c *Cache) load(ctx context.Context, notify bool) error {
	keys := maps.Clone(c.keySet)
	restart := map[string]bool{}
	var listRev int64
	// Categories are listed for their keys; a key-only set is listed too,
	// once, for the restart flags that BatchAccess does not return.
	cats := c.o.categories
	if len(cats) == 0 {
		cats = []string{""}
	}
	for _, cat := range cats {
		secrets, rev, err := c.client.ListSecrets(ctx, ListSecretsOptions{Category: cat})
		if err != nil {
			if errors.Is(err, ErrPermissionDenied) && cat == "" {
				break // only the flags are lost
			}
			return err
		}
		if listRev == 0 || rev < listRev {
			listRev = rev
		}
		for _, s := range secrets {
			restart[s.Key] = s.RestartRequired
			if cat != "" {
				keys[s.Key] = true
			}
		}
	}
	list := slices.Sorted(maps.Keys(keys))
	entries := make(map[string]*cacheEntry, len(list))
	rev := listRev
	if len(list) > 0 {
		results, batchRev, err := c.client.BatchAccess(ctx, list, MinRevision(c.loadFloor))
		if err != nil {
			return err
		}
		if rev == 0 || batchRev < rev {
			rev = batchRev
		}
		old := *c.snap.Load()
		for _, k := range list {
			entries[k] = c.entryFrom(k, results[k], old[k])
		}
	}
	c.restart = restart
	c.apply(entries, true, nil, nil, notify)
	// The snapshot's own revision, even below the floor: a list from a
	// replica that trails may lack a key created since, and the watch
	// resumed from there sends its creation again (its values are at
	// least at the floor: BatchAccess waited for it).
	c.rev.Store(rev)
	c.needLoad = false
	c.touch()
	if c.refused.Swap(nil) != nil {
		c.client.opts.logger.Info("secrets: the service accepts the cache's credentials again")
	}
	if notify && c.loaded.Load() == 0 {
		// The process still runs on the fallbacks it started with, whatever
		// the service has now: say so, so that the service lists it as
		// pending every restart-required change to its keys (the watch
		// reports nothing while loaded is 0, which keeps this).
		if err := c.reportLoaded(ctx, 0); err != nil {
			c.client.opts.logger.Warn("secrets: could not report that the process runs on fallback values", "error", err)
		}
	}
	return nil
}

// entryFrom resolves one key from its BatchAccess result.
func (c *Cache) entryFrom(key string, br BatchResult, prev *cacheEntry) *cacheEntry {
	switch {
	case br.Err == nil && br.Value.Key != "":
		v := br.Value
		return &cacheEntry{val: string(v.Data), res: Resolved{Key: key, Value: string(v.Data), Source: SourceDatabase, Version: v.Version, Revision: v.Revision}}
	case br.Err == nil, errors.Is(br.Err, ErrNotFound), errors.Is(br.Err, ErrVersionNotEnabled):
		return c.fallbackEntry(key, nil)
	case unreachable(br.Err) && prev != nil:
		return prev // e.g. the KMS is down: keep what we have
	case unreachable(br.Err):
		return c.fallbackEntry(key, br.Err)
	}
	return &cacheEntry{err: br.Err}
}

func (c *Cache) fallbackEntry(key string, serviceErr error) *cacheEntry {
	r, err := c.client.fallback(key, serviceErr, true)
	if err != nil {
		return &cacheEntry{err: err}
	}
	return &cacheEntry{val: r.Value, res: r}
}

// apply swaps in a new snapshot (replacing it whole, or overlaying
// entries) and fires callbacks for changed values, in the revision order
// of their events (key order after a reload). restart holds, per key,
// whether any event merged into the entry required a restart.
func (c *Cache) apply(entries map[string]*cacheEntry, replace bool, events map[string]ChangeEvent, restart map[string]bool, notify bool) {
	old := *c.snap.Load()
	next := entries
	if !replace {
		next = maps.Clone(old)
		maps.Copy(next, entries)
	}
	c.snap.Store(&next)
	if !notify || (c.o.onChange == nil && c.o.onRestart == nil) {
		return
	}
	order := slices.SortedFunc(maps.Keys(entries), func(a, b string) int {
		return cmp.Or(cmp.Compare(events[a].Revision, events[b].Revision), cmp.Compare(a, b))
	})
	for _, k := range order {
		o, n := old[k], entries[k]
		if o != nil && o.val == n.val && (o.err == nil) == (n.err == nil) {
			continue
		}
		ch := Change{Key: k, New: n.res, Event: events[k], RestartRequired: c.restart[k]}
		if o != nil {
			ch.Old = o.res
		}
		if _, ok := events[k]; ok {
			ch.RestartRequired = restart[k]
		}
		if c.o.onChange != nil {
			c.o.onChange(ch)
		}
		if ch.RestartRequired && c.o.onRestart != nil {
			c.o.onRestart(ch)
		}
	}
}

// run keeps the cache fresh until ctx ends: (re)load when needed, then
// follow the change stream.
func (c *Cache) run(ctx context.Context) {
	defer close(c.done)
	b := newBackoff(c.client.opts.retry)
	for ctx.Err() == nil {
		if c.needLoad {
			if err := c.load(ctx, true); err != nil {
				if ctx.Err() != nil {
					return
				}
				if serviceBehind(err) {
					c.loadFloor = 0
				}
				sleepCtx(ctx, c.failed(err, b, "cache load failed; retrying"))
				continue
			}
			b.reset()
		}
		err := c.follow(ctx)
		if ctx.Err() != nil {
			return
		}
		c.needLoad = true
		c.loadFloor = c.rev.Load()
		if serviceBehind(err) {
			c.loadFloor = 0
		}
		if errors.Is(err, ErrRelistRequired) {
			c.setErr(err)
			c.client.opts.logger.Info("secrets: change stream needs a relist; reloading", "error", err)
			continue
		}
		sleepCtx(ctx, c.failed(err, b, "cache lost the change stream; reloading"))
	}
}

// serviceBehind reports whether the service answered that it is behind
// the revision asked for (REVISION_AHEAD: a restored backup, or a replica
// that cannot catch up), as opposed to a compacted one.
func serviceBehind(err error) bool {
	return errors.Is(err, ErrRelistRequired) && !errors.Is(err, ErrRevisionCompacted)
}

// refusedCredentials reports whether the service refused the caller's
// credentials rather than failed: retrying soon cannot fix that.
func refusedCredentials(err error) bool {
	switch Code(err) {
	case codes.Unauthenticated, codes.PermissionDenied:
		return true
	}
	return false
}

// failed records an interruption and returns the wait before the next
// attempt: the retry backoff, or the slow probe after a refusal (logged
// once, when the cache enters that state).
func (c *Cache) failed(err error, b *backoff, what string) time.Duration {
	c.interrupted(err)
	if refusedCredentials(err) {
		if c.refused.Swap(&refusal{err: err}) == nil {
			c.client.opts.logger.Error("secrets: the service refused the cache's credentials; values from the service are withheld until it accepts them",
				"error", err, "probe_every", c.o.probe)
		}
		// ±20% jitter, as every backoff here.
		return time.Duration(float64(c.o.probe) * (0.8 + 0.4*rand.Float64()))
	}
	d := b.next()
	c.client.opts.logger.Warn("secrets: "+what, "error", err, "retry_in", d.Round(time.Millisecond))
	return d
}

// follow applies the change stream until it fails for good or a re-fetch
// fails (both answered by a reload).
func (c *Cache) follow(ctx context.Context) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	o := watchOptions{start: c.rev.Load(), afterZero: true, interval: c.o.interval, buffer: 256, loadedRef: &c.loaded,
		alive: func(int64) { c.touch() }, onError: c.interrupted}
	o.keys, o.categories = c.scope()
	ch := c.client.watch(wctx, o)
	for r := range ch {
		if r.Err != nil {
			return r.Err
		}
		events := r.Events
		var endErr error
	drain: // batch what has queued up into one re-fetch
		for len(events) > 0 {
			select {
			case more, ok := <-ch:
				if !ok {
					break drain
				}
				events = append(events, more.Events...)
				if more.Err != nil {
					endErr = more.Err
					break drain
				}
			default:
				break drain
			}
		}
		if len(events) > 0 {
			if err := c.applyEvents(ctx, events); err != nil {
				return err
			}
		}
		if endErr != nil {
			return endErr
		}
		if r.Revision > c.rev.Load() {
			c.rev.Store(r.Revision)
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return errors.New("secrets: change stream closed")
}

// scope is the keys and categories the cache asks the service for. The
// service ANDs key and category filters; a set with both is filtered here
// instead.
func (c *Cache) scope() (keys, categories []string) {
	switch {
	case len(c.o.categories) == 0:
		return c.o.keys, nil
	case len(c.o.keys) == 0:
		return nil, c.o.categories
	}
	return nil, nil
}

// interrupted records an interruption (from the cache's goroutine, or the
// watch's for those it recovers from by itself) and tells OnError, one
// call at a time.
func (c *Cache) interrupted(err error) {
	c.setErr(err)
	if c.o.onError != nil {
		c.onErrorMu.Lock()
		defer c.onErrorMu.Unlock()
		c.o.onError(err)
	}
}

func (c *Cache) wants(key, category string) bool {
	return c.keySet[key] || c.catSet[category]
}

// applyEvents re-fetches the keys whose values may have changed, in one
// BatchAccess, and applies them.
func (c *Cache) applyEvents(ctx context.Context, events []ChangeEvent) error {
	last := map[string]ChangeEvent{}
	// Several changes to a key merge into one re-fetch; a restart is
	// needed if any of them needed one.
	restart := map[string]bool{}
	var maxRev int64
	for _, ev := range events {
		maxRev = max(maxRev, ev.Revision)
		if ev.Key == "" || !c.wants(ev.Key, ev.Category) {
			continue
		}
		c.restart[ev.Key] = ev.RestartRequired
		if ev.Kind.affectsValue() {
			last[ev.Key] = ev
			restart[ev.Key] = restart[ev.Key] || ev.RestartRequired
		}
	}
	var fetch []string
	entries := map[string]*cacheEntry{}
	for k, ev := range last {
		if ev.Kind == ChangeSecretDeleted {
			entries[k] = c.fallbackEntry(k, nil)
		} else {
			fetch = append(fetch, k)
		}
	}
	if len(fetch) > 0 {
		slices.Sort(fetch)
		// At least the events' revision: the event may have come from a
		// replica ahead of the one that answers this read.
		results, _, err := c.client.BatchAccess(ctx, fetch, MinRevision(maxRev))
		if err != nil {
			return err
		}
		c.touch()
		old := *c.snap.Load()
		for _, k := range fetch {
			entries[k] = c.entryFrom(k, results[k], old[k])
		}
	}
	if len(entries) > 0 {
		c.apply(entries, false, last, restart, true)
	}
	if maxRev > c.rev.Load() {
		c.rev.Store(maxRev)
	}
	return nil
}
