package api

import (
	"context"
	"errors"
	"fmt"
	"time"

	rpccode "google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/server/store"
)

// Limits of BatchAccessSecrets: a response must stay under gRPC's default
// 4 MiB receive limit, with room for framing.
const (
	maxBatchKeys  = 100
	maxBatchBytes = 3 << 20
)

// AccessSecretVersion returns a value once its access is durably audited.
func (s *SecretService) AccessSecretVersion(ctx context.Context, req *pb.AccessSecretVersionRequest) (*pb.AccessSecretVersionResponse, error) {
	if err := checkKey("key", req.GetKey()); err != nil {
		return nil, err
	}
	version, err := parseVersion("version", req.GetVersion())
	if err != nil {
		return nil, err
	}
	minRev, err := minRevision(req)
	if err != nil {
		return nil, err
	}
	sv, rev, err := s.accessVersion(ctx, req.GetKey(), version, minRev)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	value, crc, err := s.open(ctx, sv)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	id := IdentityFrom(ctx)
	if err := s.Access.RecordAccess(ctx, []store.AuditEvent{{
		Actor: id.Actor, Peer: id.Peer, Action: "AccessSecretVersion", Key: sv.Key, Version: sv.Version,
		Outcome: store.OutcomeOK, Revision: rev,
	}}); err != nil {
		clear(value)
		return nil, s.auditFailed(ctx, err)
	}
	return &pb.AccessSecretVersionResponse{Key: sv.Key, Version: sv.Version, Value: value, DataCrc32C: crc, Revision: rev}, nil
}

// minRevision validates a read's min_revision.
func minRevision(req interface{ GetMinRevision() int64 }) (int64, error) {
	if r := req.GetMinRevision(); r >= 0 {
		return r, nil
	}
	return 0, invalidArg("min_revision", "must not be negative")
}

// accessVersion reads a sealed version: the newest from the read cache
// when it can answer, else from the database (offering the answer to the
// cache) once the database has reached minRevision.
func (s *SecretService) accessVersion(ctx context.Context, key string, version, minRevision int64) (store.SealedVersion, int64, error) {
	if version == 0 && s.ReadCache != nil {
		if sv, rev, ok := s.ReadCache.Get(key, minRevision); ok {
			// The cache is kept exact by changes; an expiry is no change,
			// so the copy carries the time and is refused after it.
			return sv, rev, sv.ExpiredAt(time.Now())
		}
	}
	if err := s.reachRevision(ctx, minRevision); err != nil {
		return store.SealedVersion{}, 0, err
	}
	sv, rev, err := s.Store.AccessVersion(ctx, key, version)
	if err == nil && version == 0 && s.ReadCache != nil {
		s.ReadCache.Put(key, sv, rev)
	}
	return sv, rev, err
}

// batchAccess reads the newest versions of keys at one revision: from the
// read cache when it holds them all, else from the database once it has
// reached minRevision.
func (s *SecretService) batchAccess(ctx context.Context, keys []string, minRevision int64) ([]store.BatchItem, int64, error) {
	if s.ReadCache != nil {
		if svs, rev, ok := s.ReadCache.GetAll(keys, minRevision); ok {
			items := make([]store.BatchItem, len(svs))
			now := time.Now()
			for i, sv := range svs {
				items[i] = store.BatchItem{SealedVersion: sv, Err: sv.ExpiredAt(now)}
			}
			return items, rev, nil
		}
	}
	if err := s.reachRevision(ctx, minRevision); err != nil {
		return nil, 0, err
	}
	items, rev, err := s.Store.BatchAccess(ctx, keys)
	if err == nil && s.ReadCache != nil {
		for _, it := range items {
			if it.Err == nil {
				s.ReadCache.Put(it.Key, it.SealedVersion, rev)
			}
		}
	}
	return items, rev, err
}

// DefaultMinRevisionWait bounds how long a read waits for a min_revision
// the database has not reached yet.
const DefaultMinRevisionWait = 2 * time.Second

// answerMargin is the time reachRevision leaves, before the request's
// deadline, to answer REVISION_AHEAD instead of DEADLINE_EXCEEDED.
const answerMargin = 150 * time.Millisecond

// reachRevision returns once the database's revision is at least
// minRevision, so a read never answers older than a revision the caller
// has seen. A revision ahead of the database (a write not yet visible
// where this replica reads, or a database restored from a backup) is
// waited for within the request's deadline, at most MinRevisionWait; then
// it is OUT_OF_RANGE with reason REVISION_AHEAD, never an older value.
//
// The wait ends on time also when the database is slow to answer (a loaded
// replica), 150 ms before the caller's deadline rather than
// DEADLINE_EXCEEDED after it: REVISION_AHEAD if a probe found the database
// behind, UNAVAILABLE (DATABASE_UNAVAILABLE, retry) if none answered. A
// probe still running then is not interrupted (pgx closes a connection
// whose query is cancelled, which a loaded database can least afford); it
// ends on its own, within minRevisionProbeTimeout.
func (s *SecretService) reachRevision(ctx context.Context, minRevision int64) error {
	if minRevision == 0 {
		return nil
	}
	bound := s.MinRevisionWait
	if bound <= 0 {
		bound = DefaultMinRevisionWait
	}
	deadline := time.Now().Add(bound)
	if d, ok := ctx.Deadline(); ok && d.Add(-answerMargin).Before(deadline) {
		// Leave time to answer before the caller gives up.
		deadline = d.Add(-answerMargin)
	}
	wctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	var rev int64
	answered := false
	pause := 10 * time.Millisecond
	for {
		// With less time left than the margin, the first probe may use it
		// all: a reached revision is never answered AHEAD.
		limit := wctx
		if !answered && wctx.Err() != nil {
			limit = ctx
		}
		r, err := s.probeRevision(ctx, limit)
		switch {
		case err == nil:
			rev, answered = r, true
		case ctx.Err() != nil:
			return ctx.Err()
		case limit.Err() == nil:
			return err // the database's own error
		case !answered:
			return withInfo(codes.Unavailable, pb.ErrorReason_ERROR_REASON_DATABASE_UNAVAILABLE,
				fmt.Sprintf("the database did not say in time whether it has reached min_revision %d; retry later", minRevision))
		default:
			return revisionAhead(minRevision, rev)
		}
		if rev >= minRevision {
			return nil
		}
		t := time.NewTimer(pause)
		select {
		case <-wctx.Done():
			t.Stop()
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return revisionAhead(minRevision, rev)
		case <-t.C:
		}
		pause = min(2*pause, 200*time.Millisecond)
	}
}

// minRevisionProbeTimeout bounds a revision probe left running after its
// read stopped waiting for it.
const minRevisionProbeTimeout = 10 * time.Second

// probeRevision reads the database's revision, waiting at most until limit
// ends (then limit's error); the query itself runs on, bounded by
// minRevisionProbeTimeout, not by the caller.
func (s *SecretService) probeRevision(ctx, limit context.Context) (int64, error) {
	type answer struct {
		rev int64
		err error
	}
	ch := make(chan answer, 1)
	go func() {
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), minRevisionProbeTimeout)
		defer cancel()
		r, err := s.Consumers.Revision(pctx)
		ch <- answer{r, err}
	}()
	select {
	case a := <-ch:
		return a.rev, a.err
	case <-limit.Done():
		return 0, limit.Err()
	}
}

func revisionAhead(minRevision, rev int64) error {
	return withInfo(codes.OutOfRange, pb.ErrorReason_ERROR_REASON_REVISION_AHEAD,
		fmt.Sprintf("min_revision %d is ahead of the current revision %d; retry later, or read without it after a database restore", minRevision, rev))
}

// Outcome is the audit outcome of a status code: "OK" or its canonical name
// (e.g. "NOT_FOUND").
func Outcome(c codes.Code) string { return rpccode.Code(c).String() }

// auditFailed fails an access closed: no durable audit event, no value.
func (s *SecretService) auditFailed(ctx context.Context, err error) error {
	s.Logger.ErrorContext(ctx, "access audit not recorded; value withheld", "error", err)
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return toStatus(ctx, s.Logger, err)
	}
	return withInfo(codes.Unavailable, pb.ErrorReason_ERROR_REASON_AUDIT_UNAVAILABLE, "access could not be audited; value withheld, retry later")
}

// BatchAccessSecrets reads several latest values in one snapshot. Keys that
// cannot be read carry their own error; the call fails only for bad input,
// an oversized response, or when the accesses cannot be audited.
func (s *SecretService) BatchAccessSecrets(ctx context.Context, req *pb.BatchAccessSecretsRequest) (*pb.BatchAccessSecretsResponse, error) {
	keys := req.GetKeys()
	if len(keys) == 0 {
		return nil, invalidArg("keys", "at least one key is required")
	}
	if len(keys) > maxBatchKeys {
		return nil, invalidArg("keys", fmt.Sprintf("at most %d keys per call, got %d", maxBatchKeys, len(keys)))
	}
	seen := make(map[string]bool, len(keys))
	for i, k := range keys {
		field := fmt.Sprintf("keys[%d]", i)
		if err := checkKey(field, k); err != nil {
			return nil, err
		}
		if seen[k] {
			return nil, invalidArg(field, "duplicate key "+k)
		}
		seen[k] = true
	}
	minRev, err := minRevision(req)
	if err != nil {
		return nil, err
	}
	items, rev, err := s.batchAccess(ctx, keys, minRev)
	if err != nil {
		return nil, s.fail(ctx, err)
	}
	id := IdentityFrom(ctx)
	out := &pb.BatchAccessSecretsResponse{Revision: rev, Results: make([]*pb.BatchAccessResult, len(items))}
	events := make([]store.AuditEvent, 0, len(items))
	total := 0
	for i, it := range items {
		r := &pb.BatchAccessResult{Key: it.Key}
		err := it.Err
		if err == nil {
			r.Value, r.DataCrc32C, err = s.open(ctx, it.SealedVersion)
			r.Version = it.Version
		}
		ev := store.AuditEvent{Actor: id.Actor, Peer: id.Peer, Action: "BatchAccessSecrets", Key: it.Key, Version: it.Version, Outcome: store.OutcomeOK, Revision: rev}
		if err != nil {
			st := status.Convert(toStatus(ctx, s.Logger, err))
			r.Error = st.Proto()
			r.Value, r.Version, r.DataCrc32C = nil, 0, 0
			ev.Outcome = Outcome(st.Code())
		}
		total += len(r.Value) + len(r.Key) + 32
		if total > maxBatchBytes {
			clearResults(out.Results)
			clear(r.Value)
			return nil, withInfo(codes.InvalidArgument, pb.ErrorReason_ERROR_REASON_RESPONSE_TOO_LARGE,
				fmt.Sprintf("keys: the values exceed the %d MiB response limit; ask for fewer keys per call", maxBatchBytes>>20))
		}
		out.Results[i] = r
		events = append(events, ev)
	}
	if err := s.Access.RecordAccess(ctx, events); err != nil {
		clearResults(out.Results)
		return nil, s.auditFailed(ctx, err)
	}
	return out, nil
}

func (s *SecretService) open(ctx context.Context, sv store.SealedVersion) ([]byte, int64, error) {
	value, crc, err := s.Keyring.Open(ctx, sv.Key, sv.Version, toSeal(sv.Sealed))
	return value, int64(crc), err
}

// clearResults wipes values that will not be sent (best effort).
func clearResults(rs []*pb.BatchAccessResult) {
	for _, r := range rs {
		if r != nil {
			clear(r.Value)
		}
	}
}
