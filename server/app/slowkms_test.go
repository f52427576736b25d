package app_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

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
