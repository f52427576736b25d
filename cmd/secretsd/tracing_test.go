package main_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/orient-bot/secrets/client"
)

// otlpReceiver is a local OTLP/HTTP trace receiver: it keeps every export
// request as it arrived.
type otlpReceiver struct {
	mu   sync.Mutex
	raw  [][]byte
	reqs []*collectortrace.ExportTraceServiceRequest
	url  string
}

func startReceiver(t *testing.T) *otlpReceiver {
	t.Helper()
	r := &otlpReceiver{}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path != "/v1/traces" || req.Method != http.MethodPost {
			http.NotFound(w, req)
			return
		}
		var body io.Reader = req.Body
		if req.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(req.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			body = zr
		}
		raw, err := io.ReadAll(body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		msg := &collectortrace.ExportTraceServiceRequest{}
		if err := proto.Unmarshal(raw, msg); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		r.raw, r.reqs = append(r.raw, raw), append(r.reqs, msg)
		r.mu.Unlock()
		out, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	})}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Close() })
	r.url = "http://" + lis.Addr().String()
	return r
}

// span is a received span with its resource's service name.
type span struct {
	*tracepb.Span
	service string
}

func (r *otlpReceiver) spans() []span {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []span
	for _, req := range r.reqs {
		for _, rs := range req.ResourceSpans {
			svc := ""
			for _, kv := range rs.GetResource().GetAttributes() {
				if kv.Key == "service.name" {
					svc = kv.Value.GetStringValue()
				}
			}
			for _, ss := range rs.ScopeSpans {
				for _, s := range ss.Spans {
					out = append(out, span{s, svc})
				}
			}
		}
	}
	return out
}

// TestTracing runs the real binary with OTEL_EXPORTER_OTLP_ENDPOINT pointing
// at a local OTLP/HTTP receiver and checks what arrives: a REST call's trace
// context (W3C traceparent) runs through the REST span and the gRPC
// handler's span (called in-process) down to the PostgreSQL queries;
// the Go client carries its caller's trace context to the handler; database
// work no request waits for starts no trace; and no byte of any span (names,
// attributes, events, resource) holds a secret value or the token.
func TestTracing(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test: builds the binary and runs PostgreSQL")
	}
	bin := buildSecretsd(t)
	recv := startReceiver(t)
	base, err := os.MkdirTemp("/tmp", "secretsd-trace-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(base, 0o711); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	dataDir := filepath.Join(base, "data")
	token := "osk_trace-test-token-" + randomHex(t, 16)
	p := startSecretsd(t, bin, dataDir,
		"OTEL_EXPORTER_OTLP_ENDPOINT="+recv.url,
		"OTEL_BSP_SCHEDULE_DELAY=100",
		"SECRETS_BOOTSTRAP_TOKEN="+token)
	if !strings.Contains(p.stderr.String(), "OpenTelemetry tracing on") {
		t.Errorf("no \"tracing on\" line in the log:\n%s", p.stderr)
	}

	restValue := "rest-value-" + randomHex(t, 12)
	grpcValue := "grpc-value-" + randomHex(t, 12)

	// REST, inside a trace we started: traceparent version 00, sampled.
	traceID, parentSpan := randomHex(t, 16), randomHex(t, 8)
	body := `{"value":"` + base64.StdEncoding.EncodeToString([]byte(restValue)) + `"}`
	req, _ := http.NewRequest("PUT", p.httpURL+"/v1/secrets/TRACE_REST", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("traceparent", "00-"+traceID+"-"+parentSpan+"-01")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("PUT: %d %s", resp.StatusCode, raw)
	}
	req, _ = http.NewRequest("GET", p.httpURL+"/v1/secrets/TRACE_REST/versions/latest:access", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	if resp, err = http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	}
	raw, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Contains(raw, []byte(base64.StdEncoding.EncodeToString([]byte(restValue)))) {
		t.Fatalf("access: %d %s", resp.StatusCode, raw)
	}

	// The Go client, inside a span of the caller's own tracer.
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.New(ctx, p.grpcAddr, client.WithToken(token), client.WithTracerProvider(tp, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cctx, root := tp.Tracer("test").Start(ctx, "caller")
	if _, err := c.PutSecret(cctx, "TRACE_GRPC", []byte(grpcValue)); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Access(cctx, "TRACE_GRPC"); err != nil || string(v.Data) != grpcValue {
		t.Fatalf("client access: %v", err)
	}
	root.End()
	clientTrace := root.SpanContext().TraceID().String()

	// Idle for a few change-log polls: they must not start traces.
	time.Sleep(1500 * time.Millisecond)
	p.stop(t) // flushes the last spans

	spans := recv.spans()
	if len(spans) == 0 {
		t.Fatal("the receiver got no spans")
	}
	byID := map[string]span{}
	for _, s := range spans {
		byID[hex.EncodeToString(s.SpanId)] = s
		if s.service != "secretsd" {
			t.Errorf("span %q: service.name %q, want secretsd", s.Name, s.service)
		}
	}
	parentOf := func(s span) (span, bool) {
		ps, ok := byID[hex.EncodeToString(s.ParentSpanId)]
		return ps, ok
	}
	find := func(trace string, kind tracepb.Span_SpanKind, name string) []span {
		var out []span
		for _, s := range spans {
			if hex.EncodeToString(s.TraceId) == trace && s.Kind == kind && strings.Contains(s.Name, name) {
				out = append(out, s)
			}
		}
		return out
	}

	// REST → gateway → gRPC handler → PostgreSQL, one trace.
	rest := find(traceID, tracepb.Span_SPAN_KIND_SERVER, "REST PUT")
	if len(rest) != 1 || hex.EncodeToString(rest[0].ParentSpanId) != parentSpan {
		t.Fatalf("want one REST server span in trace %s with the caller's span as parent, got %d: %v", traceID, len(rest), names(spans))
	}
	// The gateway calls the handler in-process: its span is the REST span's
	// child, with no client span between.
	handler := find(traceID, tracepb.Span_SPAN_KIND_SERVER, "SecretService/PutSecret")
	if len(handler) != 1 || !bytes.Equal(handler[0].ParentSpanId, rest[0].SpanId) {
		t.Fatalf("want the gRPC handler's span under the REST span, got %d: %v", len(handler), names(spans))
	}
	var queries int
	for _, s := range find(traceID, tracepb.Span_SPAN_KIND_CLIENT, "") {
		for a, ok := parentOf(s); ok; a, ok = parentOf(a) {
			if bytes.Equal(a.SpanId, handler[0].SpanId) {
				queries++
				break
			}
		}
	}
	if queries == 0 {
		t.Errorf("no PostgreSQL span under the PutSecret handler's span")
	}

	// The Go client's trace reaches the handler.
	var clientSpanIDs []string
	for _, s := range rec.Ended() {
		if s.SpanKind().String() == "client" {
			clientSpanIDs = append(clientSpanIDs, s.SpanContext().SpanID().String())
		}
	}
	if len(clientSpanIDs) == 0 {
		t.Fatal("the client recorded no gRPC client span")
	}
	h := find(clientTrace, tracepb.Span_SPAN_KIND_SERVER, "SecretService/AccessSecretVersion")
	if len(h) != 1 || !contains(clientSpanIDs, hex.EncodeToString(h[0].ParentSpanId)) {
		t.Errorf("want the AccessSecretVersion handler span in the client's trace %s under a client span, got %d", clientTrace, len(h))
	}

	// Background work (change-log polls, maintenance) starts no trace.
	for _, s := range spans {
		if len(s.ParentSpanId) == 0 && s.Kind != tracepb.Span_SPAN_KIND_SERVER {
			t.Errorf("root span %q of kind %v: background work should not start traces", s.Name, s.Kind)
		}
	}

	// No value, no token, in any byte of any export.
	recv.mu.Lock()
	defer recv.mu.Unlock()
	var all bytes.Buffer
	for i, r := range recv.reqs {
		all.Write(recv.raw[i])
		js, _ := protojson.Marshal(r)
		all.Write(js)
	}
	for _, v := range []string{restValue, grpcValue} {
		for name, needle := range map[string]string{
			"value": v, "base64 value": base64.StdEncoding.EncodeToString([]byte(v)),
			"base64url value": base64.RawURLEncoding.EncodeToString([]byte(v)), "hex value": hex.EncodeToString([]byte(v)),
		} {
			if bytes.Contains(all.Bytes(), []byte(needle)) {
				t.Errorf("the exported spans contain a %s", name)
			}
		}
	}
	if bytes.Contains(all.Bytes(), []byte(token)) || bytes.Contains(all.Bytes(), []byte(token[4:20])) {
		t.Errorf("the exported spans contain the token")
	}
	t.Logf("%d spans in %d exports", len(spans), len(recv.reqs))
}

func names(spans []span) []string {
	var out []string
	for _, s := range spans {
		out = append(out, s.Kind.String()+" "+s.Name)
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
