package app

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"

	"github.com/orient-bot/secrets/server/seal"
	"github.com/orient-bot/secrets/server/store"
)

// serviceKey loads (or creates, on first start) a 256-bit key the service
// keeps sealed in the database under the KEK.
func (s *Server) serviceKey(ctx context.Context, name string) ([]byte, error) {
	const version = 1
	sealed, err := s.store.ServiceKey(ctx, name, func() (store.Sealed, error) {
		k := make([]byte, 32)
		if _, err := rand.Read(k); err != nil {
			return store.Sealed{}, err
		}
		defer clear(k)
		sl, _, err := s.keyring.Seal(ctx, "__"+name, version, k)
		return store.Sealed{Ciphertext: sl.Ciphertext, WrappedDEK: sl.WrappedDEK, KEKID: sl.KEKID}, err
	})
	if err != nil {
		return nil, fmt.Errorf("service key %s: %w", name, err)
	}
	k, _, err := s.keyring.Open(ctx, "__"+name, version, seal.Sealed{Ciphertext: sealed.Ciphertext, WrappedDEK: sealed.WrappedDEK, KEKID: sealed.KEKID})
	switch {
	case errors.Is(err, seal.ErrUnknownKEK), errors.Is(err, seal.ErrCorrupt):
		return nil, fmt.Errorf("SECRETS_KEK_URL cannot open this database's keys (sealed under KEK %s; configured: %s): "+
			"the KEK is wrong, or the one that wrapped them was removed from the list", sealed.KEKID, strings.Join(s.keyring.IDs(), ", "))
	case err != nil:
		return nil, fmt.Errorf("service key %s: %w", name, err)
	}
	return k, nil
}

// valueMAC returns HMAC-SHA256 under key.
func valueMAC(key []byte) func([]byte) []byte {
	return func(v []byte) []byte {
		m := hmac.New(sha256.New, key)
		m.Write(v)
		return m.Sum(nil)
	}
}
