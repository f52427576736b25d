package api

import (
	"context"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/server/auditlog"
	"github.com/orient-bot/secrets/server/store"
)

// AuditService implements the AuditService RPCs.
type AuditService struct {
	pb.UnimplementedAuditServiceServer
	Deps
	// Log verifies the hash chain.
	Log *auditlog.Log
}

func (s *AuditService) ListAuditEvents(ctx context.Context, req *pb.ListAuditEventsRequest) (*pb.ListAuditEventsResponse, error) {
	if req.GetKey() != "" {
		if err := checkKey("key", req.GetKey()); err != nil {
			return nil, err
		}
	}
	if err := checkText("actor", req.GetActor(), 256, false); err != nil {
		return nil, err
	}
	if err := checkText("action", req.GetAction(), 64, false); err != nil {
		return nil, err
	}
	f := store.AuditFilter{Key: req.GetKey(), Actor: req.GetActor(), Action: req.GetAction()}
	if req.StartTime != nil {
		if err := req.GetStartTime().CheckValid(); err != nil {
			return nil, invalidArg("start_time", "not a valid timestamp")
		}
		f.Start = req.GetStartTime().AsTime()
	}
	if req.EndTime != nil {
		if err := req.GetEndTime().CheckValid(); err != nil {
			return nil, invalidArg("end_time", "not a valid timestamp")
		}
		f.End = req.GetEndTime().AsTime()
	}
	if !f.Start.IsZero() && !f.End.IsZero() && !f.Start.Before(f.End) {
		return nil, invalidArg("end_time", "must be after start_time")
	}
	size, err := pageSize(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	filter := filterKey(f.Key, f.Actor, f.Action, f.Start.String(), f.End.String())
	tok, err := decodeToken(req.GetPageToken(), filter)
	if err != nil {
		return nil, err
	}
	f.Before, f.Limit = tok.Before, size+1
	events, err := s.Store.ListAudit(ctx, f)
	if err != nil {
		return nil, toStatus(ctx, s.Logger, err)
	}
	out := &pb.ListAuditEventsResponse{}
	if len(events) > size {
		events = events[:size]
		out.NextPageToken = encodeToken(pageToken{Before: events[size-1].Sequence, Filter: filter})
	}
	for _, e := range events {
		out.Events = append(out.Events, toAuditEvent(e))
	}
	return out, nil
}

// VerifyAuditLog walks the chain. Verification failures are answers, not
// errors: the response says where and why.
func (s *AuditService) VerifyAuditLog(ctx context.Context, _ *pb.VerifyAuditLogRequest) (*pb.VerifyAuditLogResponse, error) {
	res, err := s.Log.Verify(ctx)
	if err != nil {
		return nil, toStatus(ctx, s.Logger, err)
	}
	return &pb.VerifyAuditLogResponse{
		Intact: res.Intact, VerifiedThrough: res.VerifiedThrough, FirstBadSequence: res.FirstBad, Reason: res.Reason,
		EventsChecked: res.Events, CheckpointsChecked: int32(res.Checkpoints), Signed: len(s.Log.Keys) > 0,
	}, nil
}
