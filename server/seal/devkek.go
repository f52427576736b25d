package seal

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"

	"gocloud.dev/secrets/localsecrets"
)

// maxDevKEKFileSize bounds what GenerateDevKEK reads; a key file is ~45 bytes.
const maxDevKEKFileSize = 1024

// GenerateDevKEK returns a base64key:// KEK URL backed by the key file at
// path, for development only.
//
// If the file exists it must be a regular file not accessible by group or
// others (e.g. mode 0600) holding a base64 (URL-safe or standard, padded or
// not) 32-byte key; created is false. Otherwise the parent directory is
// created (0700) if needed and the file is created exclusively (O_EXCL) with
// mode 0600 holding a fresh random key; created is true.
//
// The returned URL contains the key: never log it. Errors never contain the
// key.
func GenerateDevKEK(path string) (url string, created bool, err error) {
	if path == "" {
		return "", false, errors.New("seal: dev KEK path is empty")
	}
	url, err = readDevKEK(path)
	if err == nil {
		return url, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", false, err
	}

	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", false, fmt.Errorf("seal: create dev KEK directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		// Lost a race with another process creating it.
		url, err = readDevKEK(path)
		return url, false, err
	}
	if err != nil {
		return "", false, fmt.Errorf("seal: create dev KEK file: %w", err)
	}
	var key [32]byte
	defer clear(key[:])
	if _, err := rand.Read(key[:]); err != nil {
		f.Close()
		os.Remove(path)
		return "", false, fmt.Errorf("seal: generate dev KEK: %w", err)
	}
	enc := base64.URLEncoding.EncodeToString(key[:])
	_, werr := f.WriteString(enc + "\n")
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		os.Remove(path)
		return "", false, fmt.Errorf("seal: write dev KEK file %s: %w", path, werr)
	}
	return localsecrets.Scheme + "://" + enc, true, nil
}

// readDevKEK reads and validates an existing dev KEK file. It returns an
// error wrapping fs.ErrNotExist if there is none.
func readDevKEK(path string) (string, error) {
	key, err := readKeyFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		return "", fmt.Errorf("seal: dev KEK file %s: %w", path, err)
	}
	defer clear(key)
	return localsecrets.Scheme + "://" + base64.URLEncoding.EncodeToString(key), nil
}

// readKeyFile reads a 32-byte key, base64-encoded, from a regular file (a
// symbolic link to one is followed, as Kubernetes mounts secrets) that
// group and others cannot access. Errors name neither the path nor the
// content; a missing file wraps fs.ErrNotExist. The caller owns (and
// should zero) the key.
func readKeyFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("key file does not exist: %w", fs.ErrNotExist)
		}
		if errors.Is(err, fs.ErrPermission) {
			return nil, errors.New("key file is not readable by this process")
		}
		return nil, errors.New("cannot open the key file")
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, errors.New("cannot stat the key file")
	}
	if !fi.Mode().IsRegular() {
		return nil, errors.New("key file is not a regular file")
	}
	if runtime.GOOS != "windows" && fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("key file is accessible by group or others (mode %04o); run chmod 600 (or 400) on it", fi.Mode().Perm())
	}
	data, err := io.ReadAll(io.LimitReader(f, maxDevKEKFileSize+1))
	defer clear(data)
	if err != nil {
		return nil, errors.New("cannot read the key file")
	}
	if len(data) > maxDevKEKFileSize {
		return nil, errors.New("key file is too large to hold a key")
	}
	key := decodeDevKey(bytes.TrimSpace(data))
	if key == nil {
		return nil, errors.New("key file does not hold a base64-encoded 32-byte key (e.g. `openssl rand -base64 32`)")
	}
	return key, nil
}

// decodeDevKey decodes a 32-byte key in any common base64 variant (e.g. the
// output of `openssl rand -base64 32`), or returns nil.
func decodeDevKey(s []byte) []byte {
	for _, enc := range []*base64.Encoding{base64.URLEncoding, base64.RawURLEncoding, base64.StdEncoding, base64.RawStdEncoding} {
		key := make([]byte, enc.DecodedLen(len(s)))
		n, err := enc.Decode(key, s)
		if err == nil && n == 32 {
			return key[:n]
		}
		clear(key)
	}
	return nil
}
