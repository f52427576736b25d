package app_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testserver"
)

// TestSlowKMSDoesNotSerializeWrites: each new version's data key is
// wrapped by the KMS before the write takes the revision counter's lock,
// so concurrent writes wait for the KMS side by side. Under the lock the
// wraps would run one at a time (at most one in flight).
func TestSlowKMSDoesNotSerializeWrites(t *testing.T) {
	t.Parallel()
	const delay = 200 * time.Millisecond
	kms := newKEKFake(t, delay)
	srv := testserver.Start(t, testserver.Options{KEKURL: kms.url()})
	const writers = 8
	kms.peak.Store(0) // start-up's own wraps do not count
	began := time.Now()
	var wg sync.WaitGroup
	for i := range writers {
		wg.Go(func() {
			if _, err := srv.Secrets.PutSecret(context.Background(), &pb.PutSecretRequest{Key: fmt.Sprintf("KMS_%d", i), Value: []byte("v")}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	t.Logf("%d concurrent writes with a %v KMS: %v, at most %d wraps in flight", writers, delay,
		time.Since(began).Round(time.Millisecond), kms.peak.Load())
	if p := kms.peak.Load(); p < 2 {
		t.Errorf("at most %d data-key wrap in flight for %d concurrent writes: the KMS calls were serialized", p, writers)
	}
	for i := range writers {
		if v, err := access(srv.Secrets, fmt.Sprintf("KMS_%d", i), "latest"); err != nil || v != "v" {
			t.Errorf("KMS_%d: %q, %v", i, v, err)
		}
	}
}

// TestKMSOnlyForWritesThatGoAhead: a replayed request id answers with the
// first result and a stale etag is refused, without a data key — so both
// work while the KMS is down, and only a real write needs it.
func TestKMSOnlyForWritesThatGoAhead(t *testing.T) {
	t.Parallel()
	kms := newKEKFake(t, 0)
	srv := testserver.Start(t, testserver.Options{KEKURL: kms.url()})
	ctx := context.Background()
	req := &pb.PutSecretRequest{Key: "KMS_ONCE", Value: []byte("v1"), RequestId: "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d"}
	first, err := srv.Secrets.PutSecret(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	kms.down.Store(true)
	again, err := srv.Secrets.PutSecret(ctx, req)
	if err != nil || again.Revision != first.Revision {
		t.Fatalf("replay with the KMS down: %v, %v; want the first result (revision %d)", again, err, first.Revision)
	}
	_, err = srv.Secrets.PutSecret(ctx, &pb.PutSecretRequest{Key: "KMS_ONCE", Value: []byte("v2"), Etag: first.Secret.Etag + "0"})
	wantCode(t, err, codes.Aborted)
	_, err = srv.Secrets.PutSecret(ctx, &pb.PutSecretRequest{Key: "KMS_ONCE", Value: []byte("v2")})
	wantCode(t, err, codes.Unavailable)
}
