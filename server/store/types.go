package store

import "time"

// VersionState is a version's state; the numbers are stored and match the
// API's enum.
type VersionState int16

// Version states.
const (
	StateEnabled   VersionState = 1
	StateDisabled  VersionState = 2
	StateDestroyed VersionState = 3
)

func (s VersionState) String() string {
	switch s {
	case StateEnabled:
		return "enabled"
	case StateDisabled:
		return "disabled"
	case StateDestroyed:
		return "destroyed"
	}
	return "unknown"
}

// ChangeKind says what a change-log entry changed; the numbers are stored and
// match the API's enum.
type ChangeKind int16

// Change kinds.
const (
	ChangeValueAdded             ChangeKind = 1
	ChangeVersionDisabled        ChangeKind = 2
	ChangeVersionEnabled         ChangeKind = 3
	ChangeVersionDestroyed       ChangeKind = 4
	ChangeSecretDeleted          ChangeKind = 5
	ChangeMetadataChanged        ChangeKind = 6
	ChangeProviderDefaultChanged ChangeKind = 7
	ChangeConsumerChanged        ChangeKind = 8
	ChangeRotationDue            ChangeKind = 9
	ChangeSecretExpired          ChangeKind = 10
)

// Secret is a secret's metadata as stored.
type Secret struct {
	Key             string
	Category        string
	Description     string
	RestartRequired bool
	// CurrentVersion is the newest version number.
	CurrentVersion int64
	// CurrentState is the state of the newest version.
	CurrentState VersionState
	// Revision of the last change to the secret; its etag derives from it.
	Revision   int64
	CreateTime time.Time
	UpdateTime time.Time
	UpdatedBy  string
	// RotationPeriod is the interval between rotations; 0 for none.
	RotationPeriod time.Duration
	// NextRotationTime is when the secret is next due for rotation; zero
	// for none.
	NextRotationTime time.Time
	// ExpireTime is when access stops; zero for never.
	ExpireTime time.Time
	// RotationDue and Expired say whether those times had passed when the
	// secret was read (the database's clock).
	RotationDue bool
	Expired     bool
}

// Version is one version's metadata.
type Version struct {
	Key         string
	Version     int64
	State       VersionState
	CreateTime  time.Time
	DestroyTime time.Time // zero unless destroyed
	CreatedBy   string
	KEKID       string
}

// Sealed is a value as stored: ciphertext and wrapped data key, opaque here.
type Sealed struct {
	Ciphertext []byte
	WrappedDEK []byte
	KEKID      string
}

// SealedVersion is what an access reads: which version, and its sealed value.
type SealedVersion struct {
	Key     string
	Version int64
	Sealed  Sealed
	// ExpireTime is the secret's expiry (zero: never). A copy served from
	// memory must be refused after it, as the database read would be.
	ExpireTime time.Time
}

// ExpiredAt reports whether the secret had expired at now; if so, the
// error to answer, the same as for a disabled version.
func (v SealedVersion) ExpiredAt(now time.Time) error {
	if v.ExpireTime.IsZero() || now.Before(v.ExpireTime) {
		return nil
	}
	return expiredError(v.Key, v.ExpireTime)
}

// Meta describes who asks and how, for the audit log and idempotency.
type Meta struct {
	// Actor is the authenticated caller's name.
	Actor string
	// Peer is the caller's network address.
	Peer string
	// Action is the RPC name, e.g. "PutSecret".
	Action string
	// RequestID is the caller's idempotency key, if any.
	RequestID string
	// RequestHash identifies the request's content (never a value), so a
	// reused request id with different content is refused.
	RequestHash []byte
}

// AuditEvent is one audit log row.
type AuditEvent struct {
	Sequence  int64
	Time      time.Time
	Actor     string
	Action    string
	Key       string
	Version   int64
	Outcome   string
	RequestID string
	Peer      string
	Revision  int64
	Detail    string
	// ValueHMAC fingerprints the value a write stored (never the value).
	ValueHMAC []byte
	// PrevHash and Hash link the event into the audit hash chain.
	PrevHash []byte
	Hash     []byte
}

// OutcomeOK is the outcome of a successful action.
const OutcomeOK = "OK"

// ProviderDefault is a stored use-case default.
type ProviderDefault struct {
	UseCase    string
	Provider   string
	Model      string
	Revision   int64
	UpdateTime time.Time
	UpdatedBy  string
}
