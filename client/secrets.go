package client

import (
	"context"
	"fmt"
	"hash/crc32"
	"time"

	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
)

// WriteOption adjusts a write call.
type WriteOption func(*writeOptions)

type writeOptions struct {
	etag            string
	requestID       string
	description     *string
	category        *string
	restartRequired *bool
	rotationPeriod  *time.Duration
	nextRotation    *time.Time
	expireTime      *time.Time
}

func writeOpts(opts []WriteOption) writeOptions {
	var w writeOptions
	for _, o := range opts {
		o(&w)
	}
	if w.requestID == "" {
		w.requestID = newRequestID()
	}
	return w
}

// WithEtag makes a write compare-and-set: it fails with ErrConflict when the
// secret changed since the etag was read.
func WithEtag(etag string) WriteOption { return func(w *writeOptions) { w.etag = etag } }

// WithRequestID sets the write's idempotency key (AIP-155). By default every
// write gets a random one, which is what makes retrying it safe.
func WithRequestID(id string) WriteOption { return func(w *writeOptions) { w.requestID = id } }

// WithDescription sets the description (PutSecret, UpdateSecret).
func WithDescription(s string) WriteOption { return func(w *writeOptions) { w.description = &s } }

// WithCategory sets the category (PutSecret, UpdateSecret).
func WithCategory(s string) WriteOption { return func(w *writeOptions) { w.category = &s } }

// WithRestartRequired sets whether consumers must restart on a change
// (PutSecret, UpdateSecret).
func WithRestartRequired(b bool) WriteOption {
	return func(w *writeOptions) { w.restartRequired = &b }
}

// WithRotationPeriod sets the rotation period, 1 hour to 10 years; 0
// clears the schedule (PutSecret, UpdateSecret).
func WithRotationPeriod(d time.Duration) WriteOption {
	return func(w *writeOptions) { w.rotationPeriod = &d }
}

// WithNextRotationTime sets when the secret is next due for rotation; the
// zero time clears it (UpdateSecret).
func WithNextRotationTime(t time.Time) WriteOption {
	return func(w *writeOptions) { w.nextRotation = &t }
}

// WithExpireTime sets when access stops; the zero time clears it
// (PutSecret, UpdateSecret).
func WithExpireTime(t time.Time) WriteOption { return func(w *writeOptions) { w.expireTime = &t } }

func durationOpt(d *time.Duration) *durationpb.Duration {
	if d == nil {
		return nil
	}
	return durationpb.New(*d)
}

func timeOpt(t *time.Time) *timestamppb.Timestamp {
	if t == nil || t.IsZero() {
		return nil
	}
	return timestamppb.New(*t)
}

// ListSecretsOptions filter ListSecrets.
type ListSecretsOptions struct {
	// Category keeps one category; empty for all.
	Category string
	// ConfiguredOnly leaves out the catalog's empty slots.
	ConfiguredOnly bool
	// RotationDue keeps only secrets whose rotation is due.
	RotationDue bool
	// OnPage, if set, is called after each page with the count so far (for
	// progress displays).
	OnPage func(count int)
}

// ListSecrets lists secrets (all pages), ordered by key. The revision is the
// oldest of the pages' revisions: watching from it misses nothing.
func (c *Client) ListSecrets(ctx context.Context, o ListSecretsOptions) ([]Secret, int64, error) {
	var out []Secret
	var rev int64
	req := &pb.ListSecretsRequest{Category: o.Category, ConfiguredOnly: o.ConfiguredOnly, RotationDue: o.RotationDue, PageSize: 1000}
	for {
		res, err := c.secrets.ListSecrets(ctx, req)
		if err != nil {
			return nil, 0, fromRPC("ListSecrets", err)
		}
		if rev == 0 || res.GetRevision() < rev {
			rev = res.GetRevision()
		}
		for _, s := range res.GetSecrets() {
			out = append(out, secretFrom(s, 0))
		}
		if o.OnPage != nil {
			o.OnPage(len(out))
		}
		if res.GetNextPageToken() == "" {
			return out, rev, nil
		}
		req.PageToken = res.GetNextPageToken()
	}
}

// GetSecret returns a secret's metadata; Revision is the snapshot it
// reflects.
func (c *Client) GetSecret(ctx context.Context, key string) (Secret, error) {
	res, err := c.secrets.GetSecret(ctx, &pb.GetSecretRequest{Key: key})
	if err != nil {
		return Secret{}, fromRPC("GetSecret", err)
	}
	return secretFrom(res.GetSecret(), res.GetRevision()), nil
}

// PutSecret stores value as the secret's new version (creating the secret
// if needed). Revision of the result is the change's revision.
func (c *Client) PutSecret(ctx context.Context, key string, value []byte, opts ...WriteOption) (Secret, error) {
	w := writeOpts(opts)
	res, err := c.secrets.PutSecret(ctx, &pb.PutSecretRequest{
		Key: key, Value: value, Description: w.description, Category: w.category,
		RestartRequired: w.restartRequired, Etag: w.etag, RequestId: w.requestID,
		RotationPeriod: durationOpt(w.rotationPeriod), ExpireTime: timeOpt(w.expireTime),
	})
	if err != nil {
		return Secret{}, fromRPC("PutSecret", err)
	}
	return secretFrom(res.GetSecret(), res.GetRevision()), nil
}

// UpdateSecret changes the metadata named by WithDescription, WithCategory
// and WithRestartRequired (at least one); WithEtag makes it compare-and-set.
func (c *Client) UpdateSecret(ctx context.Context, key string, opts ...WriteOption) (Secret, error) {
	w := writeOpts(opts)
	s := &pb.Secret{Key: key, Etag: w.etag}
	var mask []string
	if w.description != nil {
		s.Description, mask = *w.description, append(mask, "description")
	}
	if w.category != nil {
		s.Category, mask = *w.category, append(mask, "category")
	}
	if w.restartRequired != nil {
		s.RestartRequired, mask = *w.restartRequired, append(mask, "restart_required")
	}
	if w.rotationPeriod != nil {
		s.RotationPeriod, mask = durationOpt(w.rotationPeriod), append(mask, "rotation_period")
	}
	if w.nextRotation != nil {
		s.NextRotationTime, mask = timeOpt(w.nextRotation), append(mask, "next_rotation_time")
	}
	if w.expireTime != nil {
		s.ExpireTime, mask = timeOpt(w.expireTime), append(mask, "expire_time")
	}
	if len(mask) == 0 {
		return Secret{}, &Error{Op: "UpdateSecret", Code: codes.InvalidArgument, Reason: ReasonInvalidArgument,
			Message: "nothing to update: give a description, category, restart flag, rotation period, next rotation or expire time"}
	}
	res, err := c.secrets.UpdateSecret(ctx, &pb.UpdateSecretRequest{
		Secret: s, UpdateMask: &fieldmaskpb.FieldMask{Paths: mask}, RequestId: w.requestID,
	})
	if err != nil {
		return Secret{}, fromRPC("UpdateSecret", err)
	}
	return secretFrom(res.GetSecret(), res.GetRevision()), nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// checkCRC verifies the server's checksum, so corruption between the
// server's check and this process is caught too.
func checkCRC(op, key string, data []byte, want int64) error {
	if want != 0 && int64(crc32.Checksum(data, castagnoli)) != want {
		return &Error{Op: op, Code: codes.DataLoss, Reason: ReasonCiphertextCorrupt,
			Message: fmt.Sprintf("%s: value failed its CRC32C check in transit", key)}
	}
	return nil
}

// ReadOption tunes a read (AccessSecretVersion, Access, BatchAccess).
type ReadOption func(*readOptions)

type readOptions struct{ minRevision int64 }

// MinRevision makes the answer reflect at least revision rev — the revision
// of a write or change event this process has seen, perhaps through another
// replica, whose in-memory view may trail by the change stream's delay.
func MinRevision(rev int64) ReadOption {
	return func(o *readOptions) { o.minRevision = max(o.minRevision, rev) }
}

func readOpts(opts []ReadOption) readOptions {
	var o readOptions
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// AccessSecretVersion returns the value of one version (Latest for the
// newest). The access is audited.
func (c *Client) AccessSecretVersion(ctx context.Context, key string, version int64, opts ...ReadOption) (Value, error) {
	o := readOpts(opts)
	res, err := c.secrets.AccessSecretVersion(ctx, &pb.AccessSecretVersionRequest{Key: key, Version: versionString(version), MinRevision: o.minRevision})
	if err != nil {
		return Value{}, fromRPC("AccessSecretVersion", err)
	}
	if err := checkCRC("AccessSecretVersion", key, res.GetValue(), res.GetDataCrc32C()); err != nil {
		return Value{}, err
	}
	return Value{Key: res.GetKey(), Version: res.GetVersion(), Data: res.GetValue(), Revision: res.GetRevision()}, nil
}

// Access returns the newest value of key.
func (c *Client) Access(ctx context.Context, key string, opts ...ReadOption) (Value, error) {
	return c.AccessSecretVersion(ctx, key, Latest, opts...)
}

// BatchResult is one key's outcome in BatchAccess: a value or an error
// (ErrNotFound, ErrVersionNotEnabled, ...).
type BatchResult struct {
	Value Value
	Err   error
}

// maxBatch is the service's limit of keys per BatchAccessSecrets call.
const maxBatch = 100

// BatchAccess reads the newest values of keys, 100 per call. It returns the
// results by key and the revision they reflect (with more than 100 keys,
// the oldest of the calls' snapshots, so watching from it misses nothing).
func (c *Client) BatchAccess(ctx context.Context, keys []string, opts ...ReadOption) (map[string]BatchResult, int64, error) {
	o := readOpts(opts)
	out := make(map[string]BatchResult, len(keys))
	var rev int64
	for start := 0; start < len(keys); start += maxBatch {
		chunk := keys[start:min(start+maxBatch, len(keys))]
		res, err := c.secrets.BatchAccessSecrets(ctx, &pb.BatchAccessSecretsRequest{Keys: chunk, MinRevision: o.minRevision})
		if err != nil {
			return nil, 0, fromRPC("BatchAccessSecrets", err)
		}
		if rev == 0 || res.GetRevision() < rev {
			rev = res.GetRevision()
		}
		for _, r := range res.GetResults() {
			br := BatchResult{Value: Value{Key: r.GetKey(), Version: r.GetVersion(), Data: r.GetValue(), Revision: res.GetRevision()}}
			if r.GetError() != nil {
				br = BatchResult{Err: fromStatus("BatchAccessSecrets", statusOf(r.GetError()))}
			} else if err := checkCRC("BatchAccessSecrets", r.GetKey(), r.GetValue(), r.GetDataCrc32C()); err != nil {
				br = BatchResult{Err: err}
			}
			out[r.GetKey()] = br
		}
	}
	return out, rev, nil
}

func statusOf(s *status.Status) *grpcstatus.Status { return grpcstatus.FromProto(s) }

// ListSecretVersions lists a secret's versions, newest first (all pages).
func (c *Client) ListSecretVersions(ctx context.Context, key string) ([]SecretVersion, error) {
	var out []SecretVersion
	req := &pb.ListSecretVersionsRequest{Key: key, PageSize: 1000}
	for {
		res, err := c.secrets.ListSecretVersions(ctx, req)
		if err != nil {
			return nil, fromRPC("ListSecretVersions", err)
		}
		for _, v := range res.GetVersions() {
			out = append(out, versionFrom(v))
		}
		if res.GetNextPageToken() == "" {
			return out, nil
		}
		req.PageToken = res.GetNextPageToken()
	}
}

// VersionChange is the result of disabling, enabling or destroying a
// version: the version and its secret after the change (Secret.Revision is
// the change's revision).
type VersionChange struct {
	Version SecretVersion
	Secret  Secret
}

// DisableSecretVersion disables a version (Latest for the newest).
func (c *Client) DisableSecretVersion(ctx context.Context, key string, version int64, opts ...WriteOption) (VersionChange, error) {
	w := writeOpts(opts)
	res, err := c.secrets.DisableSecretVersion(ctx, &pb.DisableSecretVersionRequest{
		Key: key, Version: versionString(version), Etag: w.etag, RequestId: w.requestID})
	if err != nil {
		return VersionChange{}, fromRPC("DisableSecretVersion", err)
	}
	return VersionChange{versionFrom(res.GetVersion()), secretFrom(res.GetSecret(), res.GetRevision())}, nil
}

// EnableSecretVersion enables a disabled version.
func (c *Client) EnableSecretVersion(ctx context.Context, key string, version int64, opts ...WriteOption) (VersionChange, error) {
	w := writeOpts(opts)
	res, err := c.secrets.EnableSecretVersion(ctx, &pb.EnableSecretVersionRequest{
		Key: key, Version: versionString(version), Etag: w.etag, RequestId: w.requestID})
	if err != nil {
		return VersionChange{}, fromRPC("EnableSecretVersion", err)
	}
	return VersionChange{versionFrom(res.GetVersion()), secretFrom(res.GetSecret(), res.GetRevision())}, nil
}

// DestroySecretVersion erases a version's value for good.
func (c *Client) DestroySecretVersion(ctx context.Context, key string, version int64, opts ...WriteOption) (VersionChange, error) {
	w := writeOpts(opts)
	res, err := c.secrets.DestroySecretVersion(ctx, &pb.DestroySecretVersionRequest{
		Key: key, Version: versionString(version), Etag: w.etag, RequestId: w.requestID})
	if err != nil {
		return VersionChange{}, fromRPC("DestroySecretVersion", err)
	}
	return VersionChange{versionFrom(res.GetVersion()), secretFrom(res.GetSecret(), res.GetRevision())}, nil
}

// DeleteSecret deletes a secret with all its versions and returns the
// change's revision.
func (c *Client) DeleteSecret(ctx context.Context, key string, opts ...WriteOption) (int64, error) {
	w := writeOpts(opts)
	res, err := c.secrets.DeleteSecret(ctx, &pb.DeleteSecretRequest{Key: key, Etag: w.etag, RequestId: w.requestID})
	if err != nil {
		return 0, fromRPC("DeleteSecret", err)
	}
	return res.GetRevision(), nil
}

// ListConsumers lists consumer instances with the restart-required changes
// each has not picked up (only those with some, if pendingOnly), and the
// current revision.
// It reads every page.
func (c *Client) ListConsumers(ctx context.Context, pendingOnly bool) ([]ConsumerState, int64, error) {
	var out []ConsumerState
	var rev int64
	req := &pb.ListConsumersRequest{PendingOnly: pendingOnly}
	for {
		res, err := c.secrets.ListConsumers(ctx, req)
		if err != nil {
			return nil, 0, fromRPC("ListConsumers", err)
		}
		if rev == 0 {
			rev = res.GetRevision()
		}
		for _, s := range res.GetConsumers() {
			out = append(out, consumerStateFrom(s))
		}
		if res.GetNextPageToken() == "" {
			return out, rev, nil
		}
		req.PageToken = res.GetNextPageToken()
	}
}

// ReportConsumerState records that consumer (the client's WithConsumer
// identity when zero) now runs with the values of loadedRevision, e.g.
// after a restart; keys and categories say what it uses (empty: all).
func (c *Client) ReportConsumerState(ctx context.Context, consumer Consumer, loadedRevision int64, keys, categories []string) (ConsumerState, error) {
	if consumer.Service == "" {
		consumer = c.Consumer()
	}
	res, err := c.secrets.ReportConsumerState(ctx, &pb.ReportConsumerStateRequest{
		Consumer: consumer.proto(), LoadedRevision: loadedRevision, Keys: keys, Categories: categories})
	if err != nil {
		return ConsumerState{}, fromRPC("ReportConsumerState", err)
	}
	return consumerStateFrom(res.GetConsumer()), nil
}
