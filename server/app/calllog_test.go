package app

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// One line per finished call, at the code's level, with the method, the
// code, the error and the caller, and nothing of the request.
func TestCallLog(t *testing.T) {
	var buf bytes.Buffer
	l := callLog{slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))}
	info := &grpc.UnaryServerInfo{FullMethod: "/orient.secrets.v1.SecretService/AccessSecretVersion"}
	ctx, r := recordCalls(context.Background())
	r.actor, r.peer = "token:ci", "10.0.0.7:5000"
	call := func(err error) string {
		buf.Reset()
		_, _ = l.unary(ctx, "VALUE-IN-REQUEST", info, func(context.Context, any) (any, error) { return "VALUE-IN-ANSWER", err })
		return buf.String()
	}

	line := call(nil)
	for _, want := range []string{"level=INFO", `msg="finished call"`, "grpc.service=orient.secrets.v1.SecretService",
		"grpc.method=AccessSecretVersion", "grpc.method_type=unary", "grpc.code=OK", "grpc.time_ms=",
		"actor=token:ci", "peer=10.0.0.7:5000"} {
		if !strings.Contains(line, want) {
			t.Errorf("line %q lacks %q", line, want)
		}
	}
	if strings.Count(line, "\n") != 1 || strings.Contains(line, "VALUE-IN") || strings.Contains(line, "grpc.error") {
		t.Errorf("want one line, without payloads or error: %q", line)
	}
	if line := call(status.Error(codes.NotFound, "secret FOO not found")); !strings.Contains(line, "level=INFO") ||
		!strings.Contains(line, "grpc.code=NotFound") || !strings.Contains(line, `grpc.error="rpc error: code = NotFound desc = secret FOO not found"`) {
		t.Errorf("not found: %q", line)
	}
	if line := call(status.Error(codes.PermissionDenied, "no")); !strings.Contains(line, "level=WARN") {
		t.Errorf("permission denied: %q", line)
	}
	if line := call(status.Error(codes.Internal, "boom")); !strings.Contains(line, "level=ERROR") {
		t.Errorf("internal: %q", line)
	}

	// Below the logger's level, nothing is written.
	l = callLog{slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	if line := call(nil); line != "" {
		t.Errorf("an OK call logged at level warn: %q", line)
	}
}
