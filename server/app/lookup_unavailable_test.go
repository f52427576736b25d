package app

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/server/auditlog"
	"github.com/orient-bot/secrets/server/auth"
	"github.com/orient-bot/secrets/server/store"
)

// failingTokens answers every lookup with err (a statement timeout, say).
type failingTokens struct{ err error }

func (f failingTokens) TokenByHash(context.Context, []byte) (store.Token, error) {
	return store.Token{}, f.err
}
func (failingTokens) TouchTokens(context.Context, map[string]time.Time) error { return nil }

// A token lookup that does not finish (the caller's deadline passes while
// it waits for a lookup slot or the database, or the query fails) is no
// verdict on the token: the caller gets DEADLINE_EXCEEDED or UNAVAILABLE,
// not UNAUTHENTICATED, and no bad-credential denial is audited. Otherwise a
// flood of bad tokens makes valid callers look invalid.
func TestSlowTokenLookupIsNotUnauthenticated(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	var mu sync.Mutex
	var denied []store.AuditEvent
	q := auditlog.NewDenialQueue(func(_ context.Context, ev []store.AuditEvent) error {
		mu.Lock()
		defer mu.Unlock()
		denied = append(denied, ev...)
		return nil
	}, func(int) {}, log)
	qctx, stop := context.WithCancel(context.Background())
	defer stop()
	go q.Run(qctx)
	newAuthorizer := func(st auth.TokenStore) *authorizer {
		return &authorizer{authn: auth.NewAuthenticator(st, log), streams: newStreamLimiter(0), log: log, denials: q,
			denied: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x"}, []string{"reason"})}
	}
	call := func(a *authorizer, timeout time.Duration) error {
		ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer osk_valid"))
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		_, err := a.unary(ctx, &pb.ListSecretsRequest{}, &grpc.UnaryServerInfo{FullMethod: pb.SecretService_ListSecrets_FullMethodName},
			func(context.Context, any) (any, error) { return nil, nil })
		return err
	}
	// The lookup takes 20 ms; the caller waits 5.
	if err := call(newAuthorizer(&slowTokens{}), 5*time.Millisecond); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("slow lookup: got %v, want DEADLINE_EXCEEDED", err)
	}
	// The query itself fails (statement timeout: not a not-found).
	if err := call(newAuthorizer(failingTokens{errors.New("postgres error SQLSTATE 57014")}), time.Second); status.Code(err) != codes.Unavailable {
		t.Errorf("failed lookup: got %v, want UNAVAILABLE", err)
	}
	time.Sleep(50 * time.Millisecond)
	stop()
	mu.Lock()
	defer mu.Unlock()
	for _, e := range denied {
		t.Errorf("a lookup that did not finish was audited as a denial: %q %q", e.Outcome, e.Detail)
	}
}
