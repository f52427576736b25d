package client_test

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/orient-bot/secrets/client"
	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
)

// minRevisions records the min_revision of every read the client sends.
type minRevisions struct {
	mu   sync.Mutex
	seen map[string][]int64
}

func (m *minRevisions) intercept(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if r, ok := req.(interface{ GetMinRevision() int64 }); ok {
		m.mu.Lock()
		m.seen[method] = append(m.seen[method], r.GetMinRevision())
		m.mu.Unlock()
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

func (m *minRevisions) last(method string) (int64, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.seen[method]
	if len(s) == 0 {
		return 0, false
	}
	return s[len(s)-1], true
}

// TestReadsCarryMinRevision: MinRevision reaches the service, and the
// cache re-fetches a changed key at least at the change's revision (the
// replica that answers may trail the one whose stream announced it).
func TestReadsCarryMinRevision(t *testing.T) {
	t.Parallel()
	srv := startServer(t, serverOpts{})
	rec := &minRevisions{seen: map[string][]int64{}}
	c := dial(t, srv.GRPCAddr(), client.WithDialOptions(grpc.WithChainUnaryInterceptor(rec.intercept)))
	ctx := context.Background()
	s := put(t, c, "CUSTOM_MINREV", "one")

	v, err := c.Access(ctx, "CUSTOM_MINREV", client.MinRevision(s.Revision))
	if err != nil || v.Text() != "one" || v.Revision < s.Revision {
		t.Fatalf("Access = %+v, %v", v, err)
	}
	if got, _ := rec.last(pb.SecretService_AccessSecretVersion_FullMethodName); got != s.Revision {
		t.Errorf("AccessSecretVersion sent min_revision %d, want %d", got, s.Revision)
	}
	if _, rev, err := c.BatchAccess(ctx, []string{"CUSTOM_MINREV"}, client.MinRevision(s.Revision)); err != nil || rev < s.Revision {
		t.Fatalf("BatchAccess: revision %d, %v", rev, err)
	}
	if got, _ := rec.last(pb.SecretService_BatchAccessSecrets_FullMethodName); got != s.Revision {
		t.Errorf("BatchAccessSecrets sent min_revision %d, want %d", got, s.Revision)
	}

	cache, err := c.NewCache(ctx, client.CacheKeys("CUSTOM_MINREV"), client.CacheProgressInterval(progressInterval))
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	changed := put(t, c, "CUSTOM_MINREV", "two")
	eventually(t, 5*time.Second, "the cache never saw the change", func() bool {
		v, err := cache.Get("CUSTOM_MINREV")
		return err == nil && v == "two"
	})
	if got, _ := rec.last(pb.SecretService_BatchAccessSecrets_FullMethodName); got != changed.Revision {
		t.Errorf("the cache re-fetched with min_revision %d, want the change's revision %d", got, changed.Revision)
	}
}

// TestCacheReloadKeepsItsRevision: a cache whose re-fetch of a change
// fails (the replica answering is shutting down) reloads its whole set; the
// replica that answers the reload may trail the revision the cache had
// reached, and an answer from before it would step the cache back to older
// values (with callbacks for a rollback). The reload's reads carry the
// cache's revision as their minimum (they carried none).
func TestCacheReloadKeepsItsRevision(t *testing.T) {
	t.Parallel()
	srv := startServer(t, serverOpts{})
	rec := &minRevisions{seen: map[string][]int64{}}
	var failing atomic.Bool
	fail := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if method == pb.SecretService_BatchAccessSecrets_FullMethodName && failing.Load() {
			return status.Error(codes.Unavailable, "replica shutting down")
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	c := dial(t, srv.GRPCAddr(), client.WithDialOptions(grpc.WithChainUnaryInterceptor(rec.intercept, fail)))
	put(t, c, "CUSTOM_RELOAD", "one")
	cache, err := c.NewCache(context.Background(), client.CacheKeys("CUSTOM_RELOAD"), client.CacheProgressInterval(progressInterval))
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	put(t, c, "CUSTOM_RELOAD", "two")
	waitValue(t, cache, "CUSTOM_RELOAD", "two", 5*time.Second)
	reached := cache.Status().Revision
	reads := func() []int64 {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return slices.Clone(rec.seen[pb.SecretService_BatchAccessSecrets_FullMethodName])
	}
	// The re-fetch of the next change fails, retries included, until the
	// cache gives its stream up; then the service answers again.
	failing.Store(true)
	put(t, c, "CUSTOM_RELOAD", "three")
	eventually(t, 10*time.Second, "the cache never gave its stream up", func() bool { return cache.Status().Err != nil })
	before := len(reads())
	failing.Store(false)
	waitValue(t, cache, "CUSTOM_RELOAD", "three", 10*time.Second)
	got := reads()[before:]
	t.Logf("reads once the service answers again: %v (the cache had reached %d)", got, reached)
	if len(got) == 0 {
		t.Fatal("no read after the failure")
	}
	for _, min := range got {
		if min < reached {
			t.Errorf("a read after the failure (the reload's) had min_revision %d, below the revision %d the cache had reached (all: %v)", min, reached, got)
		}
	}
}
