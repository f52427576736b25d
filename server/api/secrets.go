package api

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/server/catalog"
	"github.com/orient-bot/secrets/server/seal"
	"github.com/orient-bot/secrets/server/store"
)

// SecretService implements the SecretService RPCs.
type SecretService struct {
	pb.UnimplementedSecretServiceServer
	Deps
	// wire holds recent change events in wire form (sent through Codec).
	wire *eventWire
}

// NewSecretService returns the SecretService handlers. Their server must
// use Codec.
func NewSecretService(d Deps) *SecretService { return &SecretService{Deps: d, wire: &eventWire{}} }

func (s *SecretService) fail(ctx context.Context, err error) error {
	return toStatus(ctx, s.Logger, err)
}

// ListSecrets merges stored secrets with the catalog's empty slots, by key.
func (s *SecretService) ListSecrets(ctx context.Context, req *pb.ListSecretsRequest) (*pb.ListSecretsResponse, error) {
	category := ""
	if req.GetCategory() != "" {
		c, err := normalizeCategory("category", req.GetCategory())
		if err != nil {
			return nil, err
		}
		category = c
	}
	size, err := pageSize(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	// Empty slots have no schedule: a rotation_due list holds stored
	// secrets only.
	configuredOnly := req.GetConfiguredOnly() || req.GetRotationDue()
	filter := filterKey(category, boolString(req.GetConfiguredOnly()), boolString(req.GetRotationDue()))
	tok, err := s.decodeToken(ctx, req.GetPageToken(), filter)
	if err != nil {
		return nil, err
	}
	// Pages are cut after the caller's scope is applied, so a page holds
	// only keys the caller may see and its token only the last of them. A
	// narrow scope may read several store pages to fill one.
	scope := scopeOf(ctx)
	out := &pb.ListSecretsResponse{}
	after := tok.After
	batch := scanBatch(size, !scope.Empty())
	for scanned := 0; ; {
		res, err := s.Store.ListSecrets(ctx, store.ListParams{Category: category, RotationDue: req.GetRotationDue(), After: after, Limit: batch,
			AlsoKeys: slotKeysAfter(after, category, configuredOnly)})
		if err != nil {
			return nil, s.fail(ctx, err)
		}
		if out.Revision == 0 {
			out.Revision = res.Revision
		}
		full := len(res.Page) == batch
		// Empty slots up to the last stored key read (all of them when the
		// store has no more).
		var upTo string
		if full {
			upTo = res.Page[len(res.Page)-1].Key
		}
		var merged []*pb.Secret
		for _, sec := range res.Page {
			merged = append(merged, toSecret(sec))
		}
		if !configuredOnly {
			for _, e := range catalog.Entries() {
				if e.Key > after && (upTo == "" || e.Key <= upTo) && (category == "" || e.Category == category) {
					if _, stored := res.Also[e.Key]; !stored {
						merged = append(merged, emptySlot(e))
					}
				}
			}
		}
		slices.SortFunc(merged, func(a, b *pb.Secret) int { return strings.Compare(a.Key, b.Key) })
		for _, sec := range merged {
			if !scope.Allows(sec.Key, sec.Category) {
				continue
			}
			if len(out.Secrets) == size {
				last := out.Secrets[size-1].Key
				out.NextPageToken = s.encodeToken(ctx, pageToken{After: last, Filter: filter})
				return out, nil
			}
			out.Secrets = append(out.Secrets, sec)
		}
		if !full {
			return out, nil
		}
		after = upTo
		if scanned += len(res.Page); scanned >= maxScannedPerPage {
			out.NextPageToken = s.encodeToken(ctx, pageToken{After: after, Filter: filter})
			return out, nil
		}
	}
}

// slotKeysAfter lists the catalog keys after a cursor (in a category), so
// the store can say which of them are stored.
func slotKeysAfter(after, category string, configuredOnly bool) []string {
	if configuredOnly {
		return nil
	}
	var keys []string
	for _, e := range catalog.Entries() {
		if e.Key > after && (category == "" || e.Category == category) {
			keys = append(keys, e.Key)
		}
	}
	return keys
}

func boolString(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// GetSecret returns metadata; a catalog key with no value is its empty slot.
func (s *SecretService) GetSecret(ctx context.Context, req *pb.GetSecretRequest) (*pb.GetSecretResponse, error) {
	if err := checkKey("key", req.GetKey()); err != nil {
		return nil, err
	}
	sec, rev, err := s.Store.GetSecret(ctx, req.GetKey())
	if err != nil {
		if e, ok := catalog.Lookup(req.GetKey()); ok && isNotFound(err) {
			return &pb.GetSecretResponse{Secret: emptySlot(e), Revision: rev}, nil
		}
		return nil, s.fail(ctx, err)
	}
	return &pb.GetSecretResponse{Secret: toSecret(sec), Revision: rev}, nil
}

func (s *SecretService) PutSecret(ctx context.Context, req *pb.PutSecretRequest) (*pb.PutSecretResponse, error) {
	p, err := s.putParams(req)
	if err != nil {
		return nil, err
	}
	// The data key is wrapped before the write's transaction (a KMS call
	// under the revision counter's lock would hold every writer of every
	// replica for its duration), and only for a write that goes ahead (a
	// replayed request id answers without the KMS). Inside, sealing is local.
	var dk *seal.DataKey
	p.Prepare = func(ctx context.Context) (err error) {
		dk, err = s.Keyring.NewDataKey(ctx)
		return err
	}
	key, value := req.GetKey(), req.GetValue()
	p.Seal = func(_ context.Context, version int64) (store.Sealed, error) {
		sealed, _, err := dk.Seal(key, version, value)
		return fromSeal(sealed), err
	}
	var mac []byte
	if req.GetRequestId() != "" && s.ValueMAC != nil {
		mac = s.ValueMAC(req.GetValue())
	}
	res, err := s.Store.PutSecret(ctx, metaFor(ctx, "PutSecret", req.GetRequestId(), withoutValue(req), mac), p)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &pb.PutSecretResponse{Secret: toSecret(res.Secret), Revision: res.Revision}, nil
}

func withoutValue(req *pb.PutSecretRequest) *pb.PutSecretRequest {
	c := &pb.PutSecretRequest{Key: req.Key, Description: req.Description, Category: req.Category,
		RestartRequired: req.RestartRequired, Etag: req.Etag, RequestId: req.RequestId,
		RotationPeriod: req.RotationPeriod, ExpireTime: req.ExpireTime}
	return c
}

// putParams validates a PutSecret request into the store's parameters,
// all but the sealing.
func (s *SecretService) putParams(req *pb.PutSecretRequest) (store.PutParams, error) {
	key := req.GetKey()
	if err := checkKey("key", key); err != nil {
		return store.PutParams{}, err
	}
	if err := catalog.CheckValue(key, req.GetValue()); err != nil {
		return store.PutParams{}, invalidArg("value", err.Error())
	}
	expect, err := parseEtag("etag", req.GetEtag())
	if err != nil {
		return store.PutParams{}, err
	}
	if err := checkRequestID(req.GetRequestId()); err != nil {
		return store.PutParams{}, err
	}
	p := store.PutParams{Key: key, Expect: expect, RestartRequired: req.RestartRequired}
	if req.Description != nil {
		if err := checkText("description", req.GetDescription(), maxDescription, true); err != nil {
			return store.PutParams{}, err
		}
		p.Description = req.Description
	}
	if req.Category != nil {
		c, err := normalizeCategory("category", req.GetCategory())
		if err != nil {
			return store.PutParams{}, err
		}
		p.Category = &c
	}
	if req.RotationPeriod != nil {
		d, err := rotationPeriod("rotation_period", req.GetRotationPeriod())
		if err != nil {
			return store.PutParams{}, err
		}
		p.RotationPeriod = &d
	}
	if req.ExpireTime != nil {
		t, err := scheduleTime("expire_time", req.GetExpireTime(), time.Now())
		if err != nil {
			return store.PutParams{}, err
		}
		p.ExpireTime = &t
	}
	p.Defaults = store.Defaults{Category: catalog.CategoryCustom}
	if e, ok := catalog.Lookup(key); ok {
		p.Defaults = store.Defaults{Category: e.Category, Description: e.Description, RestartRequired: e.RestartRequired}
	}
	value := req.GetValue()
	if s.AuditMAC != nil {
		p.ValueHMAC = s.AuditMAC(value)
	}
	return p, nil // PutSecret sets p.Seal
}

var updatableFields = []string{"description", "category", "restart_required", "rotation_period", "next_rotation_time", "expire_time"}

func (s *SecretService) UpdateSecret(ctx context.Context, req *pb.UpdateSecretRequest) (*pb.UpdateSecretResponse, error) {
	sec := req.GetSecret()
	if sec == nil {
		return nil, invalidArg("secret", "required")
	}
	if err := checkKey("secret.key", sec.GetKey()); err != nil {
		return nil, err
	}
	expect, err := parseEtag("secret.etag", sec.GetEtag())
	if err != nil {
		return nil, err
	}
	if err := checkRequestID(req.GetRequestId()); err != nil {
		return nil, err
	}
	paths := req.GetUpdateMask().GetPaths()
	if len(paths) == 0 {
		return nil, invalidArg("update_mask", "required: name the fields to update ("+strings.Join(updatableFields, ", ")+") or \"*\"")
	}
	p := store.UpdateParams{Key: sec.GetKey(), Expect: expect}
	now := time.Now()
	updates := 0
	for _, path := range paths {
		// The gateway fills the mask from every field in a PATCH body; key
		// and etag name the target and the precondition, not updates, and
		// output-only fields are ignored (AIP-203), so a client can send
		// back what it read with one field changed.
		if path == "key" || path == "etag" || outputOnly(secretDescriptor, path) {
			continue
		}
		updates++
		all := path == "*"
		if all || path == "description" {
			if err := checkText("secret.description", sec.GetDescription(), maxDescription, true); err != nil {
				return nil, err
			}
			d := sec.GetDescription()
			p.Description = &d
		}
		if all || path == "category" {
			c, err := normalizeCategory("secret.category", sec.GetCategory())
			if err != nil {
				return nil, err
			}
			p.Category = &c
		}
		if all || path == "restart_required" {
			r := sec.GetRestartRequired()
			p.RestartRequired = &r
		}
		if all || path == "rotation_period" {
			d, err := rotationPeriod("secret.rotation_period", sec.GetRotationPeriod())
			if err != nil {
				return nil, err
			}
			p.RotationPeriod = &d
		}
		if all || path == "next_rotation_time" {
			t, err := s.scheduleUpdate(ctx, sec, "next_rotation_time", sec.GetNextRotationTime(), now)
			if err != nil {
				return nil, err
			}
			p.NextRotationTime = &t
		}
		if all || path == "expire_time" {
			t, err := s.scheduleUpdate(ctx, sec, "expire_time", sec.GetExpireTime(), now)
			if err != nil {
				return nil, err
			}
			p.ExpireTime = &t
		}
		if !all && !slices.Contains(updatableFields, path) {
			return nil, invalidArg("update_mask", "field "+path+" cannot be updated; updatable: "+strings.Join(updatableFields, ", "))
		}
	}
	if updates == 0 {
		return nil, invalidArg("update_mask", "nothing to update: name one of "+strings.Join(updatableFields, ", "))
	}
	res, err := s.Store.UpdateSecret(ctx, metaFor(ctx, "UpdateSecret", req.GetRequestId(), req), p)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &pb.UpdateSecretResponse{Secret: toSecret(res.Secret), Revision: res.Revision}, nil
}

// scheduleUpdate validates a time an update sets. A time in the past is
// accepted only when it is the stored one sent back unchanged (a due or
// expired secret edited from what was read).
func (s *SecretService) scheduleUpdate(ctx context.Context, sec *pb.Secret, name string, t *timestamppb.Timestamp, now time.Time) (time.Time, error) {
	field := "secret." + name
	v, err := scheduleTime(field, t, now)
	if err == nil || !t.IsValid() || !t.AsTime().Before(now) {
		return v, err
	}
	stored, _, gerr := s.Store.GetSecret(ctx, sec.GetKey())
	if gerr != nil {
		return time.Time{}, err
	}
	cur := stored.NextRotationTime
	if name == "expire_time" {
		cur = stored.ExpireTime
	}
	if cur.Equal(t.AsTime()) {
		return cur, nil
	}
	return time.Time{}, err
}

func (s *SecretService) ListSecretVersions(ctx context.Context, req *pb.ListSecretVersionsRequest) (*pb.ListSecretVersionsResponse, error) {
	if err := checkKey("key", req.GetKey()); err != nil {
		return nil, err
	}
	size, err := pageSize(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	tok, err := s.decodeToken(ctx, req.GetPageToken(), req.GetKey())
	if err != nil {
		return nil, err
	}
	versions, err := s.Store.ListVersions(ctx, req.GetKey(), tok.Before, size+1)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	out := &pb.ListSecretVersionsResponse{}
	if len(versions) > size {
		versions = versions[:size]
		out.NextPageToken = s.encodeToken(ctx, pageToken{Before: versions[size-1].Version, Filter: req.GetKey()})
	}
	for _, v := range versions {
		out.Versions = append(out.Versions, toVersion(v))
	}
	return out, nil
}

// versionChange is the shared body of Disable/Enable/DestroySecretVersion.
func (s *SecretService) versionChange(ctx context.Context, action string, req versionRequest, target store.VersionState) (store.WriteResult, error) {
	if err := checkKey("key", req.GetKey()); err != nil {
		return store.WriteResult{}, err
	}
	version, err := parseVersion("version", req.GetVersion())
	if err != nil {
		return store.WriteResult{}, err
	}
	expect, err := parseEtag("etag", req.GetEtag())
	if err != nil {
		return store.WriteResult{}, err
	}
	if err := checkRequestID(req.GetRequestId()); err != nil {
		return store.WriteResult{}, err
	}
	res, err := s.Store.SetVersionState(ctx, metaFor(ctx, action, req.GetRequestId(), req), req.GetKey(), version, expect, target)
	if err != nil {
		return store.WriteResult{}, s.fail(ctx, err)
	}
	return res, nil
}

type versionRequest interface {
	proto.Message
	GetKey() string
	GetVersion() string
	GetEtag() string
	GetRequestId() string
}

func isNotFound(err error) bool { return errors.Is(err, store.ErrNotFound) }

func (s *SecretService) DisableSecretVersion(ctx context.Context, req *pb.DisableSecretVersionRequest) (*pb.DisableSecretVersionResponse, error) {
	res, err := s.versionChange(ctx, "DisableSecretVersion", req, store.StateDisabled)
	if err != nil {
		return nil, err
	}
	return &pb.DisableSecretVersionResponse{Version: toVersion(*res.Version), Secret: toSecret(res.Secret), Revision: res.Revision}, nil
}

func (s *SecretService) EnableSecretVersion(ctx context.Context, req *pb.EnableSecretVersionRequest) (*pb.EnableSecretVersionResponse, error) {
	res, err := s.versionChange(ctx, "EnableSecretVersion", req, store.StateEnabled)
	if err != nil {
		return nil, err
	}
	return &pb.EnableSecretVersionResponse{Version: toVersion(*res.Version), Secret: toSecret(res.Secret), Revision: res.Revision}, nil
}

func (s *SecretService) DestroySecretVersion(ctx context.Context, req *pb.DestroySecretVersionRequest) (*pb.DestroySecretVersionResponse, error) {
	res, err := s.versionChange(ctx, "DestroySecretVersion", req, store.StateDestroyed)
	if err != nil {
		return nil, err
	}
	return &pb.DestroySecretVersionResponse{Version: toVersion(*res.Version), Secret: toSecret(res.Secret), Revision: res.Revision}, nil
}

func (s *SecretService) DeleteSecret(ctx context.Context, req *pb.DeleteSecretRequest) (*pb.DeleteSecretResponse, error) {
	if err := checkKey("key", req.GetKey()); err != nil {
		return nil, err
	}
	expect, err := parseEtag("etag", req.GetEtag())
	if err != nil {
		return nil, err
	}
	if err := checkRequestID(req.GetRequestId()); err != nil {
		return nil, err
	}
	res, err := s.Store.DeleteSecret(ctx, metaFor(ctx, "DeleteSecret", req.GetRequestId(), req), req.GetKey(), expect)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	return &pb.DeleteSecretResponse{Revision: res.Revision}, nil
}
