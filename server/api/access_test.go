package api

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// slowRevision is a database whose revision probe takes delay (or until
// the probe's context ends: then it counts the interruption) and answers
// rev.
type slowRevision struct {
	ConsumerStore
	rev         int64
	delay       time.Duration
	interrupted *atomic.Int32
	finished    *atomic.Int32
}

func (s slowRevision) Revision(ctx context.Context) (int64, error) {
	select {
	case <-time.After(s.delay):
		if s.finished != nil {
			s.finished.Add(1)
		}
		return s.rev, nil
	case <-ctx.Done():
		if s.interrupted != nil {
			s.interrupted.Add(1)
		}
		return 0, ctx.Err()
	}
}

// TestReachRevisionAnswersBeforeTheDeadline: a min_revision the database
// has not reached is answered before the caller's deadline, also when the
// database is slow to answer the probe (a loaded replica): REVISION_AHEAD
// when a probe found it behind, UNAVAILABLE when none answered (it may have
// reached it). A probe still running is not interrupted (that would close
// its pooled connection). A reached revision is never AHEAD, and the
// caller's own cancellation stays its own error.
func TestReachRevisionAnswersBeforeTheDeadline(t *testing.T) {
	cases := []struct {
		name   string
		delay  time.Duration
		code   codes.Code
		reason string
	}{
		{"fast database", 0, codes.OutOfRange, "REVISION_AHEAD"},
		{"probes slow but answering", 300 * time.Millisecond, codes.OutOfRange, "REVISION_AHEAD"},
		{"no probe answers in time", 1200 * time.Millisecond, codes.Unavailable, "DATABASE_UNAVAILABLE"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			var interrupted, finished atomic.Int32
			db := slowRevision{rev: 5, delay: c.delay, interrupted: &interrupted, finished: &finished}
			s := NewSecretService(Deps{Consumers: db, MinRevisionWait: time.Minute})
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			start := time.Now()
			err := s.reachRevision(ctx, 1000)
			if el := time.Since(start); el > time.Second-answerMargin/2 {
				t.Errorf("answered after %v, leaving the caller less than %v", el, answerMargin/2)
			}
			if st := status.Convert(err); st.Code() != c.code || reasonOf(st) != c.reason {
				t.Errorf("got %v, want %v %s", err, c.code, c.reason)
			}
			cancel()
			// Every probe started runs to its end.
			deadline := time.Now().Add(5 * time.Second)
			for finished.Load() == 0 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if n := interrupted.Load(); n != 0 || finished.Load() == 0 {
				t.Errorf("%d probes interrupted, %d finished; want none interrupted", n, finished.Load())
			}
		})
	}
	t.Run("reached, with less time left than the margin", func(t *testing.T) {
		t.Parallel()
		s := NewSecretService(Deps{Consumers: slowRevision{rev: 5}, MinRevisionWait: time.Minute})
		ctx, cancel := context.WithTimeout(context.Background(), answerMargin/2)
		defer cancel()
		if err := s.reachRevision(ctx, 5); err != nil {
			t.Errorf("a reached revision: %v", err)
		}
	})
	t.Run("caller cancels", func(t *testing.T) {
		t.Parallel()
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
