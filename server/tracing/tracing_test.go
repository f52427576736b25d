package tracing

import (
	"context"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

func TestEnabled(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want bool
	}{
		{nil, false},
		{map[string]string{"OTEL_SERVICE_NAME": "x"}, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, true},
		{map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, true},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_TRACES_EXPORTER": "none"}, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_TRACES_EXPORTER": "otlp"}, true},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"}, false},
	} {
		if got := Enabled(func(k string) string { return tc.env[k] }); got != tc.want {
			t.Errorf("Enabled(%v) = %v, want %v", tc.env, got, tc.want)
		}
	}
}

func TestFromEnvOffAndProtocol(t *testing.T) {
	tp, err := FromEnv(context.Background(), "v", func(string) string { return "" })
	if tp != nil || err != nil {
		t.Fatalf("no OTEL_* variables: got provider %v, error %v; want neither", tp, err)
	}
	env := map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
	if _, err := FromEnv(context.Background(), "v", func(k string) string { return env[k] }); err == nil {
		t.Fatal("OTEL_EXPORTER_OTLP_PROTOCOL=grpc: want an error (only http/protobuf is built in)")
	}
	env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf"
	tp, err = FromEnv(context.Background(), "v", func(k string) string { return env[k] })
	if err != nil || tp == nil {
		t.Fatalf("http/protobuf: provider %v, error %v", tp, err)
	}
	tp.Shutdown(context.Background())
}

// TestSampler: a request starts a trace; a database query with no request
// around it does not; a query inside a sampled request is sampled.
func TestSampler(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(Sampler()), sdktrace.WithSpanProcessor(rec))
	tr := tp.Tracer("t")
	_, bg := tr.Start(context.Background(), "poll", trace.WithSpanKind(trace.SpanKindClient))
	bg.End()
	_, internal := tr.Start(context.Background(), "work")
	internal.End()
	ctx, req := tr.Start(context.Background(), "request", trace.WithSpanKind(trace.SpanKindServer))
	_, q := tr.Start(ctx, "query", trace.WithSpanKind(trace.SpanKindClient))
	q.End()
	req.End()
	var got []string
	for _, s := range rec.Ended() {
		got = append(got, s.Name())
	}
	if len(got) != 2 || got[0] != "query" || got[1] != "request" {
		t.Fatalf("sampled spans %v, want [query request]", got)
	}
}
