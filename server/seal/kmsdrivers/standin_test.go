package kmsdrivers_test

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"net"
	"sync"
	"testing"
	"time"
)

// keyBox is a stand-in KMS's key store: a random AES-256-GCM key per key
// name, created on demand for the names it holds, and the names it refuses.
type keyBox struct {
	mu      sync.Mutex
	keys    map[string]cipher.AEAD
	refused map[string]bool
	delay   time.Duration // added to every call, as a remote KMS's round trip
	// gate, when set, holds every encrypt until it is closed; inFlight and
	// peak count the encrypts held or delayed at once.
	gate           chan struct{}
	inFlight, peak int
}

var (
	errNoKey   = errors.New("key not found")
	errRefused = errors.New("permission denied")
	errBadCT   = errors.New("invalid ciphertext")
)

func newKeyBox(names ...string) *keyBox {
	b := &keyBox{keys: map[string]cipher.AEAD{}, refused: map[string]bool{}}
	for _, n := range names {
		k := make([]byte, 32)
		if _, err := rand.Read(k); err != nil {
			panic(err)
		}
		block, _ := aes.NewCipher(k)
		b.keys[n], _ = cipher.NewGCM(block)
	}
	return b
}

func (b *keyBox) key(name string) (cipher.AEAD, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	k, ok := b.keys[name]
	switch {
	case !ok:
		return nil, errNoKey
	case b.refused[name]:
		return nil, errRefused
	}
	return k, nil
}

func (b *keyBox) counts() (inFlight, peak int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.inFlight, b.peak
}

func (b *keyBox) setRefused(name string, on bool) {
	b.mu.Lock()
	b.refused[name] = on
	b.mu.Unlock()
}

func (b *keyBox) wait() {
	b.mu.Lock()
	d := b.delay
	b.mu.Unlock()
	if d > 0 {
		time.Sleep(d)
	}
}

func (b *keyBox) encrypt(name string, pt []byte) ([]byte, error) {
	b.mu.Lock()
	b.inFlight++
	b.peak = max(b.peak, b.inFlight)
	gate := b.gate
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		b.inFlight--
		b.mu.Unlock()
	}()
	if gate != nil {
		<-gate
	}
	b.wait()
	k, err := b.key(name)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, k.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return k.Seal(nonce, nonce, pt, []byte(name)), nil
}

func (b *keyBox) decrypt(name string, ct []byte) ([]byte, error) {
	b.wait()
	k, err := b.key(name)
	if err != nil {
		return nil, err
	}
	if len(ct) < k.NonceSize() {
		return nil, errBadCT
	}
	pt, err := k.Open(nil, ct[:k.NonceSize()], ct[k.NonceSize():], []byte(name))
	if err != nil {
		return nil, errBadCT
	}
	return pt, nil
}

// listenAt listens on addr ("127.0.0.1:0" the first time; the same address
// to restart a stopped stand-in).
func listenAt(t *testing.T, addr string) net.Listener {
	t.Helper()
	var err error
	for range 50 {
		var l net.Listener
		if l, err = net.Listen("tcp", addr); err == nil {
			return l
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("listen %s: %v", addr, err)
	return nil
}
