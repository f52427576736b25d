package app_test

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testserver"
	"github.com/orient-bot/secrets/server/app"
)

// TestGRPCHealthFollowsKEK: gRPC health says what /readyz says. A KEK call
// that fails (the KMS down) turns it NOT_SERVING at the next health round,
// and it turns SERVING again by itself once the KMS answers.
func TestGRPCHealthFollowsKEK(t *testing.T) {
	t.Parallel()
	kms := newKEKFake(t, 0)
	srv := testserver.Start(t, testserver.Options{KEKURL: kms.url(), Configure: func(cfg *app.Config) {
		cfg.HealthInterval = 20 * time.Millisecond
	}})
	hc := healthpb.NewHealthClient(srv.Conn)
	waitHealth := func(want healthpb.HealthCheckResponse_ServingStatus) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			res, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if res.Status == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("gRPC health %v; want %v", res.Status, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitHealth(healthpb.HealthCheckResponse_SERVING)
	kms.down.Store(true)
	_, err := srv.Secrets.PutSecret(context.Background(), &pb.PutSecretRequest{Key: "HEALTH", Value: []byte("v")})
	wantCode(t, err, codes.Unavailable)
	waitHealth(healthpb.HealthCheckResponse_NOT_SERVING)
	kms.down.Store(false)
	waitHealth(healthpb.HealthCheckResponse_SERVING)
	put(t, srv.Secrets, "HEALTH", "v")
}

// TestDEKCacheMetrics: /metrics counts the unwrapped-DEK cache's hits and
// misses. A replica that did not write the value misses once, then hits.
func TestDEKCacheMetrics(t *testing.T) {
	t.Parallel()
	writer := testserver.Start(t, testserver.Options{})
	put(t, writer.Secrets, "CACHED", "v")
	reader := testserver.Start(t, testserver.Options{DatabaseURL: writer.DatabaseURL, KEKURL: writer.KEKURL})
	// The service's own keys were unwrapped at start: count from here.
	hitsBefore, missesBefore := dekMetric(t, reader, "hits"), dekMetric(t, reader, "misses")
	for range 3 {
		if v, err := access(reader.Secrets, "CACHED", "latest"); err != nil || v != "v" {
			t.Fatalf("access: %q, %v", v, err)
		}
	}
	hits, misses := dekMetric(t, reader, "hits")-hitsBefore, dekMetric(t, reader, "misses")-missesBefore
	if hits != 2 || misses != 1 {
		t.Errorf("after 3 reads on a cold replica: %v new hits, %v misses; want 2 hits and the first read a miss", hits, misses)
	}
}

func dekMetric(t *testing.T, srv *testserver.Server, which string) float64 {
	t.Helper()
	res, err := http.Get(srv.BaseURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	m := regexp.MustCompile(`(?m)^secrets_dek_cache_` + which + `_total (\S+)$`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("/metrics has no secrets_dek_cache_%s_total", which)
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
