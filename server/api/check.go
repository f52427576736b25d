package api

import (
	"context"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/server/providercheck"
	"github.com/orient-bot/secrets/server/store"
)

// A check that needs another secret that is not set answers
// ERROR_REASON_CHECK_NEEDS_SECRET
// (JIRA_EMAIL and JIRA_BASE_URL for JIRA_API_TOKEN).

// CheckSecret asks the provider whether the newest value of a catalog
// credential works. The value never leaves the server except to its own
// provider, and is never returned. The values read are audited (fail
// closed: no durable event, no call) before the provider is asked.
func (s *SecretService) CheckSecret(ctx context.Context, req *pb.CheckSecretRequest) (*pb.CheckSecretResponse, error) {
	key := req.GetKey()
	if err := checkKey("key", key); err != nil {
		return nil, err
	}
	provider, needs, ok := providercheck.Plan(key)
	if !ok {
		return nil, invalidArg("key", fmt.Sprintf("no provider check exists for %s; checks exist for %s", key, strings.Join(providercheck.Keys(), ", ")))
	}
	if s.Checker == nil {
		return nil, status.Error(codes.Unimplemented, "provider checks are not configured on this server")
	}
	keys := append([]string{key}, needs...)
	items, rev, err := s.batchAccess(ctx, keys, 0)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	values := make(map[string][]byte, len(items))
	defer func() {
		for _, v := range values {
			clear(v)
		}
	}()
	id := IdentityFrom(ctx)
	var version int64
	events := make([]store.AuditEvent, 0, len(items))
	for _, it := range items {
		err := it.Err
		if err == nil {
			values[it.Key], _, err = s.open(ctx, it.SealedVersion)
		}
		if err != nil {
			if it.Key == key {
				return nil, s.fail(ctx, err)
			}
			st := status.Convert(toStatus(ctx, s.Logger, err))
			if st.Code() == codes.NotFound || st.Code() == codes.FailedPrecondition {
				return nil, withInfo(codes.FailedPrecondition, pb.ErrorReason_ERROR_REASON_CHECK_NEEDS_SECRET,
					fmt.Sprintf("checking %s needs %s, which has no enabled value", key, it.Key))
			}
			return nil, st.Err()
		}
		ev := store.AuditEvent{Actor: id.Actor, Peer: id.Peer, Action: "CheckSecret", Key: it.Key, Version: it.Version,
			Outcome: store.OutcomeOK, Revision: rev, Detail: "read to check it with " + provider + " (sent to " + provider + " unless the check refused it before the call)"}
		if it.Key == key {
			version = it.Version
		} else {
			ev.Detail = "used to check " + key + " with " + provider
		}
		events = append(events, ev)
	}
	if err := s.Access.RecordAccess(ctx, events); err != nil {
		return nil, s.auditFailed(ctx, err)
	}
	start := time.Now()
	out := s.Checker.Check(ctx, key, values)
	s.Logger.InfoContext(ctx, "secret checked", "key", key, "version", version, "provider", out.Provider,
		"result", string(out.Result), "http_status", out.HTTPStatus, "reason", out.Reason, "took", time.Since(start))
	return &pb.CheckSecretResponse{Key: key, Version: version, Provider: out.Provider, Result: string(out.Result),
		HttpStatus: int32(out.HTTPStatus), Reason: out.Reason, CheckTime: timestamppb.New(start)}, nil
}
