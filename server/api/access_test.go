package api

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// slowRevision is a database whose revision probe takes delay (or until
// the probe's context ends) and answers rev.
type slowRevision struct {
	ConsumerStore
	rev   int64
	delay time.Duration
}

func (s slowRevision) Revision(ctx context.Context) (int64, error) {
	select {
	case <-time.After(s.delay):
		return s.rev, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// TestReachRevisionAnswersBeforeTheDeadline: a min_revision the database
// has not reached is REVISION_AHEAD before the caller's deadline, also
// when the database is slow to answer the probe (a loaded replica), and
// the caller's own cancellation stays its own error.
func TestReachRevisionAnswersBeforeTheDeadline(t *testing.T) {
	cases := []struct {
		name  string
		delay time.Duration
	}{
		{"fast database", 0},
		{"probe slower than the wait", 5 * time.Second},
		{"probes slow but answering", 300 * time.Millisecond},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := NewSecretService(Deps{Consumers: slowRevision{rev: 5, delay: c.delay}, MinRevisionWait: time.Minute})
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			start := time.Now()
			err := s.reachRevision(ctx, 1000)
			if el := time.Since(start); el > time.Second-answerMargin/2 {
				t.Errorf("answered after %v, leaving the caller less than %v", el, answerMargin/2)
			}
			if st := status.Convert(err); st.Code() != codes.OutOfRange || reasonOf(st) != "REVISION_AHEAD" {
				t.Errorf("got %v, want OUT_OF_RANGE REVISION_AHEAD", err)
			}
			// A reached revision is never AHEAD, even with less time left
			// than the margin (if the database answers in time at all).
			if err := s.reachRevision(ctx, 5); c.delay < 100*time.Millisecond && err != nil {
				t.Errorf("a reached revision: %v", err)
			}
		})
	}
	t.Run("caller cancels", func(t *testing.T) {
		s := NewSecretService(Deps{Consumers: slowRevision{rev: 5, delay: 5 * time.Second}, MinRevisionWait: time.Minute})
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(100*time.Millisecond, cancel)
		if err := s.reachRevision(ctx, 1000); !errors.Is(err, context.Canceled) {
			t.Errorf("got %v, want the caller's cancellation", err)
		}
	})
}

func reasonOf(st *status.Status) string {
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info.GetReason()
		}
	}
	return ""
}
