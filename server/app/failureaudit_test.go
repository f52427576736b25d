package app

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/server/auth"
	"github.com/orient-bot/secrets/server/store"
)

// slowRecorder records a failure audit event after delay.
type slowRecorder struct {
	delay    time.Duration
	recorded chan string
}

func (r *slowRecorder) RecordFailure(_ context.Context, _ store.Meta, _ string, _ int64, outcome, _ string) error {
	time.Sleep(r.delay)
	r.recorded <- outcome
	return nil
}

// TestFailureAuditKeepsTheCallersDeadline: a failed call's answer waits for
// its audit event, but not past the caller's deadline: with a database
// slow to record it (under load; seen in CI, where a REVISION_AHEAD answer
// given 150 ms before the deadline reached the caller as
// DEADLINE_EXCEEDED), the answer leaves failureAuditMargin before the
// deadline and the event is still recorded after it. Without a deadline
// the answer waits for the record.
func TestFailureAuditKeepsTheCallersDeadline(t *testing.T) {
	failing := func(context.Context, any) (any, error) {
		return nil, status.Error(codes.OutOfRange, "min_revision ahead")
	}
	call := func(ctx context.Context, rec *slowRecorder) (time.Duration, error) {
		ctx = auth.WithPolicy(ctx, auth.Policy{Action: "AccessSecretVersion", Audited: true})
		start := time.Now()
		_, err := auditFailures(rec, slog.New(slog.DiscardHandler))(ctx, &pb.AccessSecretVersionRequest{Key: "K"},
			&grpc.UnaryServerInfo{FullMethod: "/orient.secrets.v1.SecretService/AccessSecretVersion"}, failing)
		return time.Since(start), err
	}

	rec := &slowRecorder{delay: 2 * time.Second, recorded: make(chan string, 1)}
	const deadline = 600 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	took, err := call(ctx, rec)
	if status.Code(err) != codes.OutOfRange {
		t.Fatalf("answer %v, want the handler's OUT_OF_RANGE", err)
	}
	if limit := deadline - failureAuditMargin/2; took > limit {
		t.Errorf("answered after %v, want before %v (the caller's deadline less the margin)", took, limit)
	}
	select {
	case outcome := <-rec.recorded:
		if outcome != "OUT_OF_RANGE" {
			t.Errorf("recorded outcome %q", outcome)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the failure was never recorded")
	}

	rec = &slowRecorder{delay: 300 * time.Millisecond, recorded: make(chan string, 1)}
	took, err = call(context.Background(), rec)
	if status.Code(err) != codes.OutOfRange || took < rec.delay {
		t.Errorf("without a deadline: %v after %v, want OUT_OF_RANGE once recorded (%v)", err, took, rec.delay)
	}
	select {
	case <-rec.recorded:
	default:
		t.Error("without a deadline: answered before the event was recorded")
	}
}
