package readcache

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/orient-bot/secrets/server/store"
	"github.com/orient-bot/secrets/server/watch"
)

// fakeLog is an in-memory change log a real hub polls.
type fakeLog struct {
	mu      sync.Mutex
	changes []store.Change
}

func (f *fakeLog) commit(key string) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	rev := int64(len(f.changes) + 1)
	f.changes = append(f.changes, store.Change{Revision: rev, Key: key, Kind: store.ChangeValueAdded})
	return rev
}

func (f *fakeLog) Revision(context.Context) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return int64(len(f.changes)), nil
}

func (f *fakeLog) OldestRevision(context.Context) (int64, error) { return 1, nil }

func (f *fakeLog) ChangesAfter(_ context.Context, after, upTo int64, limit int) ([]store.Change, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []store.Change
	for _, c := range f.changes {
		if c.Revision > after && (upTo == 0 || c.Revision <= upTo) && len(out) < limit {
			out = append(out, c)
		}
	}
	return out, nil
}

func (f *fakeLog) Listen(context.Context) (*store.Listener, error) {
	return nil, errors.New("no LISTEN here")
}

func (f *fakeLog) TouchConsumers(context.Context, []store.ConsumerID) error { return nil }

// feed is a polling hub whose "listening" the test sets.
type feed struct {
	*watch.Hub
	listening atomic.Bool
}

func (f *feed) Listening() bool { return f.listening.Load() }

type fixture struct {
	log       *fakeLog
	feed      *feed
	cache     *Cache
	lastWrite atomic.Int64
}

func start(t *testing.T, max int) *fixture {
	t.Helper()
	fx := &fixture{log: &fakeLog{}}
	fx.feed = &feed{Hub: watch.New(fx.log, watch.Options{PollInterval: 5 * time.Millisecond, NoListen: true})}
	fx.feed.listening.Store(true)
	fx.cache = New(fx.feed, fx.lastWrite.Load, max, nil)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go fx.feed.Run(ctx)
	go fx.cache.Run(ctx)
	fx.waitApplied(t, 0)
	return fx
}

// waitApplied waits until the cache follows the feed at rev or later.
func (fx *fixture) waitApplied(t *testing.T, rev int64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		fx.cache.mu.Lock()
		ok := fx.cache.following && fx.cache.applied >= rev
		fx.cache.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("cache never reached revision %d", rev)
		}
		time.Sleep(time.Millisecond)
	}
}

func sealed(key string, version int64) store.SealedVersion {
	return store.SealedVersion{Key: key, Version: version, Sealed: store.Sealed{Ciphertext: []byte{byte(version)}}}
}

// cached commits a change to key, waits for the cache to apply it, and
// offers version as read at that revision, which it returns.
func (fx *fixture) cached(t *testing.T, key string, version int64) int64 {
	t.Helper()
	rev := fx.log.commit(key)
	fx.waitApplied(t, rev)
	fx.cache.Put(key, sealed(key, version), rev)
	return rev
}

func TestServesUntilTheKeyChanges(t *testing.T) {
	t.Parallel()
	fx := start(t, 100)
	rev := fx.cached(t, "A", 1)
	sv, got, ok := fx.cache.Get("A", 0)
	if !ok || sv.Version != 1 || got != rev {
		t.Fatalf("Get(A) = %+v, %d, %v; want version 1 at revision %d", sv, got, ok, rev)
	}
	// A change to another key leaves A; the answer now reflects it.
	other := fx.log.commit("B")
	fx.waitApplied(t, other)
	if _, got, ok := fx.cache.Get("A", 0); !ok || got != other {
		t.Fatalf("after a change to B: revision %d, %v; want %d", got, ok, other)
	}
	// A change to A drops it before the cache claims that revision.
	changed := fx.log.commit("A")
	fx.waitApplied(t, changed)
	if _, _, ok := fx.cache.Get("A", 0); ok {
		t.Fatal("A served after it changed")
	}
}

func TestRefusesAnswersThatMayHaveMissedAChange(t *testing.T) {
	t.Parallel()
	fx := start(t, 100)
	read := fx.log.commit("A")  // a database read of A at this revision...
	later := fx.log.commit("A") // ...then A changes again before it is offered
	fx.waitApplied(t, later)
	fx.cache.Put("A", sealed("A", 1), read)
	if _, _, ok := fx.cache.Get("A", 0); ok {
		t.Fatal("kept a read older than the revisions already applied")
	}
	fx.cache.Put("A", sealed("A", 2), later)
	if sv, _, ok := fx.cache.Get("A", 0); !ok || sv.Version != 2 {
		t.Fatalf("a read at the applied revision: %+v, %v", sv, ok)
	}
}

func TestFreshness(t *testing.T) {
	t.Parallel()
	fx := start(t, 100)
	rev := fx.cached(t, "A", 1)
	if _, _, ok := fx.cache.Get("A", rev+1); ok {
		t.Error("answered a min_revision it has not reached")
	}
	fx.lastWrite.Store(rev + 1) // this replica has written rev+1, not yet applied
	if _, _, ok := fx.cache.Get("A", 0); ok {
		t.Error("answered before applying this replica's own write")
	}
	if _, _, ok := fx.cache.GetAll([]string{"A"}, 0); ok {
		t.Error("GetAll answered before applying this replica's own write")
	}
	fx.lastWrite.Store(rev)
	fx.feed.listening.Store(false)
	if _, _, ok := fx.cache.Get("A", 0); ok {
		t.Error("answered while changes arrive only by polling")
	}
	fx.feed.listening.Store(true)
	if _, _, ok := fx.cache.Get("A", rev); !ok {
		t.Error("fresh cache did not answer")
	}
}

func TestGetAllIsAllOrNothing(t *testing.T) {
	t.Parallel()
	fx := start(t, 100)
	rev := fx.cached(t, "A", 1)
	if _, _, ok := fx.cache.GetAll([]string{"A", "B"}, 0); ok {
		t.Fatal("answered with a key missing")
	}
	fx.cache.Put("B", sealed("B", 3), rev)
	svs, got, ok := fx.cache.GetAll([]string{"B", "A"}, 0)
	if !ok || got != rev || svs[0].Version != 3 || svs[1].Version != 1 {
		t.Fatalf("GetAll = %+v, %d, %v", svs, got, ok)
	}
}

func TestBounded(t *testing.T) {
	t.Parallel()
	fx := start(t, 3)
	for i, k := range []string{"A", "B", "C", "D", "E"} {
		fx.cache.Put(k, sealed(k, int64(i+1)), 0)
	}
	if n := fx.cache.Stats().Entries; n != 3 {
		t.Fatalf("%d entries, want the bound 3", n)
	}
	if _, _, ok := fx.cache.Get("E", 0); !ok {
		t.Fatal("the newest entry was evicted")
	}
}

// TestNeverMixesRevisionsOrGoesBack: an entry read at a revision the cache
// has not applied yet cannot join a batch answered at the applied
// revision, and an older read never replaces a newer one.
func TestNeverMixesRevisionsOrGoesBack(t *testing.T) {
	t.Parallel()
	fx := start(t, 100)
	rev := fx.cached(t, "A", 1)
	fx.cache.Put("B", sealed("B", 1), rev+5) // read at a revision not yet applied
	if _, _, ok := fx.cache.GetAll([]string{"A", "B"}, 0); ok {
		t.Error("a batch mixed an entry ahead of the applied revision with others")
	}
	if sv, got, ok := fx.cache.Get("B", 0); !ok || got != rev+5 || sv.Version != 1 {
		t.Errorf("Get(B) alone = %+v at %d, %v; want it at its own revision %d", sv, got, ok, rev+5)
	}
	fx.cache.Put("A", sealed("A", 2), rev+2)
	fx.cache.Put("A", sealed("A", 1), rev+1) // a slower, older read of A
	if sv, _, ok := fx.cache.Get("A", 0); !ok || sv.Version != 2 {
		t.Errorf("Get(A) = %+v, %v; an older read replaced a newer one", sv, ok)
	}
}
