package client

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
)

// Latest names the newest version where a version number is expected.
const Latest int64 = 0

// Secret is a secret's metadata. It never holds a value.
type Secret struct {
	Key             string
	Category        string
	Description     string
	RestartRequired bool
	// Configured: the newest version is enabled. False for the catalog's
	// empty slots.
	Configured     bool
	CurrentVersion int64
	// Etag is the state token for compare-and-set writes (WithEtag).
	Etag       string
	CreateTime time.Time
	UpdateTime time.Time
	UpdatedBy  string
	// Catalog: a well-known key of the built-in catalog.
	Catalog bool
	// ValuePrefix is the value's expected prefix, e.g. "xoxb-".
	ValuePrefix string
	// Revision is the revision the answer reflects (GetSecret) or the
	// revision of the change (writes).
	Revision int64
	// RotationPeriod is the interval between rotations (0: none);
	// NextRotationTime when the secret is next due (zero: none);
	// ExpireTime when access stops (zero: never).
	RotationPeriod   time.Duration
	NextRotationTime time.Time
	ExpireTime       time.Time
	// RotationDue and Expired: those times have passed (server's clock).
	RotationDue bool
	Expired     bool
	// SuggestedRotationPeriod is the catalog's proposal for a well-known
	// key (0: none); never applied by itself.
	SuggestedRotationPeriod time.Duration
}

// VersionState is the state of a secret version.
type VersionState int

// Version states.
const (
	VersionStateUnspecified VersionState = iota
	VersionEnabled
	VersionDisabled
	VersionDestroyed
)

func (s VersionState) String() string {
	switch s {
	case VersionEnabled:
		return "enabled"
	case VersionDisabled:
		return "disabled"
	case VersionDestroyed:
		return "destroyed"
	}
	return "unspecified"
}

// SecretVersion is one version of a secret (metadata only).
type SecretVersion struct {
	Key         string
	Version     int64
	State       VersionState
	CreateTime  time.Time
	DestroyTime time.Time
	CreatedBy   string
	// KEKID fingerprints the key-encryption key wrapping the version.
	KEKID string
}

// Value is a secret's value at one version. Its String and GoString
// methods never print the value, so logging a Value by mistake is safe; use
// Data or Text for the value itself.
type Value struct {
	Key     string
	Version int64
	Data    []byte
	// Revision is the revision the read reflects.
	Revision int64
}

// Text returns the value as a string.
func (v Value) Text() string { return string(v.Data) }

func (v Value) String() string {
	return fmt.Sprintf("%s@%d [%d bytes redacted]", v.Key, v.Version, len(v.Data))
}

// GoString keeps %#v from printing the value.
func (v Value) GoString() string { return "client.Value{" + v.String() + "}" }

// LogValue keeps log/slog (any handler) from printing the value.
func (v Value) LogValue() slog.Value { return slog.StringValue(v.String()) }

// MarshalJSON keeps encoding/json (and slog's JSON handler, also inside
// other structs) from writing the value: it writes String's redaction.
func (v Value) MarshalJSON() ([]byte, error) { return json.Marshal(v.String()) }

// ChangeKind says what a change did.
type ChangeKind int

// Change kinds (the proto's ChangeKind).
const (
	ChangeUnspecified ChangeKind = iota
	ChangeValueAdded
	ChangeVersionDisabled
	ChangeVersionEnabled
	ChangeVersionDestroyed
	ChangeSecretDeleted
	ChangeMetadataChanged
	ChangeProviderDefaultChanged
	ChangeConsumerChanged
	// ChangeRotationDue: the secret's next rotation time passed (published
	// once per due time).
	ChangeRotationDue
	// ChangeSecretExpired: the secret's expire time passed, its value can
	// no longer be read (published once per expire time). A Cache drops
	// the value and resolves the key as for a disabled version
	// (environment, then default); RestartRequired is the secret's flag.
	ChangeSecretExpired
)

var changeKindNames = [...]string{"unspecified", "value_added", "version_disabled", "version_enabled",
	"version_destroyed", "secret_deleted", "metadata_changed", "provider_default_changed", "consumer_changed",
	"rotation_due", "secret_expired"}

func (k ChangeKind) String() string {
	if k >= 0 && int(k) < len(changeKindNames) {
		return changeKindNames[k]
	}
	return fmt.Sprintf("change_kind_%d", int(k))
}

// affectsValue reports whether the change may change the key's resolved
// value (so a cache re-fetches it).
func (k ChangeKind) affectsValue() bool {
	switch k {
	case ChangeValueAdded, ChangeVersionDisabled, ChangeVersionEnabled, ChangeVersionDestroyed, ChangeSecretDeleted,
		ChangeSecretExpired:
		return true
	}
	return false
}

// ChangeEvent is one committed change. It never holds a value.
type ChangeEvent struct {
	Revision        int64
	Time            time.Time
	Kind            ChangeKind
	Key             string
	Version         int64
	Category        string
	RestartRequired bool
	Detail          string
}

// Consumer names a service instance for restart tracking.
type Consumer struct {
	Service  string
	Instance string
}

func (c Consumer) String() string { return c.Service + "/" + c.Instance }

func (c Consumer) proto() *pb.Consumer {
	if c.Service == "" {
		return nil
	}
	return &pb.Consumer{Service: c.Service, Instance: c.Instance}
}

// PendingChange is a restart-required change a consumer has not picked up.
type PendingChange struct {
	Key      string
	Revision int64
}

// ConsumerState is a consumer instance as the service sees it.
type ConsumerState struct {
	Consumer       Consumer
	LoadedRevision int64
	LastSeen       time.Time
	Stale          bool
	// Pending are restart-required changes after LoadedRevision.
	Pending    []PendingChange
	Keys       []string
	Categories []string
}

// Provider is an AI provider.
type Provider struct {
	ID          string
	DisplayName string
	Key         string
	Configured  bool
	Models      []string
}

// ProviderDefault is the provider and model of one use case.
type ProviderDefault struct {
	UseCase    string
	Provider   string
	Model      string
	UpdateTime time.Time
	UpdatedBy  string
}

// AuditEvent is one audited action.
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
}

// versionString is the API's version path segment.
func versionString(v int64) string {
	if v == Latest {
		return "latest"
	}
	return fmt.Sprint(v)
}

func timeOf(ts *timestamppb.Timestamp) time.Time {
	if ts == nil {
		return time.Time{}
	}
	return ts.AsTime()
}

func secretFrom(s *pb.Secret, rev int64) Secret {
	if s == nil {
		return Secret{Revision: rev}
	}
	return Secret{
		Key: s.GetKey(), Category: s.GetCategory(), Description: s.GetDescription(),
		RestartRequired: s.GetRestartRequired(), Configured: s.GetConfigured(), CurrentVersion: s.GetCurrentVersion(),
		Etag: s.GetEtag(), CreateTime: timeOf(s.GetCreateTime()), UpdateTime: timeOf(s.GetUpdateTime()),
		UpdatedBy: s.GetUpdatedBy(), Catalog: s.GetCatalog(), ValuePrefix: s.GetValuePrefix(), Revision: rev,
		RotationPeriod: s.GetRotationPeriod().AsDuration(), NextRotationTime: timeOf(s.GetNextRotationTime()),
		ExpireTime: timeOf(s.GetExpireTime()), RotationDue: s.GetRotationDue(), Expired: s.GetExpired(),
		SuggestedRotationPeriod: s.GetSuggestedRotationPeriod().AsDuration(),
	}
}

func versionFrom(v *pb.SecretVersion) SecretVersion {
	return SecretVersion{
		Key: v.GetKey(), Version: v.GetVersion(), State: VersionState(v.GetState()),
		CreateTime: timeOf(v.GetCreateTime()), DestroyTime: timeOf(v.GetDestroyTime()),
		CreatedBy: v.GetCreatedBy(), KEKID: v.GetKekId(),
	}
}

func changeFrom(e *pb.ChangeEvent) ChangeEvent {
	return ChangeEvent{
		Revision: e.GetRevision(), Time: timeOf(e.GetTime()), Kind: ChangeKind(e.GetKind()), Key: e.GetKey(),
		Version: e.GetVersion(), Category: e.GetCategory(), RestartRequired: e.GetRestartRequired(), Detail: e.GetDetail(),
	}
}

func consumerStateFrom(c *pb.ConsumerState) ConsumerState {
	st := ConsumerState{
		Consumer:       Consumer{Service: c.GetConsumer().GetService(), Instance: c.GetConsumer().GetInstance()},
		LoadedRevision: c.GetLoadedRevision(), LastSeen: timeOf(c.GetLastSeen()), Stale: c.GetStale(),
		Keys: c.GetKeys(), Categories: c.GetCategories(),
	}
	for _, p := range c.GetPending() {
		st.Pending = append(st.Pending, PendingChange{Key: p.GetKey(), Revision: p.GetRevision()})
	}
	return st
}

func providerDefaultFrom(d *pb.ProviderDefault) ProviderDefault {
	return ProviderDefault{UseCase: d.GetUseCase(), Provider: d.GetProvider(), Model: d.GetModel(),
		UpdateTime: timeOf(d.GetUpdateTime()), UpdatedBy: d.GetUpdatedBy()}
}

func auditFrom(e *pb.AuditEvent) AuditEvent {
	return AuditEvent{
		Sequence: e.GetSequence(), Time: timeOf(e.GetTime()), Actor: e.GetActor(), Action: e.GetAction(),
		Key: e.GetKey(), Version: e.GetVersion(), Outcome: e.GetOutcome(), RequestID: e.GetRequestId(),
		Peer: e.GetPeer(), Revision: e.GetRevision(), Detail: e.GetDetail(),
	}
}

// ParseChangeKind parses a ChangeKind name as String prints it.
func ParseChangeKind(s string) (ChangeKind, bool) {
	for i, n := range changeKindNames {
		if strings.EqualFold(n, s) {
			return ChangeKind(i), true
		}
	}
	return 0, false
}
