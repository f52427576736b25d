package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/server/api"
	"github.com/orient-bot/secrets/server/kek"
	"github.com/orient-bot/secrets/server/store"
)

// checkKEKs refuses to start when the database holds data keys wrapped by a
// KEK that is not configured (e.g. an old KEK removed from SECRETS_KEK_URL
// before a rotation finished): the error names each such KEK and how many
// data keys it still wraps.
func (s *Server) checkKEKs(ctx context.Context) error {
	return kek.CheckConfigured(ctx, s.store, s.keyring)
}

// keyService builds the KeyService. Rotations it starts run in the
// background until the server shuts down, which interrupts them (and waits
// for their last audit event); the next RotateKEK resumes.
func (s *Server) keyService(ctx context.Context, deps api.Deps) pb.KeyServiceServer {
	s.rotator = kek.New(s.store, s.keyring, kek.Options{Logger: s.log})
	lifetime, stop := context.WithCancel(context.WithoutCancel(ctx))
	s.stopRotation = stop
	return &api.KeyService{Deps: deps, Rotator: serverRotator{Rotator: s.rotator, lifetime: lifetime}}
}

// interruptRotation stops a running rotation and waits until it has
// recorded how it ended (bounded by ctx), before the store closes.
func (s *Server) interruptRotation(ctx context.Context) {
	if s.rotator == nil {
		return
	}
	s.stopRotation()
	done := make(chan struct{})
	go func() { s.rotator.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.log.Warn("KEK rotation did not stop in time; its end may be missing from the audit log")
	}
}

// serverRotator runs the rotations the RPC starts under the server's
// lifetime rather than the request's.
type serverRotator struct {
	*kek.Rotator
	lifetime context.Context
}

func (r serverRotator) Start(ctx context.Context, meta store.Meta, batchSize int) (bool, error) {
	return r.Rotator.Start(ctx, r.lifetime, meta, batchSize)
}

// missingKEK explains a start with DATABASE_URL but no SECRETS_KEK_URL. When
// the database already holds data keys (a restored backup, a new replica),
// it names the KEKs they need by fingerprint, so the operator knows which
// key to fetch; it never guesses or starts without them.
func missingKEK(ctx context.Context, dsn string, log *slog.Logger) error {
	const base = "SECRETS_KEK_URL is required with DATABASE_URL (e.g. awskms://…, gcpkms://…, or base64key://<32 bytes in base64> for testing)"
	st, err := store.Open(ctx, dsn, store.Options{Logger: log})
	if err != nil {
		return errors.New(base)
	}
	defer st.Close()
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	counts, err := st.CountByKEK(cctx)
	if err != nil || len(counts) == 0 {
		return errors.New(base) // an empty or not yet migrated database
	}
	var need []string
	for _, c := range counts {
		need = append(need, fmt.Sprintf("KEK %s (%d data keys)", c.KEKID, c.DataKeys))
	}
	return fmt.Errorf("%s: this database's data keys are wrapped by %s; set SECRETS_KEK_URL to that key "+
		"(a restored backup needs the KEKs configured when it was taken)", base, strings.Join(need, ", "))
}
