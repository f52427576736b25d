package app

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/server/auth"
	"github.com/orient-bot/secrets/server/store"
)

// slowRecorder records a failure audit event after delay, or once release
// closes.
type slowRecorder struct {
	delay    time.Duration
	release  chan struct{}
	recorded chan string
	count    atomic.Int64
}

func (r *slowRecorder) RecordFailure(_ context.Context, _ store.Meta, _ string, _ int64, outcome, _ string) error {
	if r.release != nil {
		<-r.release
	} else {
		time.Sleep(r.delay)
	}
	r.count.Add(1)
	select {
	case r.recorded <- outcome:
	default:
	}
	return nil
}

// failAudited runs a failing audited call through auditFailures.
func failAudited(ctx context.Context, fa *failureAudits) (time.Duration, error) {
	ctx = auth.WithPolicy(ctx, auth.Policy{Action: "AccessSecretVersion", Audited: true})
	start := time.Now()
	_, err := auditFailures(fa)(ctx, &pb.AccessSecretVersionRequest{Key: "K"},
		&grpc.UnaryServerInfo{FullMethod: "/orient.secrets.v1.SecretService/AccessSecretVersion"},
		func(context.Context, any) (any, error) {
			return nil, status.Error(codes.OutOfRange, "min_revision ahead")
		})
	return time.Since(start), err
}

// TestFailureAuditKeepsTheCallersDeadline: a failed call's answer waits for
// its audit event, but not past the caller's deadline: with a database
// slow to record it (under load; seen in CI, where a REVISION_AHEAD answer
// given 150 ms before the deadline reached the caller as
// DEADLINE_EXCEEDED), the answer leaves before the deadline and the event
// is still recorded after it, before shutdown (wait) returns. With less
// than the margin left it does not wait; without a deadline it waits for
// the record, as before.
func TestFailureAuditKeepsTheCallersDeadline(t *testing.T) {
	rec := &slowRecorder{delay: 2 * time.Second, recorded: make(chan string, 1)}
	fa := newFailureAudits(rec, slog.New(slog.DiscardHandler))
	const deadline = 600 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	took, err := failAudited(ctx, fa)
	if status.Code(err) != codes.OutOfRange {
		t.Fatalf("answer %v, want the handler's OUT_OF_RANGE", err)
	}
	if took >= deadline {
		t.Errorf("answered after %v, past the caller's deadline (%v)", took, deadline)
	}
	fa.wait()
	select {
	case outcome := <-rec.recorded:
		if outcome != "OUT_OF_RANGE" {
			t.Errorf("recorded outcome %q", outcome)
		}
	default:
		t.Fatal("wait returned before the failure was recorded")
	}

	// Less than the margin left: no wait at all.
	ctx, cancel = context.WithTimeout(context.Background(), failureAuditMargin/2)
	defer cancel()
	if took, _ := failAudited(ctx, fa); took >= failureAuditMargin/2 {
		t.Errorf("with %v left, answered after %v", failureAuditMargin/2, took)
	}
	fa.wait()
	if got := rec.count.Load(); got != 2 {
		t.Errorf("%d events recorded, want 2", got)
	}

	rec = &slowRecorder{delay: 300 * time.Millisecond, recorded: make(chan string, 1)}
	fa = newFailureAudits(rec, slog.New(slog.DiscardHandler))
	took, err = failAudited(context.Background(), fa)
	if status.Code(err) != codes.OutOfRange || took < rec.delay || rec.count.Load() != 1 {
		t.Errorf("without a deadline: %v after %v, %d recorded; want OUT_OF_RANGE once recorded (%v)",
			err, took, rec.count.Load(), rec.delay)
	}
}

// TestFailureAuditsInFlightAreBounded: at most failureAuditsInFlight
// events are recorded after their answers; past that a failed call waits
// for its own event, so a flood of failing calls with short deadlines
// cannot pile up writes on a slow database.
func TestFailureAuditsInFlightAreBounded(t *testing.T) {
	rec := &slowRecorder{release: make(chan struct{}), recorded: make(chan string, 1)}
	fa := newFailureAudits(rec, slog.New(slog.DiscardHandler))
	short := func() context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), failureAuditMargin/2)
		t.Cleanup(cancel)
		return ctx
	}
	for i := range failureAuditsInFlight {
		if took, _ := failAudited(short(), fa); took > time.Second {
			t.Fatalf("call %d waited %v with a free slot", i, took)
		}
	}
	returned := make(chan struct{})
	go func() {
		defer close(returned)
		failAudited(short(), fa)
	}()
	select {
	case <-returned:
		t.Fatal("a call past the bound answered before its event was recorded")
	case <-time.After(300 * time.Millisecond):
	}
	close(rec.release)
	<-returned
	fa.wait()
	if got := rec.count.Load(); got != failureAuditsInFlight+1 {
		t.Errorf("%d events recorded, want %d", got, failureAuditsInFlight+1)
	}
}
