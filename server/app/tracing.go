package app

import (
	"net/http"

	"github.com/exaring/otelpgx"
	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/stats"

	"github.com/orient-bot/secrets/server/tracing"
)

// Tracing is wired here and only here: a gRPC stats handler on the server
// (not an interceptor, so the interceptor chain is untouched), the same one
// run by the gateway's in-process unary calls (the REST span is in their
// context), one on the gateway's stream connection (which carries the REST
// request's trace context to the watch handler), otelhttp around the REST
// gateway, and the pgx query tracer. With no Config.TracerProvider all of
// it is left out.

// tracingServerHandlers are the stats handlers of the gRPC server and of
// the gateway's in-process calls.
func (s *Server) tracingServerHandlers() []stats.Handler {
	tp := s.cfg.TracerProvider
	if tp == nil {
		return nil
	}
	return []stats.Handler{otelgrpc.NewServerHandler(
		otelgrpc.WithTracerProvider(tp), otelgrpc.WithPropagators(tracing.Propagator()),
		otelgrpc.WithFilter(notHealth))}
}

func (s *Server) tracingDialOptions() []grpc.DialOption {
	tp := s.cfg.TracerProvider
	if tp == nil {
		return nil
	}
	return []grpc.DialOption{grpc.WithStatsHandler(otelgrpc.NewClientHandler(
		otelgrpc.WithTracerProvider(tp), otelgrpc.WithPropagators(tracing.Propagator())))}
}

// traceHTTP wraps the REST gateway. Spans are named by method only: the
// path holds key names, which do not belong in span names (cardinality).
func (s *Server) traceHTTP(h http.Handler) http.Handler {
	tp := s.cfg.TracerProvider
	if tp == nil {
		return h
	}
	return otelhttp.NewHandler(h, "rest", otelhttp.WithTracerProvider(tp),
		otelhttp.WithPropagators(tracing.Propagator()),
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string { return "REST " + r.Method }))
}

// queryTracer is the pgx tracer for the store, or nil. Query parameters
// (sealed values, token hashes) are never recorded: otelpgx leaves them out
// unless asked.
func (s *Server) queryTracer() pgx.QueryTracer {
	tp := s.cfg.TracerProvider
	if tp == nil {
		return nil
	}
	return otelpgx.NewTracer(otelpgx.WithTracerProvider(tp))
}

// notHealth keeps probes (every few seconds, from every kubelet) out of the
// traces.
func notHealth(info *stats.RPCTagInfo) bool {
	return info.FullMethodName != "/grpc.health.v1.Health/Check" && info.FullMethodName != "/grpc.health.v1.Health/Watch"
}
