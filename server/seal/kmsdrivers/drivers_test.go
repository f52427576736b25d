package kmsdrivers_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/internal/testserver"
	"github.com/orient-bot/secrets/server/app"
	"github.com/orient-bot/secrets/server/seal"
	_ "github.com/orient-bot/secrets/server/seal/kmsdrivers"
)

func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }

// TestDrivers runs every linked KMS driver through exerciseDriver against its
// stand-in, the four at once. The AWS SDK and the Vault driver read their
// configuration from the process's environment, as in production: it is
// set here, before the parallel subtests.
func TestDrivers(t *testing.T) {
	aws, awsMissing := newLocalKMS(t)
	vault := newVaultFake(t)
	for name, s := range map[string]func(*testing.T) standIn{
		"awskms": func(t *testing.T) standIn {
			if aws == nil {
				if os.Getenv("CI") != "" {
					t.Fatal(awsMissing)
				}
				t.Skip(awsMissing)
			}
			return aws
		},
		"hashivault":    func(*testing.T) standIn { return vault },
		"gcpkms":        func(t *testing.T) standIn { return newGCPFake(t) },
		"azurekeyvault": func(t *testing.T) standIn { return newAzureFake(t) },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			exerciseDriver(t, s(t))
		})
	}
}

// standIn is a local stand-in for one KMS, reached through the driver's real
// client library.
type standIn interface {
	// kekURL is the SECRETS_KEK_URL of a key the stand-in holds.
	kekURL() string
	// missingURL names a key the stand-in does not have.
	missingURL() string
	// keyName is the part of the URLs that errors must never show.
	keyName() string
	// stop stops the stand-in (connections refused); start brings it back
	// on the same address with the same keys.
	stop(t *testing.T)
	start(t *testing.T)
	// refuse makes the stand-in refuse kekURL's key (disabled, or no
	// permission) while on.
	refuse(t *testing.T, on bool)
	// configure points the server at the stand-in where the environment
	// does not (a mux whose driver has a client for the stand-in).
	configure(cfg *app.Config)
}

// testConfigure gives every driver test short KMS timeouts and a fast
// health loop, so that outages show (and end) quickly.
func testConfigure(s standIn) func(*app.Config) {
	return func(cfg *app.Config) {
		cfg.KEKTimeout = time.Second
		cfg.HealthInterval = 50 * time.Millisecond
		s.configure(cfg)
	}
}

// exerciseDriver runs one KMS driver through a deployment's life against
// its stand-in: secrets written under a base64key:// KEK, an online rotation
// to the KMS, a restart with the KMS KEK alone (cold DEK cache: every read
// unwraps through the KMS), the stand-in stopped mid-run (UNAVAILABLE with
// KEK_UNAVAILABLE, /readyz 503 and gRPC health NOT_SERVING, then recovery
// without a restart), the stand-in refusing the key (the error names the
// KEK's fingerprint, never its URL), an online rotation back to base64key://,
// and a server refused at start for a key the stand-in does not have.
func exerciseDriver(t *testing.T, s standIn) {
	ctx := context.Background()
	t0 := time.Now()
	phase := func(name string) { t.Logf("%6.2fs %s", time.Since(t0).Seconds(), name) }
	db := testdb.New(t)
	base := testserver.NewKEKURL(t)
	configure := testConfigure(s)
	kmsID, baseID := kekID(t, s.kekURL(), configure), kekID(t, base, nil)
	values := map[string]string{}
	start := func(kekURL string) *testserver.Server {
		t.Helper()
		return testserver.Start(t, testserver.Options{DatabaseURL: db, KEKURL: kekURL, Configure: configure})
	}

	// Written under base64key://.
	srv := start(base)
	for i := range 5 {
		put(t, srv, values, fmt.Sprintf("BEFORE_%d", i), fmt.Sprintf("before-%d", i))
	}
	srv.Stop()

	phase("written under base64key")
	// Online rotation to the KMS, then a write wrapped by it.
	srv = start(s.kekURL() + "," + base)
	rotate(t, srv, kmsID, baseID)
	put(t, srv, values, "UNDER_KMS", "under-kms")
	put(t, srv, values, "UNREAD", "never read before the outage")
	checkAll(t, srv, values)
	srv.Stop()

	phase("rotated to the KMS")
	// Restart with the KMS KEK alone: every data key is unwrapped by the KMS
	// once (misses), then served from memory (hits).
	srv = start(s.kekURL())
	unread := values["UNREAD"]
	delete(values, "UNREAD")
	checkAll(t, srv, values)
	checkAll(t, srv, values)
	hits, misses := dekCacheMetrics(t, srv)
	if misses < float64(len(values)) || hits < float64(len(values)) {
		t.Errorf("DEK cache after reading %d values twice on a cold replica: %v hits, %v misses; want ≥ %d of each",
			len(values), hits, misses, len(values))
	}

	phase("restarted, read back")
	// The stand-in stops: writes and reads of uncached data keys fail
	// UNAVAILABLE, never with wrong data; readiness and health follow.
	s.stop(t)
	_, err := srv.Secrets.PutSecret(ctx, &pb.PutSecretRequest{Key: "DURING_OUTAGE", Value: []byte("v")})
	wantKEKError(t, "write with the KMS down", err, kmsID, s.keyName(), "unavailable")
	_, err = srv.Secrets.AccessSecretVersion(ctx, &pb.AccessSecretVersionRequest{Key: "UNREAD", Version: "latest"})
	wantKEKError(t, "read of an uncached data key with the KMS down", err, kmsID, s.keyName(), "unavailable")
	wantReady(t, srv, false, "unavailable")
	wantHealth(t, srv, healthpb.HealthCheckResponse_NOT_SERVING)
	// Data keys already in memory still serve reads.
	checkAll(t, srv, map[string]string{"UNDER_KMS": values["UNDER_KMS"]})

	phase("outage seen")
	s.start(t)
	waitFor(t, "a write after the KMS came back", func() error {
		_, err := srv.Secrets.PutSecret(ctx, &pb.PutSecretRequest{Key: "AFTER_OUTAGE", Value: []byte("after")})
		return err
	})
	values["AFTER_OUTAGE"] = "after"
	values["UNREAD"] = unread
	checkAll(t, srv, values)
	wantReady(t, srv, true, "ok")
	wantHealth(t, srv, healthpb.HealthCheckResponse_SERVING)

	phase("recovered")
	// The stand-in refuses the key: the error says so and names the KEK by
	// its fingerprint.
	s.refuse(t, true)
	_, err = srv.Secrets.PutSecret(ctx, &pb.PutSecretRequest{Key: "REFUSED", Value: []byte("v")})
	wantKEKError(t, "write with the key refused", err, kmsID, s.keyName(), "refused")
	wantReady(t, srv, false, "refused")
	wantHealth(t, srv, healthpb.HealthCheckResponse_NOT_SERVING)
	s.refuse(t, false)
	waitFor(t, "a write after the key was allowed again", func() error {
		_, err := srv.Secrets.PutSecret(ctx, &pb.PutSecretRequest{Key: "ALLOWED_AGAIN", Value: []byte("again")})
		return err
	})
	values["ALLOWED_AGAIN"] = "again"
	wantHealth(t, srv, healthpb.HealthCheckResponse_SERVING)
	srv.Stop()

	phase("refusal seen")
	// Online rotation back to base64key://; then the KMS is not needed.
	srv = start(base + "," + s.kekURL())
	rotate(t, srv, baseID, kmsID)
	srv.Stop()
	srv = start(base)
	checkAll(t, srv, values)
	srv.Stop()

	phase("rotated back")
	// A key the stand-in does not have: refused at start (the first start
	// seals the service's own keys), naming the fingerprint, not the URL.
	cfg := app.DefaultConfig()
	cfg.GRPCAddr, cfg.HTTPAddr, cfg.DatabaseURL, cfg.KEKURL = "127.0.0.1:0", "127.0.0.1:0", testdb.ServiceURL(t, testdb.New(t)), s.missingURL()
	cfg.AuditSigningKey = testserver.AuditSigningKeyFile(t)
	configure(&cfg)
	bad, err := app.Start(ctx, cfg, slog.New(slog.DiscardHandler))
	if err == nil {
		go bad.Serve(canceled())
		t.Fatal("started with a key the KMS does not have")
	}
	missingID := kekID(t, s.missingURL(), configure)
	if !errors.Is(err, seal.ErrKEKRefused) || !strings.Contains(err.Error(), missingID) || strings.Contains(err.Error(), s.keyName()) {
		t.Errorf("start with a missing key: %v; want ErrKEKRefused naming %s and not %q", err, missingID, s.keyName())
	}
	phase("refused at start")
}

func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

func kekID(t *testing.T, kekURL string, configure func(*app.Config)) string {
	t.Helper()
	var opts []seal.Option
	if configure != nil {
		var cfg app.Config
		configure(&cfg)
		if cfg.KEKMux != nil {
			opts = append(opts, seal.WithKeeperMux(cfg.KEKMux))
		}
	}
	kr, err := seal.OpenKeyring(context.Background(), []string{kekURL}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer kr.Close()
	return kr.PrimaryID()
}

func put(t *testing.T, srv *testserver.Server, values map[string]string, key, value string) {
	t.Helper()
	if _, err := srv.Secrets.PutSecret(context.Background(), &pb.PutSecretRequest{Key: key, Value: []byte(value)}); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	values[key] = value
}

func checkAll(t *testing.T, srv *testserver.Server, values map[string]string) {
	t.Helper()
	for key, want := range values {
		res, err := srv.Secrets.AccessSecretVersion(context.Background(), &pb.AccessSecretVersionRequest{Key: key, Version: "latest"})
		if err != nil || string(res.Value) != want {
			t.Fatalf("access %s: %v; want %q", key, err, want)
		}
	}
}

// rotate re-wraps every data key under primary, online, and checks that
// old wraps none afterwards.
func rotate(t *testing.T, srv *testserver.Server, primary, old string) {
	t.Helper()
	ctx := context.Background()
	keys := pb.NewKeyServiceClient(srv.Conn)
	res, err := keys.RotateKEK(ctx, &pb.RotateKEKRequest{})
	if err != nil || res.Progress.PrimaryKekId != primary {
		t.Fatalf("RotateKEK: %v, %v", res, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := keys.GetKEKStatus(ctx, &pb.GetKEKStatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if !st.Rotation.Running {
			if st.Rotation.LastError != "" {
				t.Fatalf("rotation failed: %s", st.Rotation.LastError)
			}
			counts := map[string]int64{}
			for _, k := range st.Keks {
				counts[k.KekId] = k.DataKeys
			}
			if counts[old] != 0 || counts[primary] == 0 {
				t.Fatalf("after the rotation to %s: data keys per KEK %v", primary, counts)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("rotation still running: %v", st.Rotation)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// wantKEKError checks a KEK failure as a client sees it: UNAVAILABLE with
// reason KEK_UNAVAILABLE, a message naming the KEK's fingerprint and saying
// what happened, and never the KEK's URL or key name.
func wantKEKError(t *testing.T, what string, err error, id, keyName, says string) {
	t.Helper()
	st := status.Convert(err)
	reason := ""
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			reason = info.Reason
		}
	}
	if st.Code() != codes.Unavailable || reason != "KEK_UNAVAILABLE" {
		t.Errorf("%s: %v (reason %q); want UNAVAILABLE with reason KEK_UNAVAILABLE", what, err, reason)
		return
	}
	if msg := st.Message(); !strings.Contains(msg, id) || !strings.Contains(msg, says) || strings.Contains(msg, keyName) {
		t.Errorf("%s: message %q; want it to name %s, say %q, and not show %q", what, msg, id, says, keyName)
	}
}

func wantReady(t *testing.T, srv *testserver.Server, ready bool, kek string) {
	t.Helper()
	res, err := http.Get(srv.BaseURL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var body struct {
		Ready  bool              `json:"ready"`
		Checks map[string]string `json:"checks"`
	}
	b, _ := io.ReadAll(res.Body)
	if err := json.Unmarshal(b, &body); err != nil {
		t.Fatalf("readyz %s: %v", b, err)
	}
	wantCode := http.StatusOK
	if !ready {
		wantCode = http.StatusServiceUnavailable
	}
	if res.StatusCode != wantCode || body.Ready != ready || body.Checks["kek"] != kek {
		t.Errorf("readyz: %d %s; want %d with kek %q", res.StatusCode, b, wantCode, kek)
	}
}

// wantHealth waits (a few health rounds at most) for gRPC health to say st.
func wantHealth(t *testing.T, srv *testserver.Server, st healthpb.HealthCheckResponse_ServingStatus) {
	t.Helper()
	hc := healthpb.NewHealthClient(srv.Conn)
	var last healthpb.HealthCheckResponse_ServingStatus
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		res, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if last = res.Status; last == st {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("gRPC health %v; want %v", last, st)
}

// waitFor retries fn until it succeeds (a client library reconnects with
// backoff after its server came back).
func waitFor(t *testing.T, what string, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var metricRe = regexp.MustCompile(`(?m)^(secrets_dek_cache_(?:hits|misses)_total) (\S+)$`)

func dekCacheMetrics(t *testing.T, srv *testserver.Server) (hits, misses float64) {
	t.Helper()
	res, err := http.Get(srv.BaseURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	found := 0
	for _, m := range metricRe.FindAllStringSubmatch(string(b), -1) {
		v, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			t.Fatal(err)
		}
		found++
		if m[1] == "secrets_dek_cache_hits_total" {
			hits = v
		} else {
			misses = v
		}
	}
	if found != 2 {
		t.Fatalf("/metrics has no DEK cache counters")
	}
	return hits, misses
}
