package api

import (
	"context"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/orient-bot/secrets/server/auth"
	"google.golang.org/protobuf/proto"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/server/auditlog"
	"github.com/orient-bot/secrets/server/catalog"
	"github.com/orient-bot/secrets/server/store"
)

// AuditService implements the AuditService RPCs.
type AuditService struct {
	pb.UnimplementedAuditServiceServer
	Deps
	// Log verifies the hash chain.
	Log *auditlog.Log
	// Sequencer, if set, chains this replica's committed audit events
	// before a listing or a value match reads the chain, so a caller sees
	// its own events at once (other replicas' appear within the merge
	// delay).
	Sequencer interface {
		Flush(ctx context.Context) error
	}
}

// flush chains what this replica committed to the audit intake; a failure
// only means the answer may miss events still waiting (logged).
func (s *AuditService) flush(ctx context.Context) {
	if s.Sequencer == nil {
		return
	}
	if err := s.Sequencer.Flush(ctx); err != nil && ctx.Err() == nil {
		s.Logger.WarnContext(ctx, "audit sequencer flush", "error", err)
	}
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
	tok, err := s.decodeToken(ctx, req.GetPageToken(), filter)
	if err != nil {
		return nil, err
	}
	// A scoped auditor sees the events of the keys in its scope (judged by
	// each key's current category), and no event without a key. Pages are
	// cut after that filter, and by bytes as well as by count, so no page
	// can exceed the message limit whatever the events hold.
	scope := scopeOf(ctx)
	out := &pb.ListAuditEventsResponse{}
	bytes := 0
	f.Before, f.Limit = tok.Before, scanBatch(size, !scope.Empty())
	if tok.Before == 0 {
		s.flush(ctx)
	}
	for scanned := 0; ; {
		events, err := s.Store.ListAudit(ctx, f)
		if err != nil {
			return nil, toStatus(ctx, s.Logger, err)
		}
		visible, err := s.inScope(ctx, scope, events)
		if err != nil {
			return nil, toStatus(ctx, s.Logger, err)
		}
		for i, e := range events {
			if !visible[i] {
				continue
			}
			ev := toAuditEvent(e)
			n := proto.Size(ev)
			if len(out.Events) == size || (len(out.Events) > 0 && bytes+n > maxAuditPageBytes) {
				out.NextPageToken = s.encodeToken(ctx, pageToken{Before: out.Events[len(out.Events)-1].Sequence, Filter: filter})
				return out, nil
			}
			bytes += n
			out.Events = append(out.Events, ev)
		}
		if len(events) < f.Limit {
			return out, nil
		}
		f.Before = events[len(events)-1].Sequence
		if scanned += len(events); scanned >= maxScannedPerPage {
			out.NextPageToken = s.encodeToken(ctx, pageToken{Before: f.Before, Filter: filter})
			return out, nil
		}
	}
}

// maxAuditPageBytes bounds a page of audit events (the gRPC limit is 4 MiB).
const maxAuditPageBytes = 1 << 20

// inScope says which events a caller with scope may see.
func (s *AuditService) inScope(ctx context.Context, scope auth.Scope, events []store.AuditEvent) ([]bool, error) {
	out := make([]bool, len(events))
	if scope.Empty() {
		for i := range out {
			out[i] = true
		}
		return out, nil
	}
	// The current categories of the page's keys, in one query.
	var categories map[string]string
	if scope.NeedsCategory() {
		var keys []string
		for _, e := range events {
			if e.Key != "" && scope.AllowsKey(e.Key) {
				keys = append(keys, e.Key)
			}
		}
		var err error
		if categories, err = s.Store.CategoriesOf(ctx, keys); err != nil {
			return nil, err
		}
	}
	for i, e := range events {
		if e.Key == "" || !scope.AllowsKey(e.Key) {
			continue
		}
		if scope.NeedsCategory() {
			c, stored := categories[e.Key]
			if !stored {
				c = auth.DefaultCategory(e.Key)
			}
			if !scope.Allows(e.Key, c) {
				continue
			}
		}
		out[i] = true
	}
	return out, nil
}

// VerifyAuditLog walks the chain. Verification failures are answers, not
// errors: the response says where and why.
func (s *AuditService) VerifyAuditLog(ctx context.Context, req *pb.VerifyAuditLogRequest) (*pb.VerifyAuditLogResponse, error) {
	verify := s.Log.VerifyIncremental
	if req.GetFull() {
		verify = s.Log.Verify
	}
	res, err := verify(ctx)
	if err != nil {
		return nil, toStatus(ctx, s.Logger, err)
	}
	var verifiedFrom int64
	if res.From > res.ChainStart {
		verifiedFrom = res.From
	}
	out := &pb.VerifyAuditLogResponse{
		Intact: res.Intact, VerifiedThrough: res.VerifiedThrough, FirstBadSequence: res.FirstBad, Reason: res.Reason,
		EventsChecked: res.Events, CheckpointsChecked: int32(res.Checkpoints), Signed: len(s.Log.Keys) > 0,
		Anchored: res.Anchored, AnchoredThrough: res.AnchoredThrough, ExternalCheckpointsChecked: int32(res.External),
		Summary: res.Summary(), ArchivedThrough: res.ArchivedThrough, VerifiedFrom: verifiedFrom,
		EventsWaiting: res.Waiting,
	}
	if res.Waiting > 0 {
		out.OldestWaiting = durationpb.New(res.OldestWaiting)
	}
	return out, nil
}

// maxValueMatches bounds a MatchValue answer.
const maxValueMatches = 1000

// MatchValue says which writes, if any, stored a candidate value: its HMAC
// under the audit log's sealed key is compared with the value_hmac every
// write recorded. The candidate is never logged, stored or returned, nor is
// its HMAC; the call is audited (who asked, about which key, how many
// matches) before it answers, and fails closed when it cannot be.
func (s *AuditService) MatchValue(ctx context.Context, req *pb.MatchValueRequest) (*pb.MatchValueResponse, error) {
	value := req.GetValue()
	switch {
	case len(value) == 0:
		return nil, invalidArg("value", "required")
	case len(value) > catalog.MaxValueSize:
		return nil, invalidArg("value", fmt.Sprintf("must be at most %d bytes", catalog.MaxValueSize))
	}
	if req.GetKey() != "" {
		if err := checkKey("key", req.GetKey()); err != nil {
			return nil, err
		}
	}
	s.flush(ctx)
	mac := s.AuditMAC(value)
	events, err := s.Store.WritesWithValueMAC(ctx, mac, req.GetKey(), maxValueMatches)
	clear(mac)
	if err != nil {
		return nil, toStatus(ctx, s.Logger, err)
	}
	id := IdentityFrom(ctx)
	if err := s.Access.RecordAccess(ctx, []store.AuditEvent{{Actor: id.Actor, Peer: id.Peer, Action: "MatchValue",
		Key: req.GetKey(), Outcome: store.OutcomeOK, Detail: fmt.Sprintf("matches: %d", len(events))}}); err != nil {
		s.Logger.ErrorContext(ctx, "leak check not audited; answer withheld", "error", err)
		return nil, withInfo(codes.Unavailable, pb.ErrorReason_ERROR_REASON_AUDIT_UNAVAILABLE, "the check could not be audited; retry later")
	}
	out := &pb.MatchValueResponse{}
	for _, e := range events {
		out.Matches = append(out.Matches, &pb.ValueMatch{Key: e.Key, Version: e.Version, Sequence: e.Sequence,
			Time: timestamppb.New(e.Time), Actor: e.Actor})
	}
	return out, nil
}
