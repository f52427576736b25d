package app

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/orient-bot/secrets/server/seal"
)

// readiness runs the checks /readyz and gRPC health share: the database
// answers (migrations were applied before the listeners opened), every KEK
// can wrap and unwrap, and the server is not shutting down.
func (s *Server) readiness(ctx context.Context) (checks map[string]string, ready bool) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	checks = map[string]string{"database": "ok", "migrations": "ok", "kek": "ok"}
	ready = true
	if err := s.store.Ping(ctx); err != nil {
		checks["database"] = "unavailable"
		ready = false
	}
	if err := s.kekCheck.check(ctx, s.keyring.Check); err != nil {
		checks["kek"] = "unavailable"
		if errors.Is(err, seal.ErrKEKRefused) {
			checks["kek"] = "refused"
		}
		ready = false
	}
	if s.shuttingDown.Load() {
		checks["server"] = "shutting down"
		ready = false
	}
	return checks, ready
}

// healthServer is grpc.health.v1 answered from readiness: "" and every
// service name are SERVING exactly when /readyz says ready, so a
// Kubernetes gRPC probe stops routing to a replica that cannot serve.
type healthServer struct {
	healthpb.UnimplementedHealthServer
	ready func(context.Context) bool
	// services are the names Check knows ("" and each registered service).
	services map[string]bool
	// watchEvery is how often Watch re-checks.
	watchEvery time.Duration
	stopped    atomic.Bool
	stop       chan struct{}
}

func newHealthServer(g *grpc.Server, ready func(context.Context) bool, watchEvery time.Duration) *healthServer {
	if watchEvery <= 0 {
		watchEvery = time.Second
	}
	h := &healthServer{ready: ready, services: map[string]bool{"": true}, watchEvery: watchEvery, stop: make(chan struct{})}
	for name := range g.GetServiceInfo() {
		h.services[name] = true
	}
	h.services[healthpb.Health_ServiceDesc.ServiceName] = true
	return h
}

// shutdown answers NOT_SERVING from now on and ends Watch streams.
func (h *healthServer) shutdown() {
	if h.stopped.CompareAndSwap(false, true) {
		close(h.stop)
	}
}

func (h *healthServer) status(ctx context.Context) healthpb.HealthCheckResponse_ServingStatus {
	if h.stopped.Load() || !h.ready(ctx) {
		return healthpb.HealthCheckResponse_NOT_SERVING
	}
	return healthpb.HealthCheckResponse_SERVING
}

func (h *healthServer) Check(ctx context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	if !h.services[req.GetService()] {
		return nil, status.Error(codes.NotFound, "unknown service")
	}
	return &healthpb.HealthCheckResponse{Status: h.status(ctx)}, nil
}

func (h *healthServer) List(ctx context.Context, _ *healthpb.HealthListRequest) (*healthpb.HealthListResponse, error) {
	st := h.status(ctx)
	out := &healthpb.HealthListResponse{Statuses: map[string]*healthpb.HealthCheckResponse{}}
	for name := range h.services {
		out.Statuses[name] = &healthpb.HealthCheckResponse{Status: st}
	}
	return out, nil
}

// Watch sends the status now and again whenever it changes (checked every
// watchEvery). An unknown service is SERVICE_UNKNOWN, as the protocol says.
func (h *healthServer) Watch(req *healthpb.HealthCheckRequest, stream grpc.ServerStreamingServer[healthpb.HealthCheckResponse]) error {
	ctx := stream.Context()
	last := healthpb.HealthCheckResponse_ServingStatus(-1)
	t := time.NewTicker(h.watchEvery)
	defer t.Stop()
	for {
		st := healthpb.HealthCheckResponse_SERVICE_UNKNOWN
		if h.services[req.GetService()] {
			st = h.status(ctx)
		}
		if st != last {
			if err := stream.Send(&healthpb.HealthCheckResponse{Status: st}); err != nil {
				return err
			}
			last = st
		}
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-h.stop:
			if last != healthpb.HealthCheckResponse_NOT_SERVING {
				_ = stream.Send(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_NOT_SERVING})
			}
			return status.Error(codes.Unavailable, "server shutting down")
		case <-t.C:
		}
	}
}
