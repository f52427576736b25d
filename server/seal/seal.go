// Package seal owns envelope encryption: nothing else in the codebase touches
// a data key (DEK) or a key-encryption key (KEK).
//
// Every secret version is sealed with AES-256-GCM under its own random
// 256-bit DEK. The associated data binds the ciphertext to the secret's key
// and version, so a ciphertext copied to another row does not decrypt. The
// CRC32C of the value is sealed inside the ciphertext (never stored in
// clear: a 32-bit checksum of a low-entropy value would let anyone with read
// access to the database confirm guesses) and verified by Open.
//
// The DEK is wrapped by a KEK held outside the database and opened from a
// gocloud.dev/secrets keeper URL. Only the base64key:// driver and file://
// KEKs (a key file read once, see kekfile.go) are built into this package;
// the KMS drivers (awskms://, gcpkms://, azurekeyvault://, hashivault://) are
// registered by package seal/kmsdrivers, which secretsd imports for its side
// effects (cmd/secretsd/drivers.go). Several KEKs can be configured: the
// first (primary) wraps new
// DEKs, the others only unwrap, which allows key rotation with Rewrap. A row
// records the fingerprint (KEKID) of the KEK that wrapped its DEK, never its
// URL: a base64key:// URL contains the key itself.
//
// Errors never contain plaintext, DEK or KEK bytes, nor a KEK URL.
package seal

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"gocloud.dev/gcerrors"
	"gocloud.dev/secrets"
	"gocloud.dev/secrets/localsecrets"
)

var (
	// ErrCorrupt means the ciphertext or wrapped DEK was altered, moved to
	// another row (key/version), is not decryptable by the KEK it names, or
	// the sealed checksum does not match. Not retryable.
	ErrCorrupt = errors.New("seal: ciphertext corrupt, altered or bound to another secret")
	// ErrUnknownKEK means a row names a KEK that is not configured (e.g. an
	// old KEK was removed from SECRETS_KEK_URL before all rows were
	// rewrapped). Not retryable without a configuration change.
	ErrUnknownKEK = errors.New("seal: row names a KEK that is not configured")
	// ErrKEKUnavailable means the keeper failed (KMS down, network, timeout,
	// request canceled, keyring closed). Retryable.
	ErrKEKUnavailable = errors.New("seal: KEK unavailable")
	// ErrKEKRefused means the KMS answered but refused to use the KEK:
	// permission denied, key disabled or scheduled for deletion, key not
	// found. Every row under that KEK is affected, not one: it is not data
	// corruption, and retrying does not help until an operator fixes the key
	// or its permissions. An ErrKEKRefused error also matches
	// ErrKEKUnavailable (the KEK cannot be used now): callers that do not
	// tell them apart treat both as an outage.
	ErrKEKRefused = fmt.Errorf("%w: the KMS refused the KEK", ErrKEKUnavailable)
	// ErrInvalidKEKURL means a configured KEK URL is unusable. The message
	// never contains the URL.
	ErrInvalidKEKURL = errors.New("seal: invalid KEK URL")
)

// DefaultDEKCacheSize is the default number of unwrapped DEKs kept in memory.
const DefaultDEKCacheSize = 4096

// DefaultKMSTimeout bounds one KMS call (wrap, unwrap, probe) when the
// caller's context has no earlier deadline: client libraries retry an
// unreachable KMS for up to a minute, and a REST request has no deadline.
const DefaultKMSTimeout = 10 * time.Second

// Sealed is what is stored for one secret version.
type Sealed struct {
	// Ciphertext is format version 0x01 || 12-byte nonce || AES-256-GCM
	// output of crc32c(value) BE || value.
	Ciphertext []byte
	// WrappedDEK is the DEK encrypted by the KEK named by KEKID.
	WrappedDEK []byte
	// KEKID is the fingerprint of the KEK that wrapped WrappedDEK.
	KEKID string
}

// Option configures OpenKeyring.
type Option func(*options)

type options struct {
	dekCacheSize int
	kmsTimeout   time.Duration
	mux          *secrets.URLMux
}

// WithKMSTimeout bounds each KMS call (default DefaultKMSTimeout; d <= 0
// leaves only the caller's deadline). A call that times out is
// ErrKEKUnavailable.
func WithKMSTimeout(d time.Duration) Option {
	return func(o *options) { o.kmsTimeout = d }
}

// WithKeeperMux opens KMS URLs through mux instead of gocloud's default URL
// mux (where the main package's blank imports register the drivers). Tests
// use it to point a driver's real client library at a local stand-in.
func WithKeeperMux(mux *secrets.URLMux) Option {
	return func(o *options) { o.mux = mux }
}

// WithDEKCache sets the capacity of the in-memory LRU of unwrapped DEKs
// (default DefaultDEKCacheSize) so that reads do not call the KMS every time.
// n <= 0 disables the cache. The cache is never written anywhere.
func WithDEKCache(n int) Option {
	return func(o *options) { o.dekCacheSize = max(n, 0) }
}

type kek struct {
	id     string
	index  int    // 1-based position in the configuration
	scheme string // for messages
	// local keepers (base64key) have no transport: any decrypt failure means
	// wrong key or altered data.
	local  bool
	keeper *secrets.Keeper
	// urlParts are the spellings of the KEK's URL and key name that a
	// driver's message may quote; keeperError replaces them with the id.
	urlParts []string
}

// Keyring holds the configured KEKs. It is safe for concurrent use.
type Keyring struct {
	keks    []*kek // configuration order; keks[0] is the primary
	byID    map[string]*kek
	cache   *dekCache // nil when disabled
	timeout time.Duration
	// DEK cache outcomes of unwraps (reads and rewraps of other KEKs' rows
	// do not count).
	hits, misses atomic.Uint64
	closed       atomic.Bool
	closeMu      sync.Mutex
	closeEr      error
}

// OpenKeyring validates and opens the KEKs named by urls. The first URL is
// the primary KEK (wraps new DEKs); the others are only used to unwrap DEKs
// sealed before a rotation.
//
// It rejects with ErrInvalidKEKURL: an empty list or entry, an unparsable URL
// or one without a scheme, a base64key:// URL with no key (gocloud would
// silently generate a new random key on each start) or whose key is not
// URL-safe base64 of 32 bytes, an unregistered scheme, and two entries naming
// the same KEK. Messages identify an entry by position and never contain the
// URL. No KMS is called here (see Check).
func OpenKeyring(ctx context.Context, urls []string, opts ...Option) (*Keyring, error) {
	o := options{dekCacheSize: DefaultDEKCacheSize, kmsTimeout: DefaultKMSTimeout, mux: secrets.DefaultURLMux()}
	for _, opt := range opts {
		opt(&o)
	}
	if len(urls) == 0 {
		return nil, fmt.Errorf("%w: no KEK URL configured", ErrInvalidKEKURL)
	}
	specs := make([]kekSpec, 0, len(urls))
	defer func() {
		for i := range specs {
			clear(specs[i].localKey[:]) // best effort
		}
	}()
	seen := make(map[string]int, len(urls))
	for i, raw := range urls {
		spec, err := parseKEKURL(i+1, raw, o.mux)
		if err != nil {
			return nil, err
		}
		if prev, dup := seen[spec.id]; dup {
			return nil, fmt.Errorf("%w: SECRETS_KEK_URL entries %d and %d name the same KEK", ErrInvalidKEKURL, prev, i+1)
		}
		seen[spec.id] = i + 1
		specs = append(specs, spec)
	}

	k := &Keyring{
		keks:    make([]*kek, 0, len(specs)),
		byID:    make(map[string]*kek, len(specs)),
		cache:   newDEKCache(o.dekCacheSize),
		timeout: o.kmsTimeout,
	}
	for i := range specs {
		spec := &specs[i]
		var keeper *secrets.Keeper
		if spec.local {
			// Built directly from the validated key rather than through
			// secrets.OpenKeeper, whose errors could echo the URL.
			keeper = localsecrets.NewKeeper(spec.localKey)
		} else {
			var err error
			keeper, err = o.mux.OpenKeeper(ctx, spec.rawURL)
			if err != nil {
				_ = k.Close()
				// Only KMS schemes get here; their URLs name a key but do
				// not contain it. The driver's message is kept (it says what
				// is wrong), with the URL and key name replaced by the id.
				return nil, fmt.Errorf("%w: SECRETS_KEK_URL entry %d: open %s keeper: %s", ErrInvalidKEKURL, spec.index, spec.scheme,
					redact(err.Error(), spec.urlParts, spec.id))
			}
		}
		kk := &kek{id: spec.id, index: spec.index, scheme: spec.scheme, local: spec.local, keeper: keeper, urlParts: spec.urlParts}
		k.keks = append(k.keks, kk)
		k.byID[kk.id] = kk
	}
	return k, nil
}

// PrimaryID returns the fingerprint of the primary KEK, which wraps new DEKs.
func (k *Keyring) PrimaryID() string { return k.keks[0].id }

// IDs returns the fingerprints of all configured KEKs, primary first.
func (k *Keyring) IDs() []string {
	ids := make([]string, len(k.keks))
	for i, kk := range k.keks {
		ids[i] = kk.id
	}
	return ids
}

var errClosed = fmt.Errorf("%w: keyring is closed", ErrKEKUnavailable)

// Seal encrypts plaintext, the value of secret `key` at `version`, under a
// fresh DEK wrapped by the primary KEK. It returns the CRC32C of plaintext.
// A keeper failure is ErrKEKUnavailable.
func (k *Keyring) Seal(ctx context.Context, key string, version int64, plaintext []byte) (Sealed, uint32, error) {
	if _, err := aad(key, version); err != nil {
		return Sealed{}, 0, err // before spending a KMS call
	}
	dk, err := k.NewDataKey(ctx)
	if err != nil {
		return Sealed{}, 0, err
	}
	return dk.Seal(key, version, plaintext)
}

// DataKey is a fresh DEK, already wrapped by the primary KEK, for one new
// secret version. Wrapping calls the KMS, so a writer gets its DataKey
// before it takes any lock; sealing with it is local.
type DataKey struct {
	aead    cipher.AEAD
	wrapped []byte
	kekID   string
}

// NewDataKey generates a DEK and wraps it with the primary KEK. A keeper
// failure is ErrKEKUnavailable.
func (k *Keyring) NewDataKey(ctx context.Context) (*DataKey, error) {
	if k.closed.Load() {
		return nil, errClosed
	}
	primary := k.keks[0]
	dek := make([]byte, dekSize)
	defer clear(dek) // best effort: the GC may have copied it; aes keeps its own schedule
	if _, err := rand.Read(dek); err != nil {
		return nil, fmt.Errorf("seal: generate data key: %w", err)
	}
	aead, err := newAEAD(dek)
	if err != nil {
		return nil, err
	}
	wrapped, err := k.encrypt(ctx, primary, dek)
	if err != nil {
		return nil, k.wrapError(ctx, primary, "wrap data key", err)
	}
	// A value is often read right after it is written.
	k.cache.put(cacheKey(primary.id, wrapped), aead)
	return &DataKey{aead: aead, wrapped: wrapped, kekID: primary.id}, nil
}

// Seal encrypts plaintext, the value of secret `key` at `version`, under
// the data key (each call with a fresh nonce; only one version may keep
// what it seals, so a write retried under another version number seals
// again with the same key and the other result is discarded). It returns
// the CRC32C of plaintext.
func (dk *DataKey) Seal(key string, version int64, plaintext []byte) (Sealed, uint32, error) {
	ad, err := aad(key, version)
	if err != nil {
		return Sealed{}, 0, err
	}
	crc := checksum(plaintext)
	inner := make([]byte, crcSize+len(plaintext))
	binary.BigEndian.PutUint32(inner, crc)
	copy(inner[crcSize:], plaintext)
	defer clear(inner) // a copy of the plaintext; best effort

	out := make([]byte, headerSize, headerSize+len(inner)+tagSize)
	out[0] = formatV1
	if _, err := rand.Read(out[1:headerSize]); err != nil {
		return Sealed{}, 0, fmt.Errorf("seal: generate nonce: %w", err)
	}
	out = dk.aead.Seal(out, out[1:headerSize], inner, ad)
	return Sealed{Ciphertext: out, WrappedDEK: dk.wrapped, KEKID: dk.kekID}, crc, nil
}

// Open decrypts s, which must have been sealed for secret `key` at `version`,
// verifies the sealed checksum and returns the value and its CRC32C.
//
// Errors: ErrUnknownKEK if s.KEKID is not configured; ErrCorrupt if the
// ciphertext or wrapped DEK was altered, belongs to another key/version, or
// the KEK cannot decrypt the DEK; ErrKEKUnavailable if the keeper failed
// (retryable).
func (k *Keyring) Open(ctx context.Context, key string, version int64, s Sealed) ([]byte, uint32, error) {
	ad, err := aad(key, version)
	if err != nil {
		return nil, 0, err
	}
	// Reject malformed input before spending a KMS call on it.
	nonce, body, err := decodeCiphertext(s.Ciphertext)
	if err != nil {
		return nil, 0, err
	}
	aead, err := k.dekAEAD(ctx, s)
	if err != nil {
		return nil, 0, err
	}
	inner, err := aead.Open(nil, nonce, body, ad)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: authentication failed", ErrCorrupt)
	}
	// decodeCiphertext guarantees len(body) >= crcSize+tagSize.
	crc := binary.BigEndian.Uint32(inner)
	plaintext := inner[crcSize:]
	if checksum(plaintext) != crc {
		clear(inner)
		return nil, 0, fmt.Errorf("%w: checksum mismatch", ErrCorrupt)
	}
	return plaintext, crc, nil
}

// dekAEAD returns the AES-GCM instance for s's DEK, from the cache or by
// unwrapping it with the KEK s names.
func (k *Keyring) dekAEAD(ctx context.Context, s Sealed) (cipher.AEAD, error) {
	kk, err := k.lookup(s)
	if err != nil {
		return nil, err
	}
	ck := cacheKey(kk.id, s.WrappedDEK)
	if aead, ok := k.cache.get(ck); ok {
		k.hits.Add(1)
		return aead, nil
	}
	k.misses.Add(1)
	dek, err := k.unwrap(ctx, kk, s.WrappedDEK)
	if err != nil {
		return nil, err
	}
	aead, err := newAEAD(dek)
	clear(dek) // best effort; the AES key schedule is kept inside aead
	if err != nil {
		return nil, err
	}
	k.cache.put(ck, aead)
	return aead, nil
}

// Rewrap unwraps s's DEK with the KEK that wrapped it and wraps it with the
// primary KEK. The ciphertext is not touched (it is not bound to the KEK), so
// the result opens exactly like s. If s is already wrapped by the primary KEK
// it is returned unchanged without calling the keeper.
func (k *Keyring) Rewrap(ctx context.Context, s Sealed) (Sealed, error) {
	kk, err := k.lookup(s)
	if err != nil {
		return Sealed{}, err
	}
	primary := k.keks[0]
	if kk == primary {
		return s, nil
	}
	dek, err := k.unwrap(ctx, kk, s.WrappedDEK)
	if err != nil {
		return Sealed{}, err
	}
	defer clear(dek) // best effort
	wrapped, err := k.encrypt(ctx, primary, dek)
	if err != nil {
		return Sealed{}, k.wrapError(ctx, primary, "wrap data key", err)
	}
	// Rewrap runs over cold rows during a rotation: do not let it evict the
	// DEKs that serve reads.
	return Sealed{Ciphertext: s.Ciphertext, WrappedDEK: wrapped, KEKID: primary.id}, nil
}

func (k *Keyring) lookup(s Sealed) (*kek, error) {
	if k.closed.Load() {
		return nil, errClosed
	}
	if s.KEKID == "" {
		return nil, fmt.Errorf("%w: no KEK id", ErrCorrupt)
	}
	kk, ok := k.byID[s.KEKID]
	if !ok {
		// A KEK id is a fingerprint, not a secret. Named (FailedKEK) only
		// when it has a fingerprint's shape: the row is read from the
		// database, which may have been edited.
		err := fmt.Errorf("%w: %q", ErrUnknownKEK, s.KEKID)
		if isFingerprint(s.KEKID) {
			return nil, kekError{id: s.KEKID, err: err}
		}
		return nil, err
	}
	if len(s.WrappedDEK) == 0 {
		return nil, fmt.Errorf("%w: empty wrapped data key", ErrCorrupt)
	}
	return kk, nil
}

// unwrap decrypts a wrapped DEK with kk. The caller owns (and should zero)
// the result.
func (k *Keyring) unwrap(ctx context.Context, kk *kek, wrapped []byte) ([]byte, error) {
	dek, err := k.decrypt(ctx, kk, wrapped)
	if err != nil {
		return nil, k.unwrapError(ctx, kk, err)
	}
	if len(dek) != dekSize {
		n := len(dek)
		clear(dek)
		return nil, fmt.Errorf("%w: unwrapped data key is %d bytes, want %d", ErrCorrupt, n, dekSize)
	}
	return dek, nil
}

// encrypt and decrypt call the keeper under the per-call KMS timeout.
func (k *Keyring) encrypt(ctx context.Context, kk *kek, pt []byte) ([]byte, error) {
	ctx, cancel := k.callContext(ctx, kk)
	defer cancel()
	return kk.keeper.Encrypt(ctx, pt)
}

func (k *Keyring) decrypt(ctx context.Context, kk *kek, ct []byte) ([]byte, error) {
	ctx, cancel := k.callContext(ctx, kk)
	defer cancel()
	return kk.keeper.Decrypt(ctx, ct)
}

func (k *Keyring) callContext(ctx context.Context, kk *kek) (context.Context, context.CancelFunc) {
	if k.timeout <= 0 || kk.local {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, k.timeout)
}

// errorCode is the keeper's gcerrors code for err or, when the driver does
// not classify its errors (Unknown), the code a classifier registered for
// the scheme gives.
func errorCode(kk *kek, err error) gcerrors.ErrorCode {
	code := gcerrors.Code(err)
	if code == gcerrors.Unknown {
		if fn := classifier(kk.scheme); fn != nil {
			code = fn(err)
		}
	}
	return code
}

// unwrapError classifies a Keeper.Decrypt failure:
//
//   - keyring closed, ctx done, or codes Canceled, DeadlineExceeded,
//     Internal, ResourceExhausted: ErrKEKUnavailable (retryable);
//   - InvalidArgument: the KMS rejected this wrapped key (tampered, or
//     wrapped by another key): ErrCorrupt;
//   - NotFound, FailedPrecondition, PermissionDenied: the KMS refused the KEK
//     itself (no permission, key disabled, destroyed or misnamed), which
//     affects every row under it: ErrKEKRefused;
//   - anything else (mostly Unknown): ErrCorrupt for a local (base64key)
//     keeper, which has no transport so a failure can only mean a wrong key
//     or altered data; ErrKEKUnavailable for a remote keeper, since we cannot
//     prove the data is bad. (gocloud has no Unavailable code: network
//     errors and gRPC Unavailable surface as Unknown.)
//
// A refused KEK also fails Check, so /readyz reports it.
func (k *Keyring) unwrapError(ctx context.Context, kk *kek, err error) error {
	if k.closed.Load() || ctx.Err() != nil {
		return k.keeperError(kk, "unwrap data key", err)
	}
	switch errorCode(kk, err) {
	case gcerrors.Canceled, gcerrors.DeadlineExceeded, gcerrors.Internal, gcerrors.ResourceExhausted:
		return k.keeperError(kk, "unwrap data key", err)
	case gcerrors.InvalidArgument:
		return corruptError(kk)
	case gcerrors.NotFound, gcerrors.FailedPrecondition, gcerrors.PermissionDenied:
		if kk.local {
			return corruptError(kk)
		}
		return k.refusedError(kk, "unwrap data key", err)
	}
	if kk.local {
		return corruptError(kk)
	}
	return k.keeperError(kk, "unwrap data key", err)
}

func corruptError(kk *kek) error {
	// The driver's message may describe the input; it is not needed.
	return fmt.Errorf("%w: KEK %s cannot unwrap the data key", ErrCorrupt, kk.id)
}

// wrapError classifies a Keeper.Encrypt failure: the KMS refusing the KEK
// (NotFound, FailedPrecondition, PermissionDenied, InvalidArgument, e.g. a
// key that cannot encrypt) is ErrKEKRefused; anything else is
// ErrKEKUnavailable.
func (k *Keyring) wrapError(ctx context.Context, kk *kek, op string, err error) error {
	if k.closed.Load() || ctx.Err() != nil {
		return k.keeperError(kk, op, err)
	}
	switch errorCode(kk, err) {
	case gcerrors.NotFound, gcerrors.FailedPrecondition, gcerrors.PermissionDenied, gcerrors.InvalidArgument:
		return k.refusedError(kk, op, err)
	}
	return k.keeperError(kk, op, err)
}

// keeperError wraps a keeper failure as ErrKEKUnavailable. The driver's
// message is kept (KMS errors carry no key material), with the KEK's URL
// and key name replaced by its id, and chained with %s so that the driver's
// error types do not leak through errors.As.
func (k *Keyring) keeperError(kk *kek, op string, err error) error {
	if k.closed.Load() {
		return errClosed
	}
	return kekError{id: kk.id, err: fmt.Errorf("%w: KEK %s (%s, entry %d): %s: %s", ErrKEKUnavailable, kk.id, kk.scheme, kk.index, op,
		redact(err.Error(), kk.urlParts, kk.id))}
}

func (k *Keyring) refusedError(kk *kek, op string, err error) error {
	return kekError{id: kk.id, err: fmt.Errorf("%w: KEK %s (%s, entry %d): %s: %s (check that the key exists, is enabled, "+
		"and that this service may encrypt and decrypt with it): %s", ErrKEKRefused, kk.id, kk.scheme, kk.index, op,
		codeWords(errorCode(kk, err)), redact(err.Error(), kk.urlParts, kk.id))}
}

// kekError carries the id of the KEK whose keeper failed.
type kekError struct {
	id  string
	err error
}

func (e kekError) Error() string { return e.err.Error() }
func (e kekError) Unwrap() error { return e.err }

// FailedKEK returns the fingerprint of the KEK an ErrKEKUnavailable,
// ErrKEKRefused or ErrUnknownKEK error is about, so that callers can name
// it (a fingerprint is not a secret).
func FailedKEK(err error) (id string, ok bool) {
	var ke kekError
	if errors.As(err, &ke) {
		return ke.id, true
	}
	return "", false
}

func codeWords(c gcerrors.ErrorCode) string {
	switch c {
	case gcerrors.NotFound:
		return "key not found"
	case gcerrors.PermissionDenied:
		return "permission denied"
	case gcerrors.FailedPrecondition:
		return "key disabled or not usable"
	case gcerrors.InvalidArgument:
		return "request refused"
	}
	return c.String()
}

func newAEAD(dek []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(dek)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err) // only a length error; no key bytes
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	return aead, nil
}

// Check round-trips a random probe through each configured keeper (wrap,
// unwrap, compare), for readiness probes. Every failing KEK is reported,
// each as ErrKEKUnavailable or ErrKEKRefused. Note that this needs encrypt permission on
// unwrap-only KEKs too.
func (k *Keyring) Check(ctx context.Context) error {
	if k.closed.Load() {
		return errClosed
	}
	// Side by side: a probe is two KMS calls per KEK, and a rotation's two
	// KEKs probed one after the other would double the wait.
	errs := make([]error, len(k.keks))
	var wg sync.WaitGroup
	for i, kk := range k.keks {
		wg.Go(func() { errs[i] = k.probe(ctx, kk) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (k *Keyring) probe(ctx context.Context, kk *kek) error {
	probe := make([]byte, dekSize)
	if _, err := rand.Read(probe); err != nil {
		return fmt.Errorf("seal: generate probe: %w", err)
	}
	ct, err := k.encrypt(ctx, kk, probe)
	if err != nil {
		return k.wrapError(ctx, kk, "probe encrypt", err)
	}
	pt, err := k.decrypt(ctx, kk, ct)
	if err != nil {
		if err := k.unwrapError(ctx, kk, err); !errors.Is(err, ErrCorrupt) {
			return err
		}
		return k.keeperError(kk, "probe decrypt", err)
	}
	if !bytes.Equal(pt, probe) {
		return fmt.Errorf("%w: KEK %s (%s, entry %d): probe round trip returned different bytes", ErrKEKUnavailable, kk.id, kk.scheme, kk.index)
	}
	return nil
}

// DEKCacheStats counts the unwrapped-DEK cache's outcomes since the keyring
// opened: Hits were served from memory, Misses called the KMS.
type DEKCacheStats struct {
	Hits, Misses uint64
	Entries      int
}

// DEKCacheStats returns the cache's counts (for /metrics).
func (k *Keyring) DEKCacheStats() DEKCacheStats {
	return DEKCacheStats{Hits: k.hits.Load(), Misses: k.misses.Load(), Entries: k.cache.len()}
}

// Close closes every keeper and drops the DEK cache. Afterwards every
// operation fails with ErrKEKUnavailable. Close is idempotent.
func (k *Keyring) Close() error {
	k.closeMu.Lock()
	defer k.closeMu.Unlock()
	if k.closed.Swap(true) {
		return k.closeEr
	}
	var errs []error
	for _, kk := range k.keks {
		if err := kk.keeper.Close(); err != nil {
			errs = append(errs, fmt.Errorf("seal: close KEK %s: %v", kk.id, err))
		}
	}
	k.cache.purge()
	k.closeEr = errors.Join(errs...)
	return k.closeEr
}
