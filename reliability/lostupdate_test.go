package reliability

import (
	"fmt"
	mrand "math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testserver"
)

// TestNoLostUpdates runs 16 compare-and-set writers on one key (each update:
// GetSecret for the etag, PutSecret with it and a request id, again on
// ABORTED) and asserts that no update is lost or duplicated: the final
// current_version is the initial one plus the number of updates; the
// versions the writers were told they created are exactly those, each told
// to one writer only; each version holds the value its writer sent; each
// update has exactly one OK audit event and one change-log entry at the
// revision it was told; a watcher sees one event per update, in order.
func TestNoLostUpdates(t *testing.T) {
	gate(t)
	const writers = 16
	each := size(50, 1000)
	srv := testserver.Start(t, testserver.Options{})
	ctx := withTimeout(t, 15*time.Minute)
	const key = "LOST_UPDATE_COUNTER"
	first, err := srv.Secrets.PutSecret(ctx, &pb.PutSecretRequest{Key: key, Value: []byte("initial")})
	if err != nil {
		t.Fatal(err)
	}
	initial := first.Secret.CurrentVersion
	watch, err := srv.Secrets.WatchChanges(ctx, &pb.WatchChangesRequest{StartRevision: first.Revision, Keys: []string{key}})
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan []int64, 1)
	go func() {
		var versions []int64
		for len(versions) < writers*each {
			m, err := watch.Recv()
			if err != nil {
				break
			}
			if e := m.GetEvent(); e != nil {
				versions = append(versions, e.Version)
			}
		}
		seen <- versions
	}()

	var aborted, attempts atomic.Int64
	var mu sync.Mutex
	acks := make([]ack, 0, writers*each)
	owner := map[int64]string{} // version -> value its writer sent
	var wg sync.WaitGroup
	errc := make(chan error, writers)
	began := time.Now()
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				id := fmt.Sprintf("cas-w%d-u%d", w, i)
				value := []byte(fmt.Sprintf("writer %d update %d", w, i))
				for {
					attempts.Add(1)
					cur, err := srv.Secrets.GetSecret(ctx, &pb.GetSecretRequest{Key: key})
					if err != nil {
						errc <- fmt.Errorf("GetSecret: %w", err)
						return
					}
					res, err := srv.Secrets.PutSecret(ctx, &pb.PutSecretRequest{Key: key, Value: value, Etag: cur.Secret.Etag, RequestId: id})
					if status.Code(err) == codes.Aborted {
						aborted.Add(1)
						continue
					}
					if err != nil {
						errc <- fmt.Errorf("PutSecret: %w", err)
						return
					}
					v := res.Secret.CurrentVersion
					mu.Lock()
					acks = append(acks, ack{RequestID: id, Action: "PutSecret", Key: key, Version: v, Revision: res.Revision})
					if prev, dup := owner[v]; dup {
						// t.Errorf, not errc: a full errc would block with mu held.
						t.Errorf("version %d acknowledged twice: to %q and to %q", v, prev, value)
					}
					owner[v] = string(value)
					mu.Unlock()
					break
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(began)
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	n := int64(writers * each)
	t.Logf("%d updates by %d writers in %v (%.0f/s): %d attempts, %d ABORTED", n, writers, elapsed.Round(time.Millisecond),
		float64(n)/elapsed.Seconds(), attempts.Load(), aborted.Load())

	got, err := srv.Secrets.GetSecret(ctx, &pb.GetSecretRequest{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	if got.Secret.CurrentVersion != initial+n {
		t.Errorf("current_version = %d, want %d + %d", got.Secret.CurrentVersion, initial, n)
	}
	for v := initial + 1; v <= initial+n; v++ {
		if _, ok := owner[v]; !ok {
			t.Errorf("version %d was never acknowledged", v)
		}
	}
	// Each version holds its writer's value (all of them in short mode).
	versions := make([]int64, 0, len(owner))
	for v := range owner {
		versions = append(versions, v)
	}
	mrand.Shuffle(len(versions), func(i, j int) { versions[i], versions[j] = versions[j], versions[i] })
	versions = versions[:min(len(versions), size(len(versions), 1000))]
	for _, v := range versions {
		res, err := srv.Secrets.AccessSecretVersion(ctx, &pb.AccessSecretVersionRequest{Key: key, Version: strconv.FormatInt(v, 10)})
		if err != nil {
			t.Fatalf("access v%d: %v", v, err)
		}
		if string(res.Value) != owner[v] {
			t.Errorf("version %d holds %q, but %q was acknowledged as it", v, res.Value, owner[v])
		}
	}
	checkAcks(t, connect(t, srv.DatabaseURL), acks)
	var okEvents int64
	if err := connect(t, srv.DatabaseURL).QueryRow(ctx, `SELECT count(*) FROM audit_events
		WHERE key = $1 AND action = 'PutSecret' AND outcome = 'OK'`, key).Scan(&okEvents); err != nil {
		t.Fatal(err)
	}
	if okEvents != n+1 {
		t.Errorf("%d OK PutSecret audit events, want %d (one per success, plus the initial put)", okEvents, n+1)
	}
	select {
	case evs := <-seen:
		if int64(len(evs)) != n {
			t.Errorf("watcher saw %d events, want %d", len(evs), n)
		}
		for i, v := range evs {
			if v != initial+1+int64(i) {
				t.Errorf("watcher event %d is version %d, want %d", i, v, initial+1+int64(i))
				break
			}
		}
	case <-time.After(30 * time.Second):
		t.Error("watcher did not see every update within 30s")
	}
	checkConsistency(t, srv.DatabaseURL, nil)
}
