package client

import (
	"context"
	"errors"
	"maps"
	"slices"
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
		results, batchRev, err := c.client.BatchAccess(ctx, list)
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
	c.apply(entries, true, nil, notify)
	c.rev.Store(rev)
	if c.loaded.Load() == 0 {
		c.loaded.Store(rev)
	}
	c.needLoad = false
	c.touch()
	c.setErr(nil)
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
// entries) and fires callbacks for changed values.
func (c *Cache) apply(entries map[string]*cacheEntry, replace bool, events map[string]ChangeEvent, notify bool) {
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
	for _, k := range slices.Sorted(maps.Keys(entries)) {
		o, n := old[k], entries[k]
		if o != nil && o.val == n.val && (o.err == nil) == (n.err == nil) {
			continue
		}
		ch := Change{Key: k, New: n.res, Event: events[k], RestartRequired: c.restart[k]}
		if o != nil {
			ch.Old = o.res
		}
		if ev, ok := events[k]; ok {
			ch.RestartRequired = ev.RestartRequired
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
				c.setErr(err)
				d := b.next()
				c.client.opts.logger.Warn("secrets: cache load failed; retrying", "error", err, "retry_in", d)
				sleepCtx(ctx, d)
				continue
			}
			b.reset()
		}
		err := c.follow(ctx)
		if ctx.Err() != nil {
			return
		}
		c.setErr(err)
		c.needLoad = true
		if errors.Is(err, ErrRelistRequired) {
			c.client.opts.logger.Info("secrets: change stream needs a relist; reloading", "error", err)
			continue
		}
		d := b.next()
		c.client.opts.logger.Warn("secrets: cache lost the change stream; reloading", "error", err, "retry_in", d)
		sleepCtx(ctx, d)
	}
}

// follow applies the change stream until it fails for good or a re-fetch
// fails (both answered by a reload).
func (c *Cache) follow(ctx context.Context) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	o := watchOptions{start: c.rev.Load(), afterZero: true, interval: c.o.interval, buffer: 256, loadedRef: &c.loaded,
		alive: func(int64) { c.touch() }, onError: c.setErr}
	// The service ANDs key and category filters; a set with both is
	// filtered here instead.
	switch {
	case len(c.o.categories) == 0:
		o.keys = c.o.keys
	case len(c.o.keys) == 0:
		o.categories = c.o.categories
	}
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

func (c *Cache) wants(key, category string) bool {
	return c.keySet[key] || c.catSet[category]
}

// applyEvents re-fetches the keys whose values may have changed, in one
// BatchAccess, and applies them.
func (c *Cache) applyEvents(ctx context.Context, events []ChangeEvent) error {
	last := map[string]ChangeEvent{}
	var maxRev int64
	for _, ev := range events {
		maxRev = max(maxRev, ev.Revision)
		if ev.Key == "" || !c.wants(ev.Key, ev.Category) {
			continue
		}
		c.restart[ev.Key] = ev.RestartRequired
		if ev.Kind.affectsValue() {
			last[ev.Key] = ev
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
		old := *c.snap.Load()
		for _, k := range fetch {
			entries[k] = c.entryFrom(k, results[k], old[k])
		}
	}
	if len(entries) > 0 {
		c.apply(entries, false, last, true)
	}
	if maxRev > c.rev.Load() {
		c.rev.Store(maxRev)
	}
	return nil
}
