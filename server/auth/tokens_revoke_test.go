package auth

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/orient-bot/secrets/server/store"
)

// revokeRaceTokens holds its first lookup, after reading the row, until
// release is closed (as a slow query would), so a revocation can commit in
// between.
type revokeRaceTokens struct {
	mu      sync.Mutex
	revoked time.Time
	entered chan struct{}
	release chan struct{}
	once    sync.Once
}

func (f *revokeRaceTokens) TokenByHash(context.Context, []byte) (store.Token, error) {
	f.mu.Lock()
	row := store.Token{Name: "bot", Role: string(RoleAdmin), RevokeTime: f.revoked}
	f.mu.Unlock()
	first := false
	f.once.Do(func() { first = true })
	if first {
		close(f.entered)
		<-f.release
	}
	return row, nil
}

func (f *revokeRaceTokens) TouchTokens(context.Context, map[string]time.Time) error { return nil }

// A lookup that read the row before a revocation and finishes after Forget
// does not cache what it read: the revoked token fails at once on the
// replica that revoked it, as the README promises, not for up to CacheTTL.
func TestForgetOutlivesLookupInFlight(t *testing.T) {
	ctx := context.Background()
	f := &revokeRaceTokens{entered: make(chan struct{}), release: make(chan struct{})}
	a := NewAuthenticator(f, slog.New(slog.DiscardHandler))
	done := make(chan error)
	go func() { _, err := a.Authenticate(ctx, "osk_bot"); done <- err }()
	<-f.entered
	f.mu.Lock()
	f.revoked = time.Now() // RevokeToken commits…
	f.mu.Unlock()
	a.Forget("bot") // …then the handler forgets the token
	close(f.release)
	<-done
	if p, err := a.Authenticate(ctx, "osk_bot"); err != ErrRevoked {
		t.Errorf("after Forget: got %+v, %v; want ErrRevoked", p, err)
	}
}
