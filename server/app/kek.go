package app

import (
	"context"

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
// background for as long as lifetime (the server's) lasts: a shutdown
// interrupts them, and the next RotateKEK resumes.
func (s *Server) keyService(lifetime context.Context, deps api.Deps) pb.KeyServiceServer {
	r := kek.New(s.store, s.keyring, kek.Options{Logger: s.log})
	return &api.KeyService{Deps: deps, Rotator: serverRotator{Rotator: r, lifetime: lifetime}}
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
