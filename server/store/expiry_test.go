package store_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/orient-bot/secrets/server/store"
	"github.com/orient-bot/secrets/server/store/storetest"
)

func expiryEvents(t *testing.T, s *store.Store, after int64) []store.Change {
	t.Helper()
	cs, err := s.ChangesAfter(context.Background(), after, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var out []store.Change
	for _, c := range cs {
		if c.Kind == store.ChangeSecretExpired {
			out = append(out, c)
		}
	}
	return out
}

// TestSecretExpiredExactlyOnce: an expiry is published once, as one
// SECRET_EXPIRED change (restart flag: the secret's) and one audit event,
// although two stores (two replicas) on one database look for it
// concurrently and repeatedly; a secret expiring later is not published
// early, and a new expire time that passes is published again.
func TestSecretExpiredExactlyOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	stores := openStores(t, 2)
	a := stores[0]
	putValue(t, a, "CUSTOM_EXPIRED", "v1")
	putValue(t, a, "CUSTOM_LATER", "v1")
	restart := true
	past, future := time.Now().Add(-time.Second), time.Now().Add(time.Hour)
	if _, err := a.UpdateSecret(ctx, rotMeta("UpdateSecret"), store.UpdateParams{Key: "CUSTOM_LATER", ExpireTime: &future}); err != nil {
		t.Fatal(err)
	}
	r, err := a.UpdateSecret(ctx, rotMeta("UpdateSecret"), store.UpdateParams{Key: "CUSTOM_EXPIRED", ExpireTime: &past, RestartRequired: &restart})
	if err != nil {
		t.Fatal(err)
	}
	rev := r.Revision

	var mu sync.Mutex
	var published []store.ExpiryNotice
	var wg sync.WaitGroup
	for i := range 8 {
		s := stores[i%2]
		wg.Go(func() {
			n, err := s.NotifyExpired(ctx, 100)
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			published = append(published, n...)
			mu.Unlock()
		})
	}
	wg.Wait()
	if len(published) != 1 || published[0].Key != "CUSTOM_EXPIRED" {
		t.Fatalf("published %+v, want exactly one expiry for CUSTOM_EXPIRED", published)
	}
	evs := expiryEvents(t, a, rev)
	if len(evs) != 1 || evs[0].Key != "CUSTOM_EXPIRED" || evs[0].Version != 1 || !evs[0].RestartRequired ||
		evs[0].Category != "custom" || evs[0].Detail != "expire_time="+past.UTC().Format(time.RFC3339) {
		t.Fatalf("SECRET_EXPIRED changes %+v, want one for CUSTOM_EXPIRED version 1, restart required", evs)
	}
	storetest.SequenceAll(t, a)
	audit, err := a.ListAudit(ctx, store.AuditFilter{Action: store.SecretExpiredAction, Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if len(audit) != 1 || audit[0].Key != "CUSTOM_EXPIRED" || audit[0].Actor != store.RotationActor || audit[0].Revision != evs[0].Revision {
		t.Fatalf("audit %+v, want one SecretExpired event at revision %d", audit, evs[0].Revision)
	}
	if again, err := stores[1].NotifyExpired(ctx, 100); err != nil || len(again) != 0 {
		t.Fatalf("second run: %+v, %v; want nothing", again, err)
	}

	// Extended, then expired again at another time: published again, once.
	later := time.Now().Add(time.Hour)
	if _, err := a.UpdateSecret(ctx, rotMeta("UpdateSecret"), store.UpdateParams{Key: "CUSTOM_EXPIRED", ExpireTime: &later}); err != nil {
		t.Fatal(err)
	}
	if n, err := a.NotifyExpired(ctx, 100); err != nil || len(n) != 0 {
		t.Fatalf("extended: %+v, %v; want nothing", n, err)
	}
	again := time.Now().Add(-time.Millisecond)
	if _, err := a.UpdateSecret(ctx, rotMeta("UpdateSecret"), store.UpdateParams{Key: "CUSTOM_EXPIRED", ExpireTime: &again}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		for _, s := range stores {
			if _, err := s.NotifyExpired(ctx, 100); err != nil {
				t.Fatal(err)
			}
		}
	}
	if evs := expiryEvents(t, a, rev); len(evs) != 2 {
		t.Fatalf("after a second expiry: %+v, want two SECRET_EXPIRED changes in all", evs)
	}
}
