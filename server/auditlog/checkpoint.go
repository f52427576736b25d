package auditlog

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Checkpoint is a signed statement of the chain head: "the event with this
// sequence has this hash". The signing key lives outside the database.
type Checkpoint struct {
	Sequence  int64
	Hash      []byte
	Time      time.Time
	KeyID     string
	Signature []byte
}

func checkpointMessage(seq int64, hash []byte, t time.Time) []byte {
	msg := []byte("orient.secrets.audit-checkpoint.v1\x00")
	msg = binary.BigEndian.AppendUint64(msg, uint64(seq))
	msg = binary.BigEndian.AppendUint64(msg, uint64(t.UnixMicro()))
	return append(msg, hash...)
}

// Signer signs checkpoints with an Ed25519 key.
type Signer struct {
	key ed25519.PrivateKey
	id  string
}

// KeyID names a public key (a fingerprint, safe to show).
func KeyID(pub ed25519.PublicKey) string {
	h := sha256.Sum256(pub)
	return "ed25519-" + hex.EncodeToString(h[:8])
}

// LoadSigner reads a signing key file: the base64 of a 32-byte Ed25519
// seed, and nothing else.
func LoadSigner(file string) (*Signer, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		// The path is not repeated: given the key itself instead of a
		// path, it would put the key in a log or a terminal.
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("audit signing key: cannot read the key file (the option expects the path of a file holding the key, not the key): %w", err)
	}
	seed, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, errors.New("audit signing key: the file must hold the base64 of a 32-byte Ed25519 seed")
	}
	key := ed25519.NewKeyFromSeed(seed)
	clear(seed)
	return &Signer{key: key, id: KeyID(key.Public().(ed25519.PublicKey))}, nil
}

// NewSigner signs with key (tests, and callers holding the key already).
func NewSigner(key ed25519.PrivateKey) *Signer {
	return &Signer{key: key, id: KeyID(key.Public().(ed25519.PublicKey))}
}

// GenerateSigner creates a signing key file (0600) unless it exists, then
// loads it. For the embedded default only: in production keep the key
// where the database's administrators cannot read it.
func GenerateSigner(file string) (*Signer, bool, error) {
	created := false
	if _, err := os.Stat(file); errors.Is(err, os.ErrNotExist) {
		seed := make([]byte, ed25519.SeedSize)
		if _, err := rand.Read(seed); err != nil {
			return nil, false, err
		}
		if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
			return nil, false, err
		}
		f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, false, err
		}
		_, werr := f.WriteString(base64.StdEncoding.EncodeToString(seed) + "\n")
		clear(seed)
		if cerr := f.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			return nil, false, werr
		}
		created = true
	}
	s, err := LoadSigner(file)
	return s, created, err
}

// Public returns the verification key.
func (s *Signer) Public() ed25519.PublicKey { return s.key.Public().(ed25519.PublicKey) }

// ID names the key.
func (s *Signer) ID() string { return s.id }

// Sign makes a checkpoint of the event seq with the given hash.
func (s *Signer) Sign(seq int64, hash []byte, t time.Time) Checkpoint {
	t = t.Truncate(time.Microsecond).UTC()
	return Checkpoint{Sequence: seq, Hash: hash, Time: t, KeyID: s.id,
		Signature: ed25519.Sign(s.key, checkpointMessage(seq, hash, t))}
}

// Valid checks a checkpoint's signature.
func (c Checkpoint) Valid(pub ed25519.PublicKey) bool {
	return len(pub) == ed25519.PublicKeySize && c.KeyID == KeyID(pub) &&
		ed25519.Verify(pub, checkpointMessage(c.Sequence, c.Hash, c.Time), c.Signature)
}

// ParsePublicKey reads a public key: base64 of 32 bytes.
func ParsePublicKey(s string) (ed25519.PublicKey, error) {
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, errors.New("public key: base64 of 32 bytes expected")
	}
	return ed25519.PublicKey(b), nil
}
