package app_test

import (
	"context"
	"errors"
	"os"
	execpkg "os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/orient-bot/secrets/internal/testserver"
	"github.com/orient-bot/secrets/server/app"
	"github.com/orient-bot/secrets/server/pgcluster"
)

// healthProbe finds grpc-health-probe (scripts/ensure-api-tools.sh
// installs it, pinned); without it the probe part is skipped, unless
// REQUIRE_API_TOOLS is set (CI).
func healthProbe(t *testing.T) string {
	t.Helper()
	if p, err := execpkg.LookPath("grpc-health-probe"); err == nil {
		return p
	}
	for _, dir := range []string{os.Getenv("GOBIN"), filepath.Join(os.Getenv("HOME"), "go", "bin"), "/root/go/bin"} {
		if p := filepath.Join(dir, "grpc-health-probe"); dir != "" {
			if _, err := os.Stat(p); err == nil {
				return p
			}
		}
	}
	if os.Getenv("REQUIRE_API_TOOLS") != "" {
		t.Fatal("grpc-health-probe not installed: run scripts/ensure-api-tools.sh")
	}
	return ""
}

// probe runs grpc-health-probe and returns its exit code (0 SERVING, 4
// NOT_SERVING).
func probe(t *testing.T, bin, addr, service string) int {
	t.Helper()
	args := []string{"-addr=" + addr, "-connect-timeout=2s", "-rpc-timeout=4s"}
	if service != "" {
		args = append(args, "-service="+service)
	}
	out, err := execpkg.Command(bin, args...).CombinedOutput()
	var exit *execpkg.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode()
	}
	if err != nil {
		t.Fatalf("grpc-health-probe: %v: %s", err, out)
	}
	return 0
}

// TestHealthFollowsReadiness stops the server's database: gRPC health
// ("" and every service name) turns NOT_SERVING, as /readyz turns 503,
// and SERVING again when the database is back; Watch follows. With
// grpc-health-probe installed, the real probe sees the same.
func TestHealthFollowsReadiness(t *testing.T) {
	t.Parallel()
	dir, err := pgcluster.TempDir("secrets-health-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	opts := pgcluster.Options{DataDir: filepath.Join(dir, "data"), Port: 5441}
	cluster, err := pgcluster.Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cluster.Stop(context.Background()) })
	admin, err := pgx.Connect(ctx, cluster.ConnString("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, `CREATE DATABASE secrets`); err != nil {
		t.Fatal(err)
	}
	admin.Close(ctx)
	// Its own cluster, not testdb's: the server connects as the owner
	// (and migrates the fresh database itself).
	srv := testserver.Start(t, testserver.Options{DatabaseURL: cluster.ConnString("secrets"), ServiceURL: cluster.ConnString("secrets"), Configure: func(c *app.Config) {
		c.WatchPollInterval = 200 * time.Millisecond
		c.AllowOwnerRole = true
	}})
	health := healthpb.NewHealthClient(srv.Conn)
	bin := healthProbe(t)
	services := []string{"", "orient.secrets.v1.SecretService", "orient.secrets.v1.TokenService", "grpc.health.v1.Health"}

	check := func(want healthpb.HealthCheckResponse_ServingStatus, readyz int) {
		t.Helper()
		for _, svc := range services {
			res, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
			if err != nil || res.GetStatus() != want {
				t.Errorf("Check(%q): %v %v, want %v", svc, res.GetStatus(), err, want)
			}
		}
		if resp, body := rawDo(t, "GET", srv.BaseURL+"/readyz", "", nil); resp.StatusCode != readyz {
			t.Errorf("/readyz %d, want %d: %s", resp.StatusCode, readyz, body)
		}
		if bin != "" {
			wantExit := map[healthpb.HealthCheckResponse_ServingStatus]int{healthpb.HealthCheckResponse_SERVING: 0, healthpb.HealthCheckResponse_NOT_SERVING: 4}[want]
			for _, svc := range services[:2] {
				if got := probe(t, bin, srv.GRPCAddr(), svc); got != wantExit {
					t.Errorf("grpc-health-probe -service=%q: exit %d, want %d (%v)", svc, got, wantExit, want)
				}
			}
		}
	}
	if _, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: "no.such.Service"}); status.Code(err) != codes.NotFound {
		t.Errorf("unknown service: %v, want NOT_FOUND", err)
	}
	watch, err := health.Watch(ctx, &healthpb.HealthCheckRequest{Service: ""})
	if err != nil {
		t.Fatal(err)
	}
	next := func(want healthpb.HealthCheckResponse_ServingStatus) {
		t.Helper()
		res, err := watch.Recv()
		if err != nil || res.GetStatus() != want {
			t.Fatalf("Watch: %v %v, want %v", res.GetStatus(), err, want)
		}
	}
	next(healthpb.HealthCheckResponse_SERVING)
	check(healthpb.HealthCheckResponse_SERVING, 200)

	if err := cluster.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	check(healthpb.HealthCheckResponse_NOT_SERVING, 503)
	next(healthpb.HealthCheckResponse_NOT_SERVING)

	if cluster, err = pgcluster.Start(ctx, opts); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
		if err == nil && res.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still %v %v 30 s after the database came back", res.GetStatus(), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	check(healthpb.HealthCheckResponse_SERVING, 200)
	next(healthpb.HealthCheckResponse_SERVING)
}

// TestReflectionServesComments: reflection serves the API's files with
// their source info (grpcurl describe shows the proto's comments) and the
// error-detail types (so grpcurl and buf curl decode ErrorInfo).
func TestReflectionServesComments(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{})
	stream, err := reflectionpb.NewServerReflectionClient(srv.Dial(t, "")).ServerReflectionInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ask := func(symbol string) []*descriptorpb.FileDescriptorProto {
		t.Helper()
		if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: symbol}}); err != nil {
			t.Fatal(err)
		}
		res, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if e := res.GetErrorResponse(); e != nil {
			t.Fatalf("%s: %s", symbol, e.GetErrorMessage())
		}
		var out []*descriptorpb.FileDescriptorProto
		for _, raw := range res.GetFileDescriptorResponse().GetFileDescriptorProto() {
			fd := &descriptorpb.FileDescriptorProto{}
			if err := proto.Unmarshal(raw, fd); err != nil {
				t.Fatal(err)
			}
			out = append(out, fd)
		}
		return out
	}
	found := false
	for _, fd := range ask("orient.secrets.v1.SecretService") {
		if fd.GetName() != "orient/secrets/v1/secrets.proto" {
			continue
		}
		for _, loc := range fd.GetSourceCodeInfo().GetLocation() {
			if strings.Contains(loc.GetLeadingComments(), "SecretService stores Orient's secrets") {
				found = true
			}
		}
	}
	if !found {
		t.Error("reflection's secrets.proto has no comments (no source info)")
	}
	for _, symbol := range []string{"google.rpc.ErrorInfo", "google.rpc.BadRequest", "orient.secrets.v1.ErrorReason"} {
		if files := ask(symbol); len(files) == 0 {
			t.Errorf("%s: no file", symbol)
		}
	}
}
