package api

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/server/kek"
	"github.com/orient-bot/secrets/server/store"
)

// KEKRotator runs KEK rotations on this replica.
type KEKRotator interface {
	// Start starts a background rotation, or joins the running one
	// (started=false); the rotation outlives ctx.
	Start(ctx context.Context, meta store.Meta, batchSize int) (started bool, err error)
	// Progress is the running or last rotation's progress.
	Progress() kek.Progress
	// Status counts the data keys each KEK wraps.
	Status(ctx context.Context) ([]kek.KEKStatus, error)
}

// KeyService implements the KeyService RPCs (admin only, enforced by the
// server's interceptors).
type KeyService struct {
	pb.UnimplementedKeyServiceServer
	Deps
	Rotator KEKRotator
}

// RotateKEK starts or joins a rotation and returns its progress.
func (s *KeyService) RotateKEK(ctx context.Context, req *pb.RotateKEKRequest) (*pb.RotateKEKResponse, error) {
	if n := req.GetBatchSize(); n < 0 || n > kek.MaxBatchSize {
		return nil, invalidArg("batch_size", fmt.Sprintf("must be between 0 (the default, %d) and %d", kek.DefaultBatchSize, kek.MaxBatchSize))
	}
	meta := metaFor(ctx, "RotateKEK", "", nil)
	started, err := s.Rotator.Start(ctx, meta, int(req.GetBatchSize()))
	if errors.Is(err, kek.ErrKEKInUse) {
		// The refusal is audited like any failed write (best effort).
		_ = s.Store.RecordFailure(ctx, meta, "", 0, Outcome(codes.FailedPrecondition), err.Error())
		return nil, withInfo(codes.FailedPrecondition, pb.ErrorReason_ERROR_REASON_KEK_IN_USE, err.Error())
	}
	if err != nil {
		return nil, toStatus(ctx, s.Logger, err)
	}
	return &pb.RotateKEKResponse{Started: started, Progress: toRotationProgress(s.Rotator.Progress())}, nil
}

// GetKEKStatus counts data keys per KEK and reports the rotation's progress.
func (s *KeyService) GetKEKStatus(ctx context.Context, _ *pb.GetKEKStatusRequest) (*pb.GetKEKStatusResponse, error) {
	// The progress first, then the counts: a rotation that shows as over
	// ended before the counts were read, so they show its result (read the
	// other way round, a rotation ending in between showed as over with
	// the counts from before it).
	progress := s.Rotator.Progress()
	status, err := s.Rotator.Status(ctx)
	if err != nil {
		return nil, toStatus(ctx, s.Logger, err)
	}
	out := &pb.GetKEKStatusResponse{Rotation: toRotationProgress(progress)}
	for _, k := range status {
		out.Keks = append(out.Keks, &pb.KEKInfo{KekId: k.ID, DataKeys: k.DataKeys, Primary: k.Primary, Configured: k.Configured})
	}
	return out, nil
}

func toRotationProgress(p kek.Progress) *pb.KEKRotationProgress {
	out := &pb.KEKRotationProgress{
		Running:       p.Running,
		Done:          p.Done,
		Total:         p.Total,
		RatePerSecond: p.Rate,
		PrimaryKekId:  p.PrimaryID,
	}
	if p.Running && p.ETA >= 0 {
		out.Eta = durationpb.New(p.ETA)
	}
	if p.Err != nil {
		// Rotation errors name KEK ids, keys and versions, never a value or
		// key material.
		out.LastError = p.Err.Error()
	}
	if !p.StartTime.IsZero() {
		out.StartTime = timestamppb.New(p.StartTime)
	}
	if !p.EndTime.IsZero() {
		out.EndTime = timestamppb.New(p.EndTime)
	}
	return out
}
