package seal

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/url"
	"path"
	"slices"
	"strings"
	"sync"

	"gocloud.dev/gcerrors"
	"gocloud.dev/secrets"
	"gocloud.dev/secrets/localsecrets"
)

// fingerprintLabel domain-separates KEK fingerprints from any other use of
// SHA-256 on the same input. Changing it changes every KEK id, which would
// orphan every stored row: never change it.
const fingerprintLabel = "orient.secrets.kek-fingerprint.v1\x00"

// kekSpec is a validated KEK URL. It holds key material (localKey, rawURL,
// normalized) and must never be logged or formatted into an error.
type kekSpec struct {
	index      int    // 1-based position in the configured list, for messages
	scheme     string // normalized scheme ("base64key", "awskms", ...)
	rawURL     string // as configured; handed to secrets.OpenKeeper only
	normalized string // canonical form that the fingerprint is computed from
	local      bool   // base64key or file: the key is held in memory
	localKey   [32]byte
	id         string
	// urlParts are spellings of the URL and of the key name a driver's
	// message may quote (see redact).
	urlParts []string
}

// ParseKEKURLs splits a comma-separated SECRETS_KEK_URL value into its
// entries, trimming surrounding whitespace. The first entry is the primary KEK.
// An empty value or an empty entry (e.g. "a,,b" or a trailing comma) is
// rejected with ErrInvalidKEKURL. The entries are not otherwise validated here:
// OpenKeyring does that. Error messages never contain the value.
func ParseKEKURLs(s string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, fmt.Errorf("%w: SECRETS_KEK_URL is empty", ErrInvalidKEKURL)
	}
	parts := strings.Split(s, ",")
	urls := make([]string, 0, len(parts))
	for i, p := range parts {
		p = strings.TrimSpace(p)
		if p == "" {
			return nil, fmt.Errorf("%w: SECRETS_KEK_URL entry %d is empty", ErrInvalidKEKURL, i+1)
		}
		urls = append(urls, p)
	}
	return urls, nil
}

func invalidKEKURL(index int, format string, args ...any) error {
	return fmt.Errorf("%w: SECRETS_KEK_URL entry %d: %s", ErrInvalidKEKURL, index, fmt.Sprintf(format, args...))
}

// normalizeScheme lower-cases the scheme and strips the optional "secrets+"
// and "secrets+keeper+" prefixes that gocloud's URL mux accepts, so that
// "SECRETS+BASE64KEY://" is validated exactly like "base64key://".
func normalizeScheme(s string) string {
	s = strings.ToLower(s)
	for _, prefix := range []string{"secrets+keeper+", "secrets+"} {
		s = strings.TrimPrefix(s, prefix)
	}
	return s
}

// parseKEKURL validates one configured KEK URL and computes its fingerprint.
// No error it returns contains the URL or any part of it except the scheme.
func parseKEKURL(index int, raw string, mux *secrets.URLMux) (kekSpec, error) {
	raw = strings.TrimSpace(raw)
	if raw == "" {
		return kekSpec{}, invalidKEKURL(index, "empty URL")
	}
	u, err := url.Parse(raw)
	if err != nil {
		// url.Parse errors quote the input: do not wrap err.
		return kekSpec{}, invalidKEKURL(index, "not a valid URL")
	}
	if u.Scheme == "" {
		return kekSpec{}, invalidKEKURL(index, "URL has no scheme (expected e.g. base64key://, awskms://, gcpkms://)")
	}
	scheme := normalizeScheme(u.Scheme)
	if u.Opaque != "" {
		// "base64key:KEY" parses with an empty host, for which gocloud would
		// silently generate a random key.
		return kekSpec{}, invalidKEKURL(index, "%s URL must have the form %s://...", scheme, scheme)
	}
	spec := kekSpec{index: index, scheme: scheme, rawURL: raw}

	switch {
	case scheme == fileScheme:
		if err := spec.readFile(u); err != nil {
			return kekSpec{}, err
		}
	case scheme == localsecrets.Scheme:
		switch {
		case u.Host == "" && u.Path == "":
			// gocloud would generate a NEW random key on every start, making
			// everything sealed under it unreadable after a restart.
			return kekSpec{}, invalidKEKURL(index, "base64key:// URL holds no key")
		case u.User != nil:
			return kekSpec{}, invalidKEKURL(index, "base64key:// URL must not contain user info")
		case u.Host == "" || u.Path != "" || u.Fragment != "":
			// A "/" (standard base64) ends the host and starts the path.
			return kekSpec{}, invalidKEKURL(index, "base64key:// key must be URL-safe base64 (use - and _, not + and /)")
		case u.RawQuery != "" || u.ForceQuery:
			return kekSpec{}, invalidKEKURL(index, "base64key:// URL takes no query parameters")
		}
		key, err := base64.URLEncoding.DecodeString(u.Host)
		if err != nil {
			key, err = base64.RawURLEncoding.DecodeString(u.Host)
		}
		if err != nil {
			return kekSpec{}, invalidKEKURL(index, "base64key:// key is not valid URL-safe base64")
		}
		if len(key) != 32 {
			n := len(key)
			clear(key)
			return kekSpec{}, invalidKEKURL(index, "base64key:// key decodes to %d bytes, want 32", n)
		}
		spec.local = true
		copy(spec.localKey[:], key)
		// Canonical spelling: padded vs unpadded or a "secrets+" prefix must
		// not change the id of the same key.
		spec.normalized = localsecrets.Scheme + "://" + base64.URLEncoding.EncodeToString(key)
		clear(key)
	default:
		if !mux.ValidKeeperScheme(scheme) {
			return kekSpec{}, invalidKEKURL(index, "no KEK driver registered for scheme %q (registered: %s)",
				scheme, strings.Join(append(mux.KeeperSchemes(), fileScheme), ", "))
		}
		q, err := url.ParseQuery(u.RawQuery)
		if err != nil {
			return kekSpec{}, invalidKEKURL(index, "%s URL has a malformed query", scheme)
		}
		// Canonical form: normalized scheme, user info, host and path as
		// written (key names are case-sensitive in most KMSs), query sorted by
		// name, fragment dropped (gocloud ignores it).
		var b strings.Builder
		b.WriteString(scheme)
		b.WriteString("://")
		if u.User != nil {
			b.WriteString(u.User.String())
			b.WriteByte('@')
		}
		b.WriteString(u.Host)
		b.WriteString(u.EscapedPath())
		if len(q) > 0 {
			b.WriteByte('?')
			b.WriteString(q.Encode())
		}
		spec.normalized = b.String()
		spec.urlParts = urlParts(raw, u, spec.normalized)
	}
	spec.id = fingerprint(spec.normalized)
	return spec, nil
}

// urlParts lists what of a KMS URL a driver's error message may quote: the
// URL as written and normalized, and the key name (host and path, as the
// drivers join them), longest first so that replacing one does not break
// another. Parts shorter than 3 characters are left out: replacing them
// would garble the message and hide nothing.
func urlParts(raw string, u *url.URL, normalized string) []string {
	keyName := strings.TrimPrefix(path.Join(u.Host, u.Path), "/")
	cands := []string{raw, normalized, u.String(), keyName, strings.TrimPrefix(path.Join(u.Host, u.EscapedPath()), "/"),
		"https://" + keyName}
	if unesc, err := url.PathUnescape(keyName); err == nil {
		cands = append(cands, unesc)
	}
	var parts []string
	for _, c := range cands {
		if len(c) >= 3 && !slices.Contains(parts, c) {
			parts = append(parts, c)
		}
	}
	slices.SortFunc(parts, func(a, b string) int { return len(b) - len(a) })
	return parts
}

// redact replaces every part of a KEK's URL in a driver's message with the
// KEK's fingerprint: errors name a KEK by its id, never by its URL.
func redact(msg string, parts []string, id string) string {
	for _, p := range parts {
		msg = strings.ReplaceAll(msg, p, "<"+id+">")
	}
	return msg
}

// classifiers map the errors of drivers that do not classify their own
// (gocloud's hashivault reports every failure as Unknown) to a code, by
// scheme. The main package registers them next to its blank imports.
var (
	classifiersMu sync.RWMutex
	classifiers   = map[string]func(error) gcerrors.ErrorCode{}
)

// RegisterErrorCode registers fn to classify the errors of the scheme's
// keeper when the driver itself says Unknown: a refusal (PermissionDenied,
// NotFound, FailedPrecondition) is then ErrKEKRefused and a rejected
// ciphertext (InvalidArgument) ErrCorrupt rather than ErrKEKUnavailable. fn
// receives the keeper's error (errors.As reaches the driver's own error).
func RegisterErrorCode(scheme string, fn func(error) gcerrors.ErrorCode) {
	classifiersMu.Lock()
	defer classifiersMu.Unlock()
	classifiers[normalizeScheme(scheme)] = fn
}

func classifier(scheme string) func(error) gcerrors.ErrorCode {
	classifiersMu.RLock()
	defer classifiersMu.RUnlock()
	return classifiers[scheme]
}

// fingerprint derives the stable, non-reversible KEK id stored in each row:
// "kek-" + the first 16 hex digits (64 bits) of
// SHA-256("orient.secrets.kek-fingerprint.v1\x00" + normalized URL).
// 64 bits make an accidental collision between two configured KEKs
// negligible, and OpenKeyring rejects one anyway. For base64key the input
// contains a 256-bit random key, so the id cannot be brute-forced back to it.
func fingerprint(normalized string) string {
	sum := sha256.Sum256([]byte(fingerprintLabel + normalized))
	return "kek-" + hex.EncodeToString(sum[:8])
}

// isFingerprint reports whether id has the shape fingerprint gives.
func isFingerprint(id string) bool {
	h, ok := strings.CutPrefix(id, "kek-")
	if !ok || len(h) != 16 {
		return false
	}
	_, err := hex.DecodeString(h)
	return err == nil && strings.ToLower(h) == h
}
