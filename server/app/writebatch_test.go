package app_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testserver"
)

// TestWriteBatchMetrics: concurrent writes through the API are group
// committed, and /metrics counts the batches and the writes in them.
func TestWriteBatchMetrics(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{})
	const n = 16
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := srv.Secrets.PutSecret(context.Background(), &pb.PutSecretRequest{Key: fmt.Sprintf("BATCH_%d", i), Value: []byte("v")}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	body := httpGet(t, srv.BaseURL+"/metrics")
	batches, writes := metricValue(body, "secrets_write_batches_total"), metricValue(body, "secrets_writes_committed_total")
	if writes < n || batches < 1 || batches > writes {
		t.Fatalf("secrets_write_batches_total %v, secrets_writes_committed_total %v after %d writes", batches, writes, n)
	}
}
