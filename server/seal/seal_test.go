package seal

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"hash/crc32"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"gocloud.dev/gcerrors"
	"gocloud.dev/secrets"
)

// ---------------------------------------------------------------------------
// helpers

func newKeyURL(t testing.TB) string {
	t.Helper()
	var k [32]byte
	if _, err := rand.Read(k[:]); err != nil {
		t.Fatal(err)
	}
	return "base64key://" + base64.URLEncoding.EncodeToString(k[:])
}

func mustOpen(t testing.TB, urls []string, opts ...Option) *Keyring {
	t.Helper()
	k, err := OpenKeyring(context.Background(), urls, opts...)
	if err != nil {
		t.Fatalf("OpenKeyring: %v", err)
	}
	t.Cleanup(func() { k.Close() })
	return k
}

func mustSeal(t testing.TB, k *Keyring, key string, version int64, value []byte) Sealed {
	t.Helper()
	s, _, err := k.Seal(context.Background(), key, version, value)
	if err != nil {
		t.Fatalf("Seal: %v", err)
	}
	return s
}

func clone(s Sealed) Sealed {
	return Sealed{Ciphertext: bytes.Clone(s.Ciphertext), WrappedDEK: bytes.Clone(s.WrappedDEK), KEKID: s.KEKID}
}

// fake remote keeper, registered as sealtest://NAME, used to exercise error
// classification and KMS call counts.

type codedErr struct{ code gcerrors.ErrorCode }

func (e codedErr) Error() string { return "fake kms: " + e.code.String() }

type fakeKMS struct {
	name                     string
	encryptErr, decryptErr   atomic.Pointer[error]
	encryptCalls, decryptCls atomic.Int64
}

func (f *fakeKMS) setDecryptErr(err error) { f.decryptErr.Store(&err) }
func (f *fakeKMS) setEncryptErr(err error) { f.encryptErr.Store(&err) }

var (
	fakesMu sync.Mutex
	fakes   = map[string]*fakeKMS{}
)

func newFakeKMS(t testing.TB) (*fakeKMS, string) {
	t.Helper()
	name := strings.ToLower(regexp.MustCompile(`[^a-zA-Z0-9]`).ReplaceAllString(t.Name(), "-"))
	f := &fakeKMS{name: name}
	fakesMu.Lock()
	fakes[name] = f
	fakesMu.Unlock()
	t.Cleanup(func() {
		fakesMu.Lock()
		delete(fakes, name)
		fakesMu.Unlock()
	})
	return f, "sealtest://" + name
}

type fakeOpener struct{}

func (fakeOpener) OpenKeeperURL(_ context.Context, u *url.URL) (*secrets.Keeper, error) {
	fakesMu.Lock()
	f := fakes[u.Host]
	fakesMu.Unlock()
	if f == nil {
		return nil, fmt.Errorf("no fake KMS %q", u.Host)
	}
	return secrets.NewKeeper(fakeDriver{f}), nil
}

type fakeDriver struct{ f *fakeKMS }

func (d fakeDriver) Encrypt(_ context.Context, pt []byte) ([]byte, error) {
	d.f.encryptCalls.Add(1)
	if p := d.f.encryptErr.Load(); p != nil && *p != nil {
		return nil, *p
	}
	return append([]byte("fake:"+d.f.name+":"), pt...), nil
}

func (d fakeDriver) Decrypt(_ context.Context, ct []byte) ([]byte, error) {
	d.f.decryptCls.Add(1)
	if p := d.f.decryptErr.Load(); p != nil && *p != nil {
		return nil, *p
	}
	prefix := []byte("fake:" + d.f.name + ":")
	if !bytes.HasPrefix(ct, prefix) {
		return nil, codedErr{gcerrors.InvalidArgument}
	}
	return bytes.Clone(ct[len(prefix):]), nil
}

func (fakeDriver) Close() error            { return nil }
func (fakeDriver) ErrorAs(error, any) bool { return false }
func (fakeDriver) ErrorCode(err error) gcerrors.ErrorCode {
	var c codedErr
	if errors.As(err, &c) {
		return c.code
	}
	return gcerrors.Unknown
}

func init() {
	secrets.DefaultURLMux().RegisterKeeper("sealtest", fakeOpener{})
}

// ---------------------------------------------------------------------------
// round trip and binding

func TestRoundTrip(t *testing.T) {
	ctx := context.Background()
	big := make([]byte, 1<<20)
	rand.Read(big)
	values := []struct {
		name  string
		key   string
		ver   int64
		value []byte
	}{
		{"empty value", "db/password", 1, []byte{}},
		{"nil value", "db/password", 2, nil},
		{"short", "api-key", 1, []byte("hunter2")},
		{"binary with zeros", "bin", 7, []byte{0, 0, 0, 0, 1, 2, 3, 0}},
		{"empty key", "", 1, []byte("v")},
		{"unicode key", "clé/ключ/鍵", 1 << 40, []byte("valeur")},
		{"negative version", "k", -1, []byte("v")},
		{"1 MiB", "big", 3, big},
	}
	for _, cache := range []int{DefaultDEKCacheSize, 0} {
		k := mustOpen(t, []string{newKeyURL(t)}, WithDEKCache(cache))
		for _, tc := range values {
			t.Run(fmt.Sprintf("%s/cache=%d", tc.name, cache), func(t *testing.T) {
				s, crc, err := k.Seal(ctx, tc.key, tc.ver, tc.value)
				if err != nil {
					t.Fatalf("Seal: %v", err)
				}
				if want := crc32.Checksum(tc.value, crc32.MakeTable(crc32.Castagnoli)); crc != want {
					t.Errorf("Seal crc = %08x, want crc32c %08x", crc, want)
				}
				if s.KEKID != k.PrimaryID() {
					t.Errorf("KEKID = %q, want primary %q", s.KEKID, k.PrimaryID())
				}
				if s.Ciphertext[0] != formatV1 || len(s.Ciphertext) != headerSize+crcSize+len(tc.value)+tagSize {
					t.Errorf("ciphertext: version %d, len %d", s.Ciphertext[0], len(s.Ciphertext))
				}
				if len(tc.value) >= 4 && bytes.Contains(s.Ciphertext, tc.value) {
					t.Error("ciphertext contains the plaintext")
				}
				got, gotCRC, err := k.Open(ctx, tc.key, tc.ver, s)
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				if !bytes.Equal(got, tc.value) || gotCRC != crc {
					t.Errorf("Open = (%d bytes, %08x), want (%d bytes, %08x)", len(got), gotCRC, len(tc.value), crc)
				}
			})
		}
	}
}

func TestSealIsRandomized(t *testing.T) {
	k := mustOpen(t, []string{newKeyURL(t)})
	a := mustSeal(t, k, "k", 1, []byte("same"))
	b := mustSeal(t, k, "k", 1, []byte("same"))
	if bytes.Equal(a.Ciphertext, b.Ciphertext) || bytes.Equal(a.WrappedDEK, b.WrappedDEK) {
		t.Error("two seals of the same value share a ciphertext or wrapped DEK")
	}
}

func TestOpenRejectsOtherBinding(t *testing.T) {
	ctx := context.Background()
	for _, cache := range []int{DefaultDEKCacheSize, 0} {
		k := mustOpen(t, []string{newKeyURL(t)}, WithDEKCache(cache))
		rowA := mustSeal(t, k, "service/a", 3, []byte("value of a"))
		rowB := mustSeal(t, k, "service/b", 3, []byte("value of b"))
		tests := []struct {
			name string
			key  string
			ver  int64
			s    Sealed
		}{
			{"other version", "service/a", 4, rowA},
			{"other key", "service/x", 3, rowA},
			{"key prefix", "service/", 3, rowA},
			{"row A copied into row B", "service/b", 3, rowA},
			{"row B copied into row A", "service/a", 3, rowB},
			{"ciphertext of A with DEK of B", "service/a", 3, Sealed{rowA.Ciphertext, rowB.WrappedDEK, rowB.KEKID}},
			{"ciphertext of B with DEK of A", "service/b", 3, Sealed{rowB.Ciphertext, rowA.WrappedDEK, rowA.KEKID}},
		}
		for _, tc := range tests {
			t.Run(fmt.Sprintf("%s/cache=%d", tc.name, cache), func(t *testing.T) {
				got, _, err := k.Open(ctx, tc.key, tc.ver, tc.s)
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("Open = %q, %v; want ErrCorrupt", got, err)
				}
				if strings.Contains(err.Error(), "value of") {
					t.Errorf("error leaks plaintext: %v", err)
				}
			})
		}
	}
}

func TestAADUnambiguous(t *testing.T) {
	pairs := [][2]struct {
		key string
		ver int64
	}{
		{{"a", 1}, {"b", 1}},
		{{"a", 1}, {"a", 2}},
		{{"ab", 1}, {"a", 1}},
		{{"", 0}, {"\x00", 0}},
		{{"a\x00\x00\x00\x00\x00\x00\x00\x00", 1}, {"a", 0}},
	}
	for _, p := range pairs {
		a, _ := aad(p[0].key, p[0].ver)
		b, _ := aad(p[1].key, p[1].ver)
		if bytes.Equal(a, b) {
			t.Errorf("aad(%q,%d) == aad(%q,%d)", p[0].key, p[0].ver, p[1].key, p[1].ver)
		}
	}
	if _, err := aad(strings.Repeat("k", 1<<16), 1); err == nil {
		t.Error("aad accepted a key longer than 65535 bytes")
	}
}

func TestTamperedFails(t *testing.T) {
	ctx := context.Background()
	k := mustOpen(t, []string{newKeyURL(t)}, WithDEKCache(0))
	orig := mustSeal(t, k, "k", 1, []byte("a secret value"))

	// Every single-bit flip anywhere in the ciphertext or wrapped DEK.
	for _, field := range []string{"ciphertext", "wrapped DEK"} {
		n := len(orig.Ciphertext)
		if field == "wrapped DEK" {
			n = len(orig.WrappedDEK)
		}
		for i := range n {
			s := clone(orig)
			b := s.Ciphertext
			if field == "wrapped DEK" {
				b = s.WrappedDEK
			}
			b[i] ^= 0x01
			if _, _, err := k.Open(ctx, "k", 1, s); !errors.Is(err, ErrCorrupt) {
				t.Errorf("%s byte %d flipped: err = %v, want ErrCorrupt", field, i, err)
			}
		}
	}

	mod := func(f func(*Sealed)) Sealed { s := clone(orig); f(&s); return s }
	tests := []struct {
		name string
		s    Sealed
	}{
		{"empty ciphertext", mod(func(s *Sealed) { s.Ciphertext = nil })},
		{"only version byte", mod(func(s *Sealed) { s.Ciphertext = s.Ciphertext[:1] })},
		{"truncated to minimum-1", mod(func(s *Sealed) { s.Ciphertext = s.Ciphertext[:minCiphertextLen-1] })},
		{"truncated by one", mod(func(s *Sealed) { s.Ciphertext = s.Ciphertext[:len(s.Ciphertext)-1] })},
		{"byte appended", mod(func(s *Sealed) { s.Ciphertext = append(s.Ciphertext, 0) })},
		{"unknown version 0x00", mod(func(s *Sealed) { s.Ciphertext[0] = 0 })},
		{"unknown version 0x02", mod(func(s *Sealed) { s.Ciphertext[0] = 2 })},
		{"empty wrapped DEK", mod(func(s *Sealed) { s.WrappedDEK = nil })},
		{"truncated wrapped DEK", mod(func(s *Sealed) { s.WrappedDEK = s.WrappedDEK[:10] })},
		{"empty KEK id", mod(func(s *Sealed) { s.KEKID = "" })},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := k.Open(ctx, "k", 1, tc.s); !errors.Is(err, ErrCorrupt) {
				t.Errorf("err = %v, want ErrCorrupt", err)
			}
		})
	}
}

// A checksum mismatch inside an authentic ciphertext cannot be produced by
// tampering (GCM catches that first), so craft one with the real DEK.
func TestChecksumMismatch(t *testing.T) {
	ctx := context.Background()
	k := mustOpen(t, []string{newKeyURL(t)})
	s := mustSeal(t, k, "k", 1, []byte("value"))
	aead, err := k.dekAEAD(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	ad, _ := aad("k", 1)
	inner := append([]byte{0xde, 0xad, 0xbe, 0xef}, "value"...)
	nonce := s.Ciphertext[1:headerSize]
	s.Ciphertext = aead.Seal(append([]byte{formatV1}, nonce...), nonce, inner, ad)
	if _, _, err := k.Open(ctx, "k", 1, s); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "checksum") {
		t.Errorf("err = %v, want ErrCorrupt checksum mismatch", err)
	}
}

func TestWrongKEK(t *testing.T) {
	ctx := context.Background()
	urlA, urlB := newKeyURL(t), newKeyURL(t)
	ringA := mustOpen(t, []string{urlA})
	ringAB := mustOpen(t, []string{urlB, urlA}, WithDEKCache(0))
	s := mustSeal(t, ringA, "k", 1, []byte("v"))

	// The row claims it was wrapped by B, which cannot unwrap it.
	forged := clone(s)
	forged.KEKID = ringAB.PrimaryID()
	if _, _, err := ringAB.Open(ctx, "k", 1, forged); !errors.Is(err, ErrCorrupt) {
		t.Errorf("open with wrong KEK: err = %v, want ErrCorrupt", err)
	}
	if _, err := ringAB.Rewrap(ctx, forged); err != nil {
		t.Errorf("Rewrap of a row already under the primary should be a no-op, got %v", err)
	}
	// And A is not configured at all in a ring holding only B.
	ringB := mustOpen(t, []string{urlB})
	if _, _, err := ringB.Open(ctx, "k", 1, s); !errors.Is(err, ErrUnknownKEK) {
		t.Errorf("open with KEK missing from ring: err = %v, want ErrUnknownKEK", err)
	}
}

func TestUnknownKEK(t *testing.T) {
	ctx := context.Background()
	k := mustOpen(t, []string{newKeyURL(t)})
	s := mustSeal(t, k, "k", 1, []byte("v"))
	s.KEKID = "kek-0123456789abcdef"
	if _, _, err := k.Open(ctx, "k", 1, s); !errors.Is(err, ErrUnknownKEK) {
		t.Errorf("Open: err = %v, want ErrUnknownKEK", err)
	}
	if _, err := k.Rewrap(ctx, s); !errors.Is(err, ErrUnknownKEK) {
		t.Errorf("Rewrap: err = %v, want ErrUnknownKEK", err)
	}
}

func TestRotation(t *testing.T) {
	ctx := context.Background()
	oldURL, newURL := newKeyURL(t), newKeyURL(t)
	oldRing := mustOpen(t, []string{oldURL})
	value := []byte("rotate me")
	s := mustSeal(t, oldRing, "db/password", 5, value)

	ring := mustOpen(t, []string{newURL, oldURL})
	if ring.PrimaryID() == oldRing.PrimaryID() {
		t.Fatal("new and old KEKs have the same id")
	}
	if ids := ring.IDs(); len(ids) != 2 || ids[0] != ring.PrimaryID() || ids[1] != oldRing.PrimaryID() {
		t.Fatalf("IDs() = %v", ids)
	}
	if got, _, err := ring.Open(ctx, "db/password", 5, s); err != nil || !bytes.Equal(got, value) {
		t.Fatalf("open old row in rotated ring: %q, %v", got, err)
	}
	// New writes go to the new primary.
	if s2 := mustSeal(t, ring, "db/password", 6, value); s2.KEKID != ring.PrimaryID() {
		t.Errorf("new seal KEKID = %s, want %s", s2.KEKID, ring.PrimaryID())
	}

	r, err := ring.Rewrap(ctx, s)
	if err != nil {
		t.Fatalf("Rewrap: %v", err)
	}
	if r.KEKID != ring.PrimaryID() {
		t.Errorf("rewrapped KEKID = %s, want %s", r.KEKID, ring.PrimaryID())
	}
	if !bytes.Equal(r.Ciphertext, s.Ciphertext) {
		t.Error("Rewrap changed the ciphertext")
	}
	if bytes.Equal(r.WrappedDEK, s.WrappedDEK) {
		t.Error("Rewrap did not change the wrapped DEK")
	}
	for name, k := range map[string]*Keyring{
		"rotated ring":  ring,
		"new KEK alone": mustOpen(t, []string{newURL}, WithDEKCache(0)),
	} {
		if got, _, err := k.Open(ctx, "db/password", 5, r); err != nil || !bytes.Equal(got, value) {
			t.Errorf("%s: open rewrapped row: %q, %v", name, got, err)
		}
	}
	if _, _, err := oldRing.Open(ctx, "db/password", 5, r); !errors.Is(err, ErrUnknownKEK) {
		t.Errorf("old ring opening rewrapped row: err = %v, want ErrUnknownKEK", err)
	}
	// Rewrapping again is a no-op.
	if r2, err := ring.Rewrap(ctx, r); err != nil || !bytes.Equal(r2.WrappedDEK, r.WrappedDEK) || r2.KEKID != r.KEKID {
		t.Errorf("second Rewrap: %v", err)
	}
	// A tampered wrapped DEK is not rewrapped.
	bad := clone(s)
	bad.WrappedDEK[len(bad.WrappedDEK)-1] ^= 1
	if _, err := ring.Rewrap(ctx, bad); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Rewrap of tampered DEK: err = %v, want ErrCorrupt", err)
	}
}

// ---------------------------------------------------------------------------
// URLs and fingerprints

func TestOpenKeyringInvalidURLs(t *testing.T) {
	var raw [32]byte
	rand.Read(raw[:])
	valid := "base64key://" + base64.URLEncoding.EncodeToString(raw[:])
	key := base64.URLEncoding.EncodeToString(raw[:])
	short := base64.URLEncoding.EncodeToString(raw[:16])
	// A standard-base64 key that contains '/', which ends the URL host.
	slashKey := make([]byte, 32)
	slashKey[0] = 0xff
	slashKey[1] = 0xff
	std := base64.StdEncoding.EncodeToString(slashKey)

	tests := []struct {
		name    string
		urls    []string
		wantMsg string
	}{
		{"no URLs", nil, "no KEK URL"},
		{"empty string", []string{""}, "entry 1: empty"},
		{"blank", []string{"   "}, "entry 1: empty"},
		{"empty base64key", []string{"base64key://"}, "entry 1: base64key:// URL holds no key"},
		{"empty base64key second", []string{valid, "base64key://"}, "entry 2: base64key:// URL holds no key"},
		{"empty base64key upper case", []string{"BASE64KEY://"}, "holds no key"},
		{"empty secrets+base64key", []string{"secrets+base64key://"}, "holds no key"},
		{"empty secrets+keeper+base64key", []string{"secrets+keeper+base64key://"}, "holds no key"},
		{"key in path", []string{"base64key:///" + key}, "must be URL-safe base64"},
		{"empty base64key with query", []string{"base64key://?x=1"}, "holds no key"},
		{"std base64 starting with slash", []string{"base64key:///+8" + key[3:]}, "must be URL-safe base64"},
		{"opaque base64key", []string{"base64key:" + key}, "must have the form"},
		{"short key", []string{"base64key://" + short}, "16 bytes, want 32"},
		{"long key", []string{"base64key://" + base64.URLEncoding.EncodeToString(append(raw[:], raw[:]...))}, "64 bytes, want 32"},
		{"not base64", []string{"base64key://" + strings.Repeat("!", 44)}, ""},
		{"std base64 with slash", []string{"base64key://" + std}, "must be URL-safe base64"},
		{"query parameter", []string{valid + "?foo=bar"}, "no query parameters"},
		{"user info", []string{"base64key://user@" + key}, "user info"},
		{"unparsable", []string{"base64key://" + key + "%zz"}, "not a valid URL"},
		{"control character", []string{"base64key://" + key + "\x7f"}, "not a valid URL"},
		{"no scheme (raw key)", []string{key}, "no scheme"},
		{"unknown scheme", []string{"bas64key://" + key}, "no KEK driver registered"},
		{"duplicate", []string{valid, valid}, "entries 1 and 2 name the same KEK"},
		{"duplicate unpadded", []string{valid, strings.TrimRight(valid, "=")}, "same KEK"},
		{"duplicate with prefix", []string{valid, "secrets+" + valid}, "same KEK"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k, err := OpenKeyring(context.Background(), tc.urls)
			if err == nil {
				k.Close()
				t.Fatal("OpenKeyring succeeded")
			}
			if !errors.Is(err, ErrInvalidKEKURL) {
				t.Errorf("err = %v, want ErrInvalidKEKURL", err)
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.wantMsg) {
				t.Errorf("err = %q, want it to contain %q", msg, tc.wantMsg)
			}
			for _, u := range tc.urls {
				if u = strings.TrimSpace(u); u == "" || strings.HasSuffix(u, "://") {
					continue // nothing secret in it
				}
				if strings.Contains(msg, u) {
					t.Errorf("error contains the URL: %q", msg)
				}
			}
			for _, secret := range []string{key, key[:12], short[:12], std[:12]} {
				if strings.Contains(msg, secret) {
					t.Errorf("error contains key material: %q", msg)
				}
			}
		})
	}
}

func TestOpenKeyringValidSpellings(t *testing.T) {
	var raw [32]byte
	rand.Read(raw[:])
	key := base64.URLEncoding.EncodeToString(raw[:])
	want := mustOpen(t, []string{"base64key://" + key}).PrimaryID()
	for _, u := range []string{
		"base64key://" + strings.TrimRight(key, "="),
		"BASE64KEY://" + key,
		"secrets+base64key://" + key,
		"  base64key://" + key + "  ",
	} {
		if got := mustOpen(t, []string{u}).PrimaryID(); got != want {
			t.Errorf("spelling %d: id %s, want %s", len(u), got, want)
		}
	}
}

func TestFingerprint(t *testing.T) {
	// Pinned: ids are stored in every row, so they must never change.
	zero := "base64key://" + base64.URLEncoding.EncodeToString(make([]byte, 32))
	k := mustOpen(t, []string{zero})
	id := k.PrimaryID()
	if !regexp.MustCompile(`^kek-[0-9a-f]{16}$`).MatchString(id) {
		t.Errorf("id %q has the wrong form", id)
	}
	seen := map[string]bool{id: true}
	for range 100 {
		u := newKeyURL(t)
		spec, err := parseKEKURL(1, u, secrets.DefaultURLMux())
		if err != nil {
			t.Fatal(err)
		}
		if seen[spec.id] {
			t.Fatalf("two different keys share id %s", spec.id)
		}
		seen[spec.id] = true
		if strings.Contains(u, spec.id[4:]) {
			t.Errorf("id %s appears in its URL", spec.id)
		}
	}
	// Remote URLs: query order is irrelevant, anything else is not.
	a, err1 := parseKEKURL(1, "sealtest://k?b=2&a=1", secrets.DefaultURLMux())
	b, err2 := parseKEKURL(1, "SEALTEST://k?a=1&b=2#frag", secrets.DefaultURLMux())
	c, err3 := parseKEKURL(1, "sealtest://K?a=1&b=2", secrets.DefaultURLMux())
	if err := errors.Join(err1, err2, err3); err != nil {
		t.Fatal(err)
	}
	if a.id != b.id || a.id == c.id {
		t.Errorf("remote ids: %s %s %s", a.id, b.id, c.id)
	}
}

func TestFingerprintPinned(t *testing.T) {
	zero := "base64key://" + base64.URLEncoding.EncodeToString(make([]byte, 32))
	spec, err := parseKEKURL(1, zero, secrets.DefaultURLMux())
	if err != nil {
		t.Fatal(err)
	}
	if want := fingerprint("base64key://AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="); spec.id != want {
		t.Errorf("id = %s, want %s", spec.id, want)
	}
	if want := "kek-5e8bdfcf79f82810"; spec.id != want {
		t.Errorf("fingerprint of the all-zero key changed: %s, want %s (stored rows would be orphaned)", spec.id, want)
	}
}

func TestParseKEKURLs(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantErr string
	}{
		{"base64key://a", []string{"base64key://a"}, ""},
		{" base64key://a , awskms://alias/x ", []string{"base64key://a", "awskms://alias/x"}, ""},
		{"a,b,c", []string{"a", "b", "c"}, ""},
		{"", nil, "SECRETS_KEK_URL is empty"},
		{"  ", nil, "SECRETS_KEK_URL is empty"},
		{"a,", nil, "entry 2 is empty"},
		{",a", nil, "entry 1 is empty"},
		{"a, ,b", nil, "entry 2 is empty"},
	}
	for _, tc := range tests {
		got, err := ParseKEKURLs(tc.in)
		if tc.wantErr != "" {
			if !errors.Is(err, ErrInvalidKEKURL) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseKEKURLs(%q) err = %v, want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || strings.Join(got, "|") != strings.Join(tc.want, "|") {
			t.Errorf("ParseKEKURLs(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

// ---------------------------------------------------------------------------
// dev KEK

func TestGenerateDevKEK(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state", "kek")

	u1, created, err := GenerateDevKEK(path)
	if err != nil || !created {
		t.Fatalf("first call: created=%v err=%v", created, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS != "windows" && fi.Mode().Perm() != 0o600 {
		t.Errorf("mode = %04o, want 0600", fi.Mode().Perm())
	}
	u2, created, err := GenerateDevKEK(path)
	if err != nil || created || u2 != u1 {
		t.Fatalf("second call: same=%v created=%v err=%v", u2 == u1, created, err)
	}
	k := mustOpen(t, []string{u1})
	s := mustSeal(t, k, "k", 1, []byte("v"))
	if _, _, err := mustOpen(t, []string{u2}).Open(context.Background(), "k", 1, s); err != nil {
		t.Errorf("open with reloaded dev KEK: %v", err)
	}

	// `openssl rand -base64 32` output is accepted and normalized.
	other := filepath.Join(dir, "openssl")
	raw := make([]byte, 32)
	raw[0] = 0xfb // encodes with '+' or '/' in std base64
	raw[1] = 0xff
	if err := os.WriteFile(other, []byte(base64.StdEncoding.EncodeToString(raw)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	u3, created, err := GenerateDevKEK(other)
	if err != nil || created || u3 != "base64key://"+base64.URLEncoding.EncodeToString(raw) {
		t.Errorf("openssl key: %v %v", created, err)
	}

	if runtime.GOOS != "windows" {
		if err := os.Chmod(path, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, _, err := GenerateDevKEK(path); err == nil || !strings.Contains(err.Error(), "group or others") {
			t.Errorf("world-readable file: err = %v", err)
		}
		if strings.Contains(fmt.Sprint(err), strings.TrimPrefix(u1, "base64key://")) {
			t.Error("error contains the key")
		}
	}

	for name, content := range map[string]string{
		"empty":     "",
		"short key": base64.URLEncoding.EncodeToString(make([]byte, 16)),
		"garbage":   "this is not a key at all, not a key",
	} {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		_, _, err := GenerateDevKEK(p)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if content != "" && strings.Contains(err.Error(), content) {
			t.Errorf("%s: error contains file content: %v", name, err)
		}
	}
}

// ---------------------------------------------------------------------------
// DEK cache

func TestDEKCacheBounded(t *testing.T) {
	ctx := context.Background()
	const capacity = 8
	k := mustOpen(t, []string{newKeyURL(t)}, WithDEKCache(capacity))
	var rows []Sealed
	for i := range 3 * capacity {
		rows = append(rows, mustSeal(t, k, "k", int64(i), []byte{byte(i)}))
		if n := k.cache.len(); n > capacity {
			t.Fatalf("cache holds %d entries, capacity %d", n, capacity)
		}
	}
	for i, s := range rows {
		got, _, err := k.Open(ctx, "k", int64(i), s)
		if err != nil || !bytes.Equal(got, []byte{byte(i)}) {
			t.Fatalf("Open row %d: %v", i, err)
		}
		if n := k.cache.len(); n > capacity {
			t.Fatalf("cache holds %d entries, capacity %d", n, capacity)
		}
	}
	if n := k.cache.len(); n != capacity {
		t.Errorf("cache holds %d entries, want %d", n, capacity)
	}
	if k := mustOpen(t, []string{newKeyURL(t)}, WithDEKCache(0)); k.cache != nil {
		t.Error("WithDEKCache(0) did not disable the cache")
	}
	if k := mustOpen(t, []string{newKeyURL(t)}); k.cache == nil || k.cache.cap != DefaultDEKCacheSize {
		t.Error("default cache size not applied")
	}
}

func TestDEKCacheLRU(t *testing.T) {
	c := newDEKCache(2)
	key := func(i byte) [32]byte { return [32]byte{i} }
	aead, _ := newAEAD(make([]byte, 32))
	c.put(key(1), aead)
	c.put(key(2), aead)
	c.get(key(1)) // 1 is now most recently used
	c.put(key(3), aead)
	if _, ok := c.get(key(2)); ok {
		t.Error("least recently used entry was not evicted")
	}
	for _, i := range []byte{1, 3} {
		if _, ok := c.get(key(i)); !ok {
			t.Errorf("entry %d evicted", i)
		}
	}
	c.put(key(3), aead) // update in place
	if c.len() != 2 {
		t.Errorf("len = %d", c.len())
	}
}

func TestDEKCacheAvoidsKMS(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		cache     int
		wantCalls int64
	}{{DefaultDEKCacheSize, 0}, {0, 3}} {
		f, u := newFakeKMS(t)
		k := mustOpen(t, []string{u}, WithDEKCache(tc.cache))
		s := mustSeal(t, k, "k", 1, []byte("v"))
		for range 3 {
			if _, _, err := k.Open(ctx, "k", 1, s); err != nil {
				t.Fatal(err)
			}
		}
		if got := f.decryptCls.Load(); got != tc.wantCalls {
			t.Errorf("cache=%d: %d KMS decrypt calls, want %d", tc.cache, got, tc.wantCalls)
		}
		k.Close()
	}
}

// ---------------------------------------------------------------------------
// keeper failures

func TestKeeperErrorClassification(t *testing.T) {
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name string
		err  error
		ctx  context.Context
		want error
	}{
		{"internal", codedErr{gcerrors.Internal}, nil, ErrKEKUnavailable},
		{"deadline", codedErr{gcerrors.DeadlineExceeded}, nil, ErrKEKUnavailable},
		{"resource exhausted", codedErr{gcerrors.ResourceExhausted}, nil, ErrKEKUnavailable},
		{"unknown remote (network)", errors.New("dial tcp: connection refused"), nil, ErrKEKUnavailable},
		{"context deadline", context.DeadlineExceeded, nil, ErrKEKUnavailable},
		{"canceled request", codedErr{gcerrors.InvalidArgument}, canceled, ErrKEKUnavailable},
		{"invalid ciphertext", codedErr{gcerrors.InvalidArgument}, nil, ErrCorrupt},
		// The KMS refusing the KEK itself affects every row under it: not
		// corruption of this one (issue 18).
		{"not found", codedErr{gcerrors.NotFound}, nil, ErrKEKRefused},
		{"failed precondition", codedErr{gcerrors.FailedPrecondition}, nil, ErrKEKRefused},
		{"permission denied", codedErr{gcerrors.PermissionDenied}, nil, ErrKEKRefused},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, u := newFakeKMS(t)
			k := mustOpen(t, []string{u}, WithDEKCache(0))
			s := mustSeal(t, k, "k", 1, []byte("v"))
			f.setDecryptErr(tc.err)
			ctx := tc.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			_, _, err := k.Open(ctx, "k", 1, s)
			if !errors.Is(err, tc.want) {
				t.Errorf("Open err = %v, want %v", err, tc.want)
			}
			if _, err := k.Rewrap(ctx, Sealed{s.Ciphertext, s.WrappedDEK, "kek-nope"}); !errors.Is(err, ErrUnknownKEK) {
				t.Errorf("Rewrap err = %v", err)
			}
		})
	}
}

func TestSealKeeperFailure(t *testing.T) {
	f, u := newFakeKMS(t)
	k := mustOpen(t, []string{u})
	f.setEncryptErr(errors.New("connection reset"))
	if _, _, err := k.Seal(context.Background(), "k", 1, []byte("v")); !errors.Is(err, ErrKEKUnavailable) {
		t.Errorf("Seal err = %v, want ErrKEKUnavailable", err)
	}
}

func TestCheck(t *testing.T) {
	ctx := context.Background()
	f, u := newFakeKMS(t)
	k := mustOpen(t, []string{newKeyURL(t), u})
	if err := k.Check(ctx); err != nil {
		t.Fatalf("Check healthy: %v", err)
	}
	f.setDecryptErr(codedErr{gcerrors.Internal})
	err := k.Check(ctx)
	if !errors.Is(err, ErrKEKUnavailable) {
		t.Fatalf("Check with failing KMS: %v, want ErrKEKUnavailable", err)
	}
	if id := k.IDs()[1]; !strings.Contains(err.Error(), id) || strings.Contains(err.Error(), k.IDs()[0]) {
		t.Errorf("Check error should name only the failing KEK %s: %v", id, err)
	}
	f.setDecryptErr(nil)
	f.setEncryptErr(codedErr{gcerrors.PermissionDenied})
	if err := k.Check(ctx); !errors.Is(err, ErrKEKUnavailable) {
		t.Errorf("Check with encrypt denied: %v, want ErrKEKUnavailable", err)
	}
}

func TestClose(t *testing.T) {
	ctx := context.Background()
	k, err := OpenKeyring(ctx, []string{newKeyURL(t)})
	if err != nil {
		t.Fatal(err)
	}
	s := mustSeal(t, k, "k", 1, []byte("v"))
	if err := k.Close(); err != nil {
		t.Fatal(err)
	}
	if err := k.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, _, err := k.Seal(ctx, "k", 2, []byte("v")); !errors.Is(err, ErrKEKUnavailable) {
		t.Errorf("Seal after Close: %v", err)
	}
	if _, _, err := k.Open(ctx, "k", 1, s); !errors.Is(err, ErrKEKUnavailable) {
		t.Errorf("Open after Close: %v", err)
	}
	if err := k.Check(ctx); !errors.Is(err, ErrKEKUnavailable) {
		t.Errorf("Check after Close: %v", err)
	}
}

func TestConcurrent(t *testing.T) {
	ctx := context.Background()
	old := newKeyURL(t)
	oldRow := mustSeal(t, mustOpen(t, []string{old}), "old", 1, []byte("old value"))
	k := mustOpen(t, []string{newKeyURL(t), old}, WithDEKCache(16))
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				key := fmt.Sprintf("g%d", g)
				v := []byte(fmt.Sprintf("value %d/%d", g, i))
				s, _, err := k.Seal(ctx, key, int64(i), v)
				if err == nil {
					var got []byte
					got, _, err = k.Open(ctx, key, int64(i), s)
					if err == nil && !bytes.Equal(got, v) {
						err = errors.New("wrong value")
					}
				}
				if err == nil {
					_, _, err = k.Open(ctx, "old", 1, oldRow)
				}
				if err == nil {
					_, err = k.Rewrap(ctx, oldRow)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := k.cache.len(); n > 16 {
		t.Errorf("cache holds %d entries", n)
	}
}

// ---------------------------------------------------------------------------
// fuzzing

// FuzzOpenCiphertext feeds arbitrary bytes as the ciphertext of a row whose
// wrapped DEK is valid: decoding must never panic, and nothing but the
// genuine ciphertext may decrypt.
func FuzzOpenCiphertext(f *testing.F) {
	const fixedKey = "base64key://AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
	ctx := context.Background()
	k, err := OpenKeyring(ctx, []string{fixedKey})
	if err != nil {
		f.Fatal(err)
	}
	defer k.Close()
	valid, _, err := k.Seal(ctx, "fuzz/key", 1, []byte("fuzz value"))
	if err != nil {
		f.Fatal(err)
	}
	empty, _, err := k.Seal(ctx, "fuzz/key", 1, nil)
	if err != nil {
		f.Fatal(err)
	}

	f.Add([]byte{})
	f.Add([]byte{formatV1})
	f.Add([]byte{0x02})
	f.Add(bytes.Repeat([]byte{formatV1}, minCiphertextLen-1))
	f.Add(bytes.Repeat([]byte{formatV1}, minCiphertextLen))
	f.Add(bytes.Repeat([]byte{0xff}, 64))
	f.Add(valid.Ciphertext)
	f.Add(valid.Ciphertext[:len(valid.Ciphertext)-1])
	f.Add(empty.Ciphertext)
	f.Add(append([]byte{0x02}, valid.Ciphertext[1:]...))

	f.Fuzz(func(t *testing.T, ct []byte) {
		if nonce, body, err := decodeCiphertext(ct); err == nil {
			if len(nonce) != nonceSize || len(body) < crcSize+tagSize {
				t.Fatalf("decoded %d-byte nonce, %d-byte body", len(nonce), len(body))
			}
		} else if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("decode err = %v, want ErrCorrupt", err)
		}

		// The wrapped DEK of `empty` is paired with arbitrary ciphertexts.
		for _, row := range []Sealed{valid, empty} {
			s := Sealed{Ciphertext: ct, WrappedDEK: row.WrappedDEK, KEKID: row.KEKID}
			got, _, err := k.Open(ctx, "fuzz/key", 1, s)
			if bytes.Equal(ct, row.Ciphertext) {
				if err != nil {
					t.Fatalf("genuine ciphertext failed: %v", err)
				}
				continue
			}
			if err == nil {
				t.Fatalf("garbage decrypted to %q", got)
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("err = %v, want ErrCorrupt", err)
			}
		}
	})
}

// ---------------------------------------------------------------------------
// benchmarks

func BenchmarkSeal(b *testing.B) {
	ctx := context.Background()
	k := mustOpen(b, []string{newKeyURL(b)})
	value := bytes.Repeat([]byte("x"), 100)
	b.SetBytes(int64(len(value)))
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, _, err := k.Seal(ctx, "bench/key", int64(i), value); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkOpenCached(b *testing.B) {
	benchmarkOpen(b, DefaultDEKCacheSize)
}

// BenchmarkOpenUncached includes unwrapping the DEK with a local
// (base64key) keeper; a real KMS adds a network round trip.
func BenchmarkOpenUncached(b *testing.B) {
	benchmarkOpen(b, 0)
}

func benchmarkOpen(b *testing.B, cache int) {
	ctx := context.Background()
	k := mustOpen(b, []string{newKeyURL(b)}, WithDEKCache(cache))
	value := bytes.Repeat([]byte("x"), 100)
	s := mustSeal(b, k, "bench/key", 1, value)
	b.SetBytes(int64(len(value)))
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := k.Open(ctx, "bench/key", 1, s); err != nil {
			b.Fatal(err)
		}
	}
}
