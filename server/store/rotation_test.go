package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/server/store"
	"github.com/orient-bot/secrets/server/store/storetest"
)

func openStores(t *testing.T, n int) []*store.Store {
	t.Helper()
	url := testdb.New(t)
	var out []*store.Store
	for range n {
		s, err := store.Open(context.Background(), url, store.Options{MinMaxConns: 4})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
		out = append(out, s)
	}
	return out
}

func rotMeta(action string) store.Meta { return store.Meta{Actor: "rotation-test", Action: action} }

func putValue(t *testing.T, s *store.Store, key, value string) store.WriteResult {
	t.Helper()
	r, err := s.PutSecret(context.Background(), rotMeta("PutSecret"), store.PutParams{Key: key,
		Defaults: store.Defaults{Category: "custom"},
		Seal: func(_ context.Context, v int64) (store.Sealed, error) {
			return store.Sealed{Ciphertext: fmt.Appendf(nil, "%s@%d", value, v), WrappedDEK: []byte("dek"), KEKID: "kek-test"}, nil
		}})
	if err != nil {
		t.Fatalf("PutSecret(%s): %v", key, err)
	}
	return r
}

func schedule(t *testing.T, s *store.Store, key string, period time.Duration, next time.Time) store.WriteResult {
	t.Helper()
	r, err := s.UpdateSecret(context.Background(), rotMeta("UpdateSecret"), store.UpdateParams{Key: key,
		RotationPeriod: &period, NextRotationTime: &next})
	if err != nil {
		t.Fatalf("UpdateSecret(%s): %v", key, err)
	}
	return r
}

func rotationEvents(t *testing.T, s *store.Store, after int64) []store.Change {
	t.Helper()
	cs, err := s.ChangesAfter(context.Background(), after, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var out []store.Change
	for _, c := range cs {
		if c.Kind == store.ChangeRotationDue {
			out = append(out, c)
		}
	}
	return out
}

// TestRotationDueExactlyOnce: a due rotation is published once, as one
// ROTATION_DUE change and one audit event, although two stores (two
// replicas) on one database look for it concurrently and repeatedly.
func TestRotationDueExactlyOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	stores := openStores(t, 2)
	a := stores[0]
	putValue(t, a, "CUSTOM_DUE", "v1")
	putValue(t, a, "CUSTOM_LATER", "v1")
	rev := schedule(t, a, "CUSTOM_DUE", time.Hour, time.Now().Add(-time.Minute)).Revision
	schedule(t, a, "CUSTOM_LATER", time.Hour, time.Now().Add(time.Hour))

	var mu sync.Mutex
	var published []store.RotationReminder
	var wg sync.WaitGroup
	for i := range 8 {
		s := stores[i%2]
		wg.Go(func() {
			r, err := s.NotifyRotationsDue(ctx, 100)
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			published = append(published, r...)
			mu.Unlock()
		})
	}
	wg.Wait()
	if len(published) != 1 || published[0].Key != "CUSTOM_DUE" {
		t.Fatalf("published %+v, want exactly one reminder for CUSTOM_DUE", published)
	}
	evs := rotationEvents(t, a, rev)
	if len(evs) != 1 || evs[0].Key != "CUSTOM_DUE" || evs[0].Version != 1 || evs[0].RestartRequired {
		t.Fatalf("ROTATION_DUE changes %+v, want one for CUSTOM_DUE version 1 without restart", evs)
	}
	storetest.SequenceAll(t, a)
	audit, err := a.ListAudit(ctx, store.AuditFilter{Action: store.RotationDueAction, Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if len(audit) != 1 || audit[0].Key != "CUSTOM_DUE" || audit[0].Actor != store.RotationActor || audit[0].Revision != evs[0].Revision {
		t.Fatalf("audit %+v, want one RotationDue event at revision %d", audit, evs[0].Revision)
	}
	// Later runs publish nothing more.
	if again, err := stores[1].NotifyRotationsDue(ctx, 100); err != nil || len(again) != 0 {
		t.Fatalf("second run: %+v, %v; want nothing", again, err)
	}

	// The due secret is listed by the filter and counted.
	res, err := a.ListSecrets(ctx, store.ListParams{RotationDue: true, Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Page) != 1 || res.Page[0].Key != "CUSTOM_DUE" || !res.Page[0].RotationDue || res.Page[0].RotationPeriod != time.Hour {
		t.Fatalf("rotation_due list %+v, want CUSTOM_DUE only", res.Page)
	}
	counts, err := a.CountRotation(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if counts != (store.RotationCounts{Due: 1}) {
		t.Fatalf("counts %+v, want 1 due", counts)
	}
}

// TestNewVersionMovesNextRotation: a new version answers the reminder: the
// next rotation time moves to the version's time plus the period, the
// secret is no longer due, and the next due time is published again.
func TestNewVersionMovesNextRotation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openStores(t, 1)[0]
	putValue(t, s, "CUSTOM_ROT", "v1")
	schedule(t, s, "CUSTOM_ROT", 24*time.Hour, time.Now().Add(-time.Minute))
	if r, err := s.NotifyRotationsDue(ctx, 10); err != nil || len(r) != 1 {
		t.Fatalf("first reminder: %+v, %v", r, err)
	}
	before := time.Now()
	w := putValue(t, s, "CUSTOM_ROT", "v2")
	got, _, err := s.GetSecret(ctx, "CUSTOM_ROT")
	if err != nil {
		t.Fatal(err)
	}
	for name, sec := range map[string]store.Secret{"write result": w.Secret, "read": got} {
		next := sec.NextRotationTime
		if sec.RotationDue || next.Before(before.Add(24*time.Hour-time.Minute)) || next.After(time.Now().Add(24*time.Hour+time.Minute)) {
			t.Fatalf("%s after new version: due=%v next=%v, want not due, next about now+24h", name, sec.RotationDue, next)
		}
	}
	if r, err := s.NotifyRotationsDue(ctx, 10); err != nil || len(r) != 0 {
		t.Fatalf("after new version: %+v, %v; want no reminder", r, err)
	}
	// Due again (moved into the past): published again.
	schedule(t, s, "CUSTOM_ROT", 24*time.Hour, time.Now().Add(-time.Second))
	if r, err := s.NotifyRotationsDue(ctx, 10); err != nil || len(r) != 1 {
		t.Fatalf("second due time: %+v, %v; want one reminder", r, err)
	}

	// A period without a next time starts now; clearing the period clears
	// the schedule; a next time is required while a period is set.
	period := 48 * time.Hour
	r, err := s.UpdateSecret(ctx, rotMeta("UpdateSecret"), store.UpdateParams{Key: "CUSTOM_ROT", RotationPeriod: &period})
	if err != nil || r.Secret.NextRotationTime.Before(time.Now().Add(47*time.Hour)) {
		t.Fatalf("period only: next=%v, %v; want about now+48h", r.Secret.NextRotationTime, err)
	}
	zeroTime := time.Time{}
	if _, err := s.UpdateSecret(ctx, rotMeta("UpdateSecret"), store.UpdateParams{Key: "CUSTOM_ROT", NextRotationTime: &zeroTime}); !errors.Is(err, store.ErrInvalidArgument) {
		t.Fatalf("clearing next with a period: %v, want ErrInvalidArgument", err)
	}
	var none time.Duration
	r, err = s.UpdateSecret(ctx, rotMeta("UpdateSecret"), store.UpdateParams{Key: "CUSTOM_ROT", RotationPeriod: &none})
	if err != nil || r.Secret.RotationPeriod != 0 || !r.Secret.NextRotationTime.IsZero() {
		t.Fatalf("cleared: %+v, %v; want no schedule", r.Secret, err)
	}
}

// TestExpireBlocksAccess: past its expire time a secret cannot be read, as
// if its version were disabled; clearing the time restores access.
func TestExpireBlocksAccess(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openStores(t, 1)[0]
	putValue(t, s, "CUSTOM_EXP", "v1")
	putValue(t, s, "CUSTOM_OK", "v1")
	past := time.Now().Add(-time.Second)
	r, err := s.UpdateSecret(ctx, rotMeta("UpdateSecret"), store.UpdateParams{Key: "CUSTOM_EXP", ExpireTime: &past})
	if err != nil || !r.Secret.Expired {
		t.Fatalf("expire: %+v, %v", r.Secret, err)
	}
	if _, _, err := s.AccessVersion(ctx, "CUSTOM_EXP", 0); !errors.Is(err, store.ErrFailedPrecondition) {
		t.Fatalf("access to an expired secret: %v, want ErrFailedPrecondition", err)
	}
	if _, _, err := s.AccessVersion(ctx, "CUSTOM_EXP", 1); !errors.Is(err, store.ErrFailedPrecondition) {
		t.Fatalf("access to version 1 of an expired secret: %v, want ErrFailedPrecondition", err)
	}
	items, _, err := s.BatchAccess(ctx, []string{"CUSTOM_EXP", "CUSTOM_OK"})
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(items[0].Err, store.ErrFailedPrecondition) || items[1].Err != nil {
		t.Fatalf("batch: %v, %v; want the expired one refused only", items[0].Err, items[1].Err)
	}
	if c, err := s.CountRotation(ctx); err != nil || c.Expired != 1 {
		t.Fatalf("counts %+v, %v; want 1 expired", c, err)
	}
	var never time.Time
	if _, err := s.UpdateSecret(ctx, rotMeta("UpdateSecret"), store.UpdateParams{Key: "CUSTOM_EXP", ExpireTime: &never}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.AccessVersion(ctx, "CUSTOM_EXP", 0); err != nil {
		t.Fatalf("access after clearing the expiry: %v", err)
	}
	// A future expiry does not block, and travels with the sealed version
	// so a copy served from memory can be refused in time.
	future := time.Now().Add(time.Hour)
	if _, err := s.UpdateSecret(ctx, rotMeta("UpdateSecret"), store.UpdateParams{Key: "CUSTOM_EXP", ExpireTime: &future}); err != nil {
		t.Fatal(err)
	}
	sv, _, err := s.AccessVersion(ctx, "CUSTOM_EXP", 0)
	if err != nil || sv.ExpiredAt(time.Now()) != nil || !errors.Is(sv.ExpiredAt(future.Add(time.Second)), store.ErrFailedPrecondition) {
		t.Fatalf("future expiry: %v, expire %v", err, sv.ExpireTime)
	}
}
