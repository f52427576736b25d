package app_test

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"testing"
	"time"

	"gocloud.dev/gcerrors"
	"gocloud.dev/secrets"
	"gocloud.dev/secrets/driver"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testserver"
)

// kmsDelay is how long the slow test KMS takes to wrap a data key.
const kmsDelay = 200 * time.Millisecond

// slowKMS is a KMS keeper for tests ("slowkms://NAME"): AES-GCM under a key
// derived from NAME, whose Encrypt takes kmsDelay, like a remote KMS.
type slowKMS struct{ aead cipher.AEAD }

func init() {
	secrets.DefaultURLMux().RegisterKeeper("slowkms", slowKMSOpener{})
}

type slowKMSOpener struct{}

func (slowKMSOpener) OpenKeeperURL(_ context.Context, u *url.URL) (*secrets.Keeper, error) {
	key := sha256.Sum256([]byte(u.Host))
	block, err := aes.NewCipher(key[:])
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return secrets.NewKeeper(&slowKMS{aead: aead}), nil
}

func (k *slowKMS) Encrypt(ctx context.Context, plaintext []byte) ([]byte, error) {
	select {
	case <-time.After(kmsDelay):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	nonce := make([]byte, k.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return k.aead.Seal(nonce, nonce, plaintext, nil), nil
}

func (k *slowKMS) Decrypt(_ context.Context, ciphertext []byte) ([]byte, error) {
	n := k.aead.NonceSize()
	if len(ciphertext) < n {
		return nil, errors.New("slowkms: short ciphertext")
	}
	return k.aead.Open(nil, ciphertext[:n], ciphertext[n:], nil)
}

func (k *slowKMS) Close() error                       { return nil }
func (k *slowKMS) ErrorAs(error, any) bool            { return false }
func (k *slowKMS) ErrorCode(error) gcerrors.ErrorCode { return gcerrors.Unknown }

var _ driver.Keeper = (*slowKMS)(nil)

// TestSlowKMSDoesNotSerializeWrites: each new version's data key is
// wrapped by the KMS before the write takes the revision counter's lock,
// so concurrent writes wait for the KMS side by side, not one after the
// other (which would take writers × kmsDelay).
func TestSlowKMSDoesNotSerializeWrites(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{KEKURL: "slowkms://primary"})
	const writers = 8
	began := time.Now()
	var wg sync.WaitGroup
	for i := range writers {
		wg.Go(func() {
			if _, err := srv.Secrets.PutSecret(context.Background(), &pb.PutSecretRequest{Key: fmt.Sprintf("KMS_%d", i), Value: []byte("v")}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(began)
	t.Logf("%d concurrent writes with a %v KMS took %v", writers, kmsDelay, elapsed.Round(time.Millisecond))
	if elapsed >= writers/2*kmsDelay {
		t.Errorf("%d concurrent writes took %v: the KMS calls were serialized (each takes %v)", writers, elapsed, kmsDelay)
	}
	for i := range writers {
		if v, err := access(srv.Secrets, fmt.Sprintf("KMS_%d", i), "latest"); err != nil || v != "v" {
			t.Errorf("KMS_%d: %q, %v", i, v, err)
		}
	}
}
