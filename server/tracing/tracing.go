// Package tracing owns the service's OpenTelemetry set-up: a tracer provider
// that exports spans over OTLP/HTTP when the standard OTEL_* environment
// variables ask for it, and none otherwise (no instrumentation at all, no
// cost), the propagator that carries trace context across the REST gateway,
// gRPC and the Go client, and the sampling rule that keeps background
// database work (the change-log poll, maintenance) from starting traces of
// its own.
//
// What the instrumentation records is chosen so that no span holds a secret
// value or a token: gRPC spans carry the method and status (not messages or
// metadata), REST spans the method, route and status (tokens travel in a
// header that is not recorded), database spans the SQL text with its
// parameters left out (values reach PostgreSQL only as parameters, and only
// sealed).
package tracing

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// ServiceName is the service.name resource attribute unless OTEL_SERVICE_NAME
// or OTEL_RESOURCE_ATTRIBUTES say otherwise.
const ServiceName = "secretsd"

// Propagator is the W3C trace context propagator every hop uses. Baggage is
// left out on purpose: it is caller-controlled data copied into every
// downstream request.
func Propagator() propagation.TextMapPropagator { return propagation.TraceContext{} }

// Enabled reports whether the environment asks for span export: an OTLP
// endpoint is set (OTEL_EXPORTER_OTLP_ENDPOINT or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), OTEL_TRACES_EXPORTER is unset or
// "otlp", and OTEL_SDK_DISABLED is not "true".
func Enabled(getenv func(string) string) bool {
	if strings.EqualFold(strings.TrimSpace(getenv("OTEL_SDK_DISABLED")), "true") {
		return false
	}
	if e := strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER")); e != "" && e != "otlp" {
		return false
	}
	return getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
}

// FromEnv returns a tracer provider exporting over OTLP/HTTP as the OTEL_*
// variables say (endpoint, headers, timeout, TLS, resource, sampler), or nil
// when Enabled is false. version becomes service.version. Shut the provider
// down on exit to flush the last spans.
//
// Only the http/protobuf protocol is built in; asking for another is an
// error rather than a silent fallback.
func FromEnv(ctx context.Context, version string, getenv func(string) string) (*sdktrace.TracerProvider, error) {
	if !Enabled(getenv) {
		return nil, nil
	}
	for _, name := range []string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"} {
		if p := strings.TrimSpace(getenv(name)); p != "" {
			if p != "http/protobuf" {
				return nil, fmt.Errorf("%s=%q: only http/protobuf is supported", name, p)
			}
			break
		}
	}
	exp, err := otlptracehttp.New(ctx)
	if err != nil {
		// The exporter's error may quote the endpoint or headers (an API
		// key in OTEL_EXPORTER_OTLP_HEADERS): say which setting, not what.
		return nil, errors.New("OpenTelemetry: the OTEL_EXPORTER_OTLP_* settings are invalid")
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName(ServiceName), semconv.ServiceVersion(version)),
		resource.WithFromEnv(), // OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES win
		resource.WithHost(),
		resource.WithProcessPID(),
	)
	if err != nil && res == nil {
		return nil, fmt.Errorf("OpenTelemetry resource: %w", err)
	}
	opts := []sdktrace.TracerProviderOption{sdktrace.WithBatcher(exp), sdktrace.WithResource(res)}
	if getenv("OTEL_TRACES_SAMPLER") == "" {
		// The SDK reads OTEL_TRACES_SAMPLER itself when it is set.
		opts = append(opts, sdktrace.WithSampler(Sampler()))
	}
	return sdktrace.NewTracerProvider(opts...), nil
}

// Sampler is the default sampling rule: follow the caller's decision when a
// request carries trace context, sample every request that does not, and
// start no trace at a span that is not a request (a database query no
// request is waiting on: the change-log poll every second, maintenance, the
// audit committer); those would bury the requests' traces.
func Sampler() sdktrace.Sampler {
	return sdktrace.ParentBased(requestsOnly{})
}

type requestsOnly struct{}

func (requestsOnly) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	if p.Kind != trace.SpanKindServer && p.Kind != trace.SpanKindConsumer {
		return sdktrace.SamplingResult{Decision: sdktrace.Drop, Tracestate: trace.SpanContextFromContext(p.ParentContext).TraceState()}
	}
	return sdktrace.AlwaysSample().ShouldSample(p)
}

func (requestsOnly) Description() string { return "RequestsOnly" }
