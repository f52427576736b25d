package seal

import (
	"context"
	"encoding/base64"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"gocloud.dev/gcerrors"
	"gocloud.dev/secrets"
)

// TestKEKFile: a file:// KEK is the key in the file, read once at open: its
// id is the key's (as base64key://), removing the file afterwards changes
// nothing, and a file group or others can read is refused, with an error
// that names neither the path nor the key.
func TestKEKFile(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "kek.key")
	raw := make([]byte, 32)
	for i := range raw {
		raw[i] = byte(i * 7)
	}
	enc := base64.StdEncoding.EncodeToString(raw) // openssl rand -base64 32 output
	if err := os.WriteFile(path, []byte(enc+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fileURL := "file://" + path
	k := mustOpen(t, []string{fileURL})
	same := mustOpen(t, []string{"base64key://" + base64.URLEncoding.EncodeToString(raw)})
	if k.PrimaryID() != same.PrimaryID() {
		t.Errorf("file KEK id %s, base64key id of the same key %s: want equal", k.PrimaryID(), same.PrimaryID())
	}
	s := mustSeal(t, k, "k", 1, []byte("v"))
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if v, _, err := k.Open(ctx, "k", 1, s); err != nil || string(v) != "v" {
		t.Fatalf("open after the file was removed: %q, %v", v, err)
	}
	if v, _, err := same.Open(ctx, "k", 1, s); err != nil || string(v) != "v" {
		t.Fatalf("the same key as base64key:// does not open it: %q, %v", v, err)
	}
	// Listing the same key twice is refused like any duplicate.
	if err := os.WriteFile(path, []byte(enc), 0o400); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenKeyring(ctx, []string{fileURL, "base64key://" + base64.RawURLEncoding.EncodeToString(raw)}); !errors.Is(err, ErrInvalidKEKURL) ||
		!strings.Contains(err.Error(), "same KEK") {
		t.Errorf("file and base64key of one key: %v", err)
	}

	refuse := func(name, u, want string) {
		t.Helper()
		_, err := OpenKeyring(ctx, []string{newKeyURL(t), u})
		if !errors.Is(err, ErrInvalidKEKURL) || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "entry 2") {
			t.Errorf("%s: %v; want ErrInvalidKEKURL saying %q about entry 2", name, err, want)
		}
		if err != nil && (strings.Contains(err.Error(), dir) || strings.Contains(err.Error(), enc)) {
			t.Errorf("%s: error names the path or the key: %v", name, err)
		}
	}
	if runtime.GOOS != "windows" {
		for _, mode := range []os.FileMode{0o640, 0o604, 0o644} {
			if err := os.Chmod(path, mode); err != nil {
				t.Fatal(err)
			}
			refuse("mode "+mode.String(), fileURL, "group or others")
		}
		if err := os.Chmod(path, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	refuse("missing", "file://"+filepath.Join(dir, "nope"), "does not exist")
	refuse("relative", "file://kek.key", "no host")
	refuse("query", fileURL+"?x=1", "no user info, query")
	if err := os.WriteFile(path, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	refuse("garbage", fileURL, "32-byte key")
	refuse("directory", "file://"+dir, "not a regular file")
}

// TestKEKRefusedNamesFingerprint: a KMS that refuses the KEK gives
// ErrKEKRefused (which is also ErrKEKUnavailable), naming the KEK's
// fingerprint; the URL and key name the driver quoted are replaced by it.
func TestKEKRefusedNamesFingerprint(t *testing.T) {
	ctx := context.Background()
	f, u := newFakeKMS(t)
	k := mustOpen(t, []string{u}, WithDEKCache(0))
	s := mustSeal(t, k, "k", 1, []byte("v"))
	id := k.PrimaryID()
	quoting := quotingErr{code: gcerrors.PermissionDenied, msg: "AccessDeniedException: not authorized to use " + u + " (key " + f.name + ")"}
	f.setEncryptErr(quoting)
	f.setDecryptErr(quoting)
	for name, err := range map[string]error{
		"wrap":   func() error { _, err := k.NewDataKey(ctx); return err }(),
		"unwrap": func() error { _, _, err := k.Open(ctx, "k", 1, s); return err }(),
		"check":  k.Check(ctx),
	} {
		if !errors.Is(err, ErrKEKRefused) || !errors.Is(err, ErrKEKUnavailable) || errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v; want ErrKEKRefused", name, err)
			continue
		}
		if got, ok := FailedKEK(err); !ok || got != id {
			t.Errorf("%s: FailedKEK = %q, %v; want %s", name, got, ok, id)
		}
		msg := err.Error()
		if !strings.Contains(msg, id) || !strings.Contains(msg, "permission denied") || strings.Contains(msg, f.name) {
			t.Errorf("%s: %q; want the id %s and the reason, never the URL or key name", name, msg, id)
		}
	}
	// A ciphertext the KMS rejects is still corruption of that row.
	f.setDecryptErr(codedErr{gcerrors.InvalidArgument})
	if _, _, err := k.Open(ctx, "k", 1, s); !errors.Is(err, ErrCorrupt) {
		t.Errorf("rejected ciphertext: %v, want ErrCorrupt", err)
	}
}

type quotingErr struct {
	code gcerrors.ErrorCode
	msg  string
}

func (e quotingErr) Error() string { return e.msg }
func (e quotingErr) Unwrap() error { return codedErr{e.code} } // the fake driver's ErrorCode reads it

// TestOpenErrorRedactsURL: a driver refusing a URL at open time quotes it;
// the error keeps the driver's reason but not the URL.
func TestOpenErrorRedactsURL(t *testing.T) {
	mux := new(secrets.URLMux)
	mux.RegisterKeeper("quoting", openerFunc(func(_ context.Context, u *url.URL) (*secrets.Keeper, error) {
		return nil, errors.New("open keeper " + u.String() + ": invalid query parameter \"x\"")
	}))
	raw := "quoting://projects/p/keyRings/r/cryptoKeys/customer-key?x=1"
	_, err := OpenKeyring(context.Background(), []string{raw}, WithKeeperMux(mux))
	if !errors.Is(err, ErrInvalidKEKURL) || !strings.Contains(err.Error(), "invalid query parameter") ||
		strings.Contains(err.Error(), "customer-key") || !strings.Contains(err.Error(), "<kek-") {
		t.Errorf("open error %v: want the reason with the URL replaced by the KEK id", err)
	}
	// Schemes come from the given mux only.
	if _, err := OpenKeyring(context.Background(), []string{"sealtest://x"}, WithKeeperMux(mux)); !errors.Is(err, ErrInvalidKEKURL) ||
		!strings.Contains(err.Error(), "registered: quoting, file") {
		t.Errorf("scheme missing from the mux: %v", err)
	}
}

type openerFunc func(context.Context, *url.URL) (*secrets.Keeper, error)

func (f openerFunc) OpenKeeperURL(ctx context.Context, u *url.URL) (*secrets.Keeper, error) {
	return f(ctx, u)
}

// TestRegisteredErrorCode: for a driver that reports every failure as
// Unknown (gocloud's hashivault), a classifier registered for its scheme
// decides: a refusal is ErrKEKRefused, an unrecognized error stays
// ErrKEKUnavailable.
func TestRegisteredErrorCode(t *testing.T) {
	RegisterErrorCode("sealtest", func(err error) gcerrors.ErrorCode {
		var s statusErr
		if errors.As(err, &s) && s == 403 {
			return gcerrors.PermissionDenied
		}
		return gcerrors.Unknown
	})
	t.Cleanup(func() { RegisterErrorCode("sealtest", nil) })
	f, u := newFakeKMS(t)
	k := mustOpen(t, []string{u})
	f.setEncryptErr(statusErr(403))
	if _, err := k.NewDataKey(context.Background()); !errors.Is(err, ErrKEKRefused) {
		t.Errorf("403: %v, want ErrKEKRefused", err)
	}
	f.setEncryptErr(statusErr(502))
	if _, err := k.NewDataKey(context.Background()); !errors.Is(err, ErrKEKUnavailable) || errors.Is(err, ErrKEKRefused) {
		t.Errorf("502: %v, want ErrKEKUnavailable only", err)
	}
}

type statusErr int

func (e statusErr) Error() string { return "vault: status " + string(rune('0'+int(e)/100)) + "xx" }

// TestKMSTimeout: a KMS that does not answer fails the call after the KMS
// timeout with ErrKEKUnavailable, even when the caller has no deadline.
func TestKMSTimeout(t *testing.T) {
	mux := new(secrets.URLMux)
	mux.RegisterKeeper("hang", openerFunc(func(context.Context, *url.URL) (*secrets.Keeper, error) {
		return secrets.NewKeeper(hangDriver{}), nil
	}))
	k := mustOpen(t, []string{"hang://k"}, WithKeeperMux(mux), WithKMSTimeout(50*time.Millisecond))
	t0 := time.Now()
	_, err := k.NewDataKey(context.Background())
	if !errors.Is(err, ErrKEKUnavailable) || errors.Is(err, ErrKEKRefused) {
		t.Errorf("hung KMS: %v, want ErrKEKUnavailable", err)
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Errorf("hung KMS call returned after %v", d)
	}
}

type hangDriver struct{}

func (hangDriver) Encrypt(ctx context.Context, _ []byte) ([]byte, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

func (hangDriver) Decrypt(ctx context.Context, _ []byte) ([]byte, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}
func (hangDriver) Close() error            { return nil }
func (hangDriver) ErrorAs(error, any) bool { return false }
func (hangDriver) ErrorCode(err error) gcerrors.ErrorCode {
	if errors.Is(err, context.DeadlineExceeded) {
		return gcerrors.DeadlineExceeded
	}
	return gcerrors.Unknown
}

// TestDEKCacheStats counts hits and misses of reads.
func TestDEKCacheStats(t *testing.T) {
	ctx := context.Background()
	u := newKeyURL(t)
	k := mustOpen(t, []string{u})
	s := mustSeal(t, k, "k", 1, []byte("v"))
	for range 3 {
		if _, _, err := k.Open(ctx, "k", 1, s); err != nil {
			t.Fatal(err)
		}
	}
	if st := k.DEKCacheStats(); st.Hits != 3 || st.Misses != 0 || st.Entries != 1 {
		t.Errorf("warm stats %+v, want 3 hits (the writer cached its data key)", st)
	}
	// A keyring with the same KEK but another cache: first read misses.
	k2 := mustOpen(t, []string{u})
	for range 2 {
		if _, _, err := k2.Open(ctx, "k", 1, s); err != nil {
			t.Fatal(err)
		}
	}
	if st := k2.DEKCacheStats(); st.Hits != 1 || st.Misses != 1 {
		t.Errorf("cold stats %+v, want 1 miss then 1 hit", st)
	}
}
