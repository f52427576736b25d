package api

import (
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/server/catalog"
	"github.com/orient-bot/secrets/server/store"
)

// etagOf renders a secret's revision as its etag.
func etagOf(rev int64) string { return "r" + strconv.FormatInt(rev, 10) }

// parseEtag returns nil for an empty etag (no compare-and-set).
func parseEtag(field, etag string) (*int64, error) {
	if etag == "" {
		return nil, nil
	}
	n, err := strconv.ParseInt(strings.TrimPrefix(etag, "r"), 10, 64)
	if !strings.HasPrefix(etag, "r") || err != nil || n <= 0 {
		return nil, invalidArg(field, "malformed etag; pass the etag a read returned")
	}
	return &n, nil
}

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func toSecret(s store.Secret) *pb.Secret {
	out := &pb.Secret{
		Key:             s.Key,
		Category:        s.Category,
		Description:     s.Description,
		RestartRequired: s.RestartRequired,
		Configured:      s.CurrentVersion > 0 && s.CurrentState == store.StateEnabled,
		CurrentVersion:  s.CurrentVersion,
		Etag:            etagOf(s.Revision),
		CreateTime:      ts(s.CreateTime),
		UpdateTime:      ts(s.UpdateTime),
		UpdatedBy:       s.UpdatedBy,
	}
	if s.RotationPeriod > 0 {
		out.RotationPeriod = durationpb.New(s.RotationPeriod)
	}
	out.NextRotationTime = ts(s.NextRotationTime)
	out.ExpireTime = ts(s.ExpireTime)
	out.RotationDue, out.Expired = s.RotationDue, s.Expired
	if e, ok := catalog.Lookup(s.Key); ok {
		out.Catalog = true
		out.ValuePrefix = e.Prefix
		out.SuggestedRotationPeriod = suggestedRotation(e)
	}
	return out
}

// suggestedRotation is the catalog's proposed period, nil when it has none.
func suggestedRotation(e catalog.Entry) *durationpb.Duration {
	if e.SuggestedRotation <= 0 {
		return nil
	}
	return durationpb.New(e.SuggestedRotation)
}

// emptySlot is a catalog key that has no stored secret.
func emptySlot(e catalog.Entry) *pb.Secret {
	return &pb.Secret{
		Key:             e.Key,
		Category:        e.Category,
		Description:     e.Description,
		RestartRequired: e.RestartRequired,
		Catalog:         true,
		ValuePrefix:     e.Prefix,

		SuggestedRotationPeriod: suggestedRotation(e),
	}
}

func toVersion(v store.Version) *pb.SecretVersion {
	return &pb.SecretVersion{
		Key:         v.Key,
		Version:     v.Version,
		State:       pb.VersionState(v.State),
		CreateTime:  ts(v.CreateTime),
		DestroyTime: ts(v.DestroyTime),
		CreatedBy:   v.CreatedBy,
		KekId:       v.KEKID,
	}
}

func toAuditEvent(e store.AuditEvent) *pb.AuditEvent {
	return &pb.AuditEvent{
		Sequence:  e.Sequence,
		Time:      ts(e.Time),
		Actor:     e.Actor,
		Action:    e.Action,
		Key:       e.Key,
		Version:   e.Version,
		Outcome:   e.Outcome,
		RequestId: e.RequestID,
		Peer:      e.Peer,
		Revision:  e.Revision,
		Detail:    e.Detail,
		ValueHmac: e.ValueHMAC,
		PrevHash:  e.PrevHash,
		Hash:      e.Hash,
	}
}
