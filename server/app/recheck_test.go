package app

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/server/auth"
	"github.com/orient-bot/secrets/server/store"
)

// slowTokens is a token store whose lookups take a while, as a database's
// do, and are counted.
type slowTokens struct {
	lookups atomic.Int64
	revoked atomic.Bool
}

func (s *slowTokens) TokenByHash(ctx context.Context, _ []byte) (store.Token, error) {
	s.lookups.Add(1)
	select {
	case <-time.After(20 * time.Millisecond):
	case <-ctx.Done():
		return store.Token{}, ctx.Err()
	}
	t := store.Token{Name: "watcher", Role: "reader"}
	if s.revoked.Load() {
		t.RevokeTime = time.Now()
	}
	return t, nil
}

func (s *slowTokens) TouchTokens(context.Context, map[string]time.Time) error { return nil }

type idleStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s idleStream) Context() context.Context { return s.ctx }

// Many streams open with one token cost one credential check per re-check
// interval between them, not one each: when the token's cache entry
// expires, 50 streams re-checking on their own would each look the token
// up (a stampede of database reads every CacheTTL). Revoking the token
// still ends every one of them with UNAUTHENTICATED.
func TestStreamsShareCredentialRecheck(t *testing.T) {
	t.Parallel()
	const streams = 50
	tokens := &slowTokens{}
	log := slog.New(slog.DiscardHandler)
	a := &authorizer{authn: auth.NewAuthenticator(tokens, log), streams: newStreamLimiter(0), log: log}
	a.creds = newCredentialWatch(10*time.Millisecond, func(ctx context.Context) error {
		_, err := a.principal(ctx)
		return err
	})
	md := metadata.Pairs("authorization", "Bearer osk_test-token")
	var started, ended sync.WaitGroup
	errs := make(chan error, streams)
	for range streams {
		started.Add(1)
		ended.Go(func() {
			ss := idleStream{ctx: metadata.NewIncomingContext(context.Background(), md)}
			errs <- a.stream(nil, ss, &grpc.StreamServerInfo{FullMethod: pb.SecretService_WatchChanges_FullMethodName, IsServerStream: true},
				func(_ any, s grpc.ServerStream) error {
					started.Done()
					<-s.Context().Done()
					return s.Context().Err()
				})
		})
	}
	started.Wait()
	before := tokens.lookups.Load()
	// Past auth.CacheTTL: the cached lookup expires once at least.
	time.Sleep(auth.CacheTTL + 600*time.Millisecond)
	if n := tokens.lookups.Load() - before; n > 3 {
		t.Errorf("%d token lookups in %v by %d streams of one token; want one per cache expiry", n, auth.CacheTTL+600*time.Millisecond, streams)
	}
	tokens.revoked.Store(true)
	a.authn.Forget("watcher")
	done := make(chan struct{})
	go func() { ended.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("streams still open 10 s after their token was revoked")
	}
	close(errs)
	for err := range errs {
		if status.Code(err) != codes.Unauthenticated {
			t.Errorf("stream ended with %v, want UNAUTHENTICATED", err)
		}
	}
	a.creds.mu.Lock()
	defer a.creds.mu.Unlock()
	if len(a.creds.groups) != 0 {
		t.Errorf("%d credential groups left after every stream ended", len(a.creds.groups))
	}
}

// A group's re-check ends with its last stream, and a stream opened later
// with the same credentials starts a new one.
func TestCredentialWatchGroupLifecycle(t *testing.T) {
	t.Parallel()
	var checks atomic.Int64
	w := newCredentialWatch(5*time.Millisecond, func(ctx context.Context) error {
		checks.Add(1)
		return nil
	})
	ctx := context.Background()
	_, c1 := context.WithCancelCause(ctx)
	_, c2 := context.WithCancelCause(ctx)
	leave1 := w.join(ctx, "k", time.Time{}, c1)
	leave2 := w.join(ctx, "k", time.Time{}, c2)
	w.mu.Lock()
	n := len(w.groups)
	w.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d groups for one credential", n)
	}
	leave1()
	// Re-checks every 5 ms while stream 2 is open; a loaded machine may
	// run the first one late, so wait for it rather than a fixed time.
	for deadline := time.Now().Add(5 * time.Second); checks.Load() == 0 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if checks.Load() == 0 {
		t.Error("no re-check while a stream is open")
	}
	leave2()
	w.mu.Lock()
	n = len(w.groups)
	w.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d groups after the last stream left", n)
	}
	// Expiry ends the streams of a new group at the expiry time.
	sctx, c3 := context.WithCancelCause(ctx)
	defer w.join(ctx, "k", time.Now().Add(20*time.Millisecond), c3)()
	select {
	case <-sctx.Done():
		if context.Cause(sctx) != errCredentialsEnded {
			t.Errorf("ended by %v", context.Cause(sctx))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("stream not ended at its credentials' expiry")
	}
}
