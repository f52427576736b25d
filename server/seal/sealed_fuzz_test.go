package seal

import (
	"bytes"
	"context"
	"errors"
	"math"
	"testing"
)

// FuzzOpenSealed feeds arbitrary rows to Open: wrapped data key, KEK id,
// ciphertext, and the secret key and version the row claims. It must never
// panic; only the genuine row opens (to the genuine value); anything else is
// ErrCorrupt or ErrUnknownKEK (or, for a key too long for the associated
// data, an error saying so), never a wrong plaintext and never a value
// under a key or version it was not sealed for.
func FuzzOpenSealed(f *testing.F) {
	const fixedKey = "base64key://AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
	ctx := context.Background()
	k, err := OpenKeyring(ctx, []string{fixedKey})
	if err != nil {
		f.Fatal(err)
	}
	defer k.Close()
	const key, version = "FUZZ_KEY", int64(3)
	value := []byte("fuzzed secret value")
	genuine, _, err := k.Seal(ctx, key, version, value)
	if err != nil {
		f.Fatal(err)
	}
	other, _, err := k.Seal(ctx, key, version+1, value)
	if err != nil {
		f.Fatal(err)
	}

	f.Add(genuine.WrappedDEK, genuine.KEKID, genuine.Ciphertext, key, version)
	f.Add(other.WrappedDEK, other.KEKID, genuine.Ciphertext, key, version)
	f.Add(genuine.WrappedDEK, genuine.KEKID, genuine.Ciphertext, key, version+1)
	f.Add(genuine.WrappedDEK, genuine.KEKID, genuine.Ciphertext, "FUZZ_KEZ", version)
	f.Add(genuine.WrappedDEK, "", genuine.Ciphertext, key, version)
	f.Add(genuine.WrappedDEK, "no-such-kek", genuine.Ciphertext, key, version)
	f.Add([]byte{}, genuine.KEKID, genuine.Ciphertext, key, version)
	f.Add(genuine.WrappedDEK[:len(genuine.WrappedDEK)-1], genuine.KEKID, genuine.Ciphertext, key, version)
	f.Add(bytes.Repeat([]byte{0}, 72), genuine.KEKID, genuine.Ciphertext, key, version)
	f.Add(genuine.WrappedDEK, genuine.KEKID, []byte{formatV1}, key, int64(-1))
	f.Add(genuine.WrappedDEK, genuine.KEKID, genuine.Ciphertext, "", int64(math.MaxInt64))

	// Rows sealed in this process open; the fuzzing engine's workers run
	// this function again, with rows of their own (Seal is randomized), so
	// the property checked below is about what may open, not which bytes.
	for i, g := range []Sealed{genuine, other} {
		if got, _, err := k.Open(ctx, key, version+int64(i), g); err != nil || !bytes.Equal(got, value) {
			f.Fatalf("genuine row %d: %q, %v", i, got, err)
		}
	}
	f.Fuzz(func(t *testing.T, wrapped []byte, kekID string, ct []byte, name string, v int64) {
		got, crc, err := k.Open(ctx, name, v, Sealed{Ciphertext: ct, WrappedDEK: wrapped, KEKID: kekID})
		switch {
		case err == nil:
			// Only a row sealed for this key and version opens: the value
			// sealed, never other bytes, never under another key or version.
			if name != key || (v != version && v != version+1) || !bytes.Equal(got, value) || crc != checksum(value) {
				t.Fatalf("a row claiming %q v%d opened to %q (crc %08x)", name, v, got, crc)
			}
		case len(name) > math.MaxUint16:
			// aad refuses keys its length prefix cannot hold.
		case !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnknownKEK):
			t.Fatalf("err = %v, want ErrCorrupt or ErrUnknownKEK", err)
		}
	})
}
