package app_test

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
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

// TestReadinessWithASlowKMS: a KMS slower than the readiness deadline (2 s)
// but well inside --kek-timeout (10 s) keeps the replica ready. Two KEKs
// (a rotation's state) answering each call in 1.1 s made every probe 4.4 s,
// one KEK after the other, so /readyz said 503 forever while writes worked.
func TestReadinessWithASlowKMS(t *testing.T) {
	t.Parallel()
	a, b := newKEKFake(t, 1100*time.Millisecond), newKEKFake(t, 1100*time.Millisecond)
	srv := testserver.Start(t, testserver.Options{KEKURL: a.url() + "," + b.url()})
	put(t, srv.Secrets, "SLOW_KMS", "v")
	waitReady(t, srv, 15*time.Second, "behind a 1.1 s KMS")
	hc := healthpb.NewHealthClient(srv.Conn)
	for range 3 {
		if resp, body := rawDo(t, "GET", srv.BaseURL+"/readyz", "", nil); resp.StatusCode != http.StatusOK {
			t.Errorf("/readyz %d %s", resp.StatusCode, body)
		}
		if res, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil || res.Status != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("gRPC health %v, %v", res.GetStatus(), err)
		}
	}
	if peak := a.peak.Load(); peak < 1 {
		t.Errorf("KMS a never called (peak %d)", peak)
	}
}

// TestReadinessProbesTheKMSOnceAtATime: /readyz needs no token, so a burst
// of probes during an outage must not turn into a burst of KMS calls: one
// probe runs at a time, and its failure is remembered for a few seconds.
// Before, each of 20 concurrent /readyz made its own KMS call.
func TestReadinessProbesTheKMSOnceAtATime(t *testing.T) {
	t.Parallel()
	kms := newKEKFake(t, 0)
	srv := testserver.Start(t, testserver.Options{KEKURL: kms.url()})
	if resp, body := rawDo(t, "GET", srv.BaseURL+"/readyz", "", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("/readyz %d %s", resp.StatusCode, body)
	}
	kms.down.Store(true)
	_, err := srv.Secrets.PutSecret(context.Background(), &pb.PutSecretRequest{Key: "BURST", Value: []byte("v")})
	wantCode(t, err, codes.Unavailable)
	before := kms.calls.Load()
	var wg sync.WaitGroup
	codes503 := atomic.Int64{}
	for range 20 {
		wg.Go(func() {
			resp, _ := rawDo(t, "GET", srv.BaseURL+"/readyz", "", nil)
			if resp.StatusCode == http.StatusServiceUnavailable {
				codes503.Add(1)
			}
		})
	}
	wg.Wait()
	for range 5 {
		rawDo(t, "GET", srv.BaseURL+"/readyz", "", nil)
	}
	if n := codes503.Load(); n != 20 {
		t.Errorf("%d of 20 /readyz said 503 with the KMS down", n)
	}
	if calls := kms.calls.Load() - before; calls > 1 {
		t.Errorf("25 /readyz during the outage made %d KMS calls; want one probe", calls)
	}
	// Recovery shows by itself, within the failure's memory (5 s).
	kms.down.Store(false)
	waitReady(t, srv, 10*time.Second, "after the KMS came back")
}

// waitReady polls /readyz until it answers 200, at most within.
func waitReady(t *testing.T, srv *testserver.Server, within time.Duration, when string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		resp, body := rawDo(t, "GET", srv.BaseURL+"/readyz", "", nil)
		if resp.StatusCode == http.StatusOK {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz never ready %s: %d %s", when, resp.StatusCode, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
