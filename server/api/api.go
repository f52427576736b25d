// Package api holds the gRPC handlers of SecretService, ProviderService and
// AuditService. A handler validates its request, calls the store (sealing or
// opening values through the keyring), maps errors in one place (toStatus),
// and fills the response. It never builds SQL and never logs a value.
package api

import (
	"context"
	"crypto/sha256"
	"log/slog"
	"time"

	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/proto"

	"github.com/orient-bot/secrets/server/providercheck"
	"github.com/orient-bot/secrets/server/seal"
	"github.com/orient-bot/secrets/server/store"
)

// Store is what the handlers need from the database.
type Store interface {
	PutSecret(ctx context.Context, meta store.Meta, p store.PutParams) (store.WriteResult, error)
	UpdateSecret(ctx context.Context, meta store.Meta, p store.UpdateParams) (store.WriteResult, error)
	SetVersionState(ctx context.Context, meta store.Meta, key string, version int64, expect *int64, target store.VersionState) (store.WriteResult, error)
	DeleteSecret(ctx context.Context, meta store.Meta, key string, expect *int64) (store.DeleteResult, error)
	GetSecret(ctx context.Context, key string) (store.Secret, int64, error)
	ListSecrets(ctx context.Context, p store.ListParams) (store.ListResult, error)
	ListVersions(ctx context.Context, key string, before int64, limit int) ([]store.Version, error)
	AccessVersion(ctx context.Context, key string, version int64) (store.SealedVersion, int64, error)
	BatchAccess(ctx context.Context, keys []string) ([]store.BatchItem, int64, error)
	RecordFailure(ctx context.Context, meta store.Meta, key string, version int64, outcome, detail string) error
	ListAudit(ctx context.Context, f store.AuditFilter) ([]store.AuditEvent, error)
	// CategoriesOf returns the categories of the stored secrets among keys.
	CategoriesOf(ctx context.Context, keys []string) (map[string]string, error)
	WritesWithValueMAC(ctx context.Context, mac []byte, key string, limit int) ([]store.AuditEvent, error)
	ProviderDefaults(ctx context.Context) ([]store.ProviderDefault, int64, error)
	SetProviderDefault(ctx context.Context, meta store.Meta, useCase, provider, model string) (store.ProviderDefaultResult, error)
}

// AccessRecorder durably records access audit events; a value is returned
// only after its event is recorded.
type AccessRecorder interface {
	RecordAccess(ctx context.Context, events []store.AuditEvent) error
}

// Keyring seals and opens values (envelope encryption). A write gets its
// data key (a KMS call) before its transaction and seals with it inside.
type Keyring interface {
	NewDataKey(ctx context.Context) (*seal.DataKey, error)
	Open(ctx context.Context, key string, version int64, s seal.Sealed) ([]byte, uint32, error)
}

// Deps are the handlers' dependencies.
type Deps struct {
	Store   Store
	Access  AccessRecorder
	Keyring Keyring
	Logger  *slog.Logger
	// MinRevisionWait bounds how long a read waits for a min_revision the
	// database has not reached (DefaultMinRevisionWait when 0).
	MinRevisionWait time.Duration
	// Hub and Consumers serve the change stream and restart tracking.
	Hub       Hub
	Consumers ConsumerStore
	// ValueMAC fingerprints a value with a key the database does not hold,
	// so an idempotency record can tell a retry from a different value
	// without storing a guessable hash of it.
	ValueMAC func(value []byte) []byte
	// AuditMAC fingerprints written values for the audit log, under a key
	// of its own (see ValueMAC).
	AuditMAC func(value []byte) []byte
	// ConsumerStaleAfter is how long a consumer may go unseen before it is
	// shown as stale.
	ConsumerStaleAfter time.Duration
	// ConsumerGoneAfter is how long a consumer may go unseen before it is
	// shown as gone and leaves the restart banner (0: never).
	ConsumerGoneAfter time.Duration
	// PageTokenKey authenticates page tokens (a service key the database
	// does not hold).
	PageTokenKey []byte
	// ReadCache, if set, answers reads of newest versions without a
	// database read (the audit commit still happens).
	ReadCache ReadCache
	// Checker asks providers whether stored credentials work (CheckSecret);
	// nil answers UNIMPLEMENTED.
	Checker *providercheck.Checker
}

// ReadCache holds sealed newest versions, kept exact by the change stream
// (server/readcache).
type ReadCache interface {
	Get(key string, minRevision int64) (store.SealedVersion, int64, bool)
	GetAll(keys []string, minRevision int64) ([]store.SealedVersion, int64, bool)
	Put(key string, sv store.SealedVersion, rev int64)
}

// Identity says who is calling. Until authentication exists every caller is
// "anonymous"; the peer is the real client address (for REST calls, the one
// the gateway saw).
type Identity struct {
	Actor string
	Peer  string
}

type identityKey struct{}

// WithIdentity attaches the caller's identity to ctx (done by the server's
// interceptors).
func WithIdentity(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, identityKey{}, id)
}

// IdentityFrom returns the caller's identity: the one attached by the
// interceptors, else anonymous at the transport peer.
func IdentityFrom(ctx context.Context) Identity {
	if id, ok := ctx.Value(identityKey{}).(Identity); ok {
		return id
	}
	id := Identity{Actor: "anonymous"}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		id.Peer = p.Addr.String()
	}
	return id
}

// metaFor builds the store's Meta for an action. The request hash covers the
// request with its value removed (a hash of a low-entropy value would let a
// database reader confirm guesses), plus the actor, so a request id cannot be
// replayed by someone else.
func metaFor(ctx context.Context, action, requestID string, req proto.Message, extra ...[]byte) store.Meta {
	id := IdentityFrom(ctx)
	m := store.Meta{Actor: id.Actor, Peer: id.Peer, Action: action, RequestID: requestID}
	if requestID != "" && req != nil {
		h := sha256.New()
		h.Write([]byte(action + "\x00" + id.Actor + "\x00"))
		b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(req)
		h.Write(b)
		for _, e := range extra {
			h.Write(e)
		}
		m.RequestHash = h.Sum(nil)
	}
	return m
}

func toSeal(s store.Sealed) seal.Sealed {
	return seal.Sealed{Ciphertext: s.Ciphertext, WrappedDEK: s.WrappedDEK, KEKID: s.KEKID}
}

func fromSeal(s seal.Sealed) store.Sealed {
	return store.Sealed{Ciphertext: s.Ciphertext, WrappedDEK: s.WrappedDEK, KEKID: s.KEKID}
}
