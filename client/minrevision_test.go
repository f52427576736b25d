package client_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

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
