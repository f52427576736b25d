package api

import (
	"context"
	"errors"
	"log/slog"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"

	"github.com/orient-bot/secrets/server/seal"
	"github.com/orient-bot/secrets/server/store"
)

// ErrorDomain is the ErrorInfo domain of every error this service returns.
const ErrorDomain = "secrets.orient.dev"

// ErrorInfo reasons. Clients branch on these (and the code), never on the
// message text.
const (
	ReasonNotFound          = "NOT_FOUND"
	ReasonEtagMismatch      = "ETAG_MISMATCH"
	ReasonVersionNotEnabled = "VERSION_NOT_ENABLED"
	ReasonInvalidArgument   = "INVALID_ARGUMENT"
	ReasonDatabaseDown      = "DATABASE_UNAVAILABLE"
	ReasonKEKUnavailable    = "KEK_UNAVAILABLE"
	ReasonCiphertextCorrupt = "CIPHERTEXT_CORRUPT"
	ReasonAuditUnavailable  = "AUDIT_UNAVAILABLE"
	ReasonRequestIDReused   = "REQUEST_ID_REUSED"
	ReasonInternal          = "INTERNAL"
	ReasonResponseTooLarge  = "RESPONSE_TOO_LARGE"
	ReasonPermissionDenied  = "PERMISSION_DENIED"
	ReasonUnauthenticated   = "UNAUTHENTICATED"
	ReasonTooManyStreams    = "TOO_MANY_STREAMS"
	ReasonConsumerOwned     = "CONSUMER_OWNED"
	ReasonTooManyConsumers  = "TOO_MANY_CONSUMERS"
)

// Refusal is the answer to a call the policy refuses: UNAUTHENTICATED,
// PERMISSION_DENIED or RESOURCE_EXHAUSTED (too many streams), with its
// ErrorInfo reason.
func Refusal(code codes.Code, msg string) error {
	reason := ReasonPermissionDenied
	switch code {
	case codes.Unauthenticated:
		reason = ReasonUnauthenticated
	case codes.ResourceExhausted:
		reason = ReasonTooManyStreams
	}
	return withInfo(code, reason, msg)
}

func withInfo(code codes.Code, reason, msg string, more ...*errdetails.BadRequest) error {
	st := status.New(code, msg)
	details := []protoadapt.MessageV1{&errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain}}
	for _, m := range more {
		details = append(details, m)
	}
	if withDetails, err := st.WithDetails(details...); err == nil {
		st = withDetails
	}
	return st.Err()
}

// invalidArg is INVALID_ARGUMENT naming the offending field. desc must never
// contain a secret value.
func invalidArg(field, desc string) error {
	return withInfo(codes.InvalidArgument, ReasonInvalidArgument, field+": "+desc,
		&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: field, Description: desc}}})
}

// toStatus is the one place that maps errors to gRPC statuses. Store and seal
// errors carry keys and versions but never values, so their text is safe to
// return; anything unclassified is logged and returned as a generic INTERNAL.
func toStatus(ctx context.Context, log *slog.Logger, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, store.ErrNotFound):
		return withInfo(codes.NotFound, ReasonNotFound, err.Error())
	case errors.Is(err, store.ErrAlreadyExists):
		return withInfo(codes.AlreadyExists, "ALREADY_EXISTS", err.Error())
	case errors.Is(err, store.ErrEtagMismatch):
		return withInfo(codes.Aborted, ReasonEtagMismatch, err.Error()+"; read it again and retry")
	case errors.Is(err, store.ErrFailedPrecondition):
		return withInfo(codes.FailedPrecondition, ReasonVersionNotEnabled, err.Error())
	case errors.Is(err, store.ErrRequestIDReused):
		return withInfo(codes.InvalidArgument, ReasonRequestIDReused, "request_id: "+err.Error(),
			&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "request_id", Description: err.Error()}}})
	case errors.Is(err, store.ErrInvalidArgument):
		return withInfo(codes.InvalidArgument, ReasonInvalidArgument, err.Error())
	case errors.Is(err, store.ErrConsumerOwned):
		return withInfo(codes.PermissionDenied, ReasonConsumerOwned, err.Error())
	case errors.Is(err, store.ErrTooManyConsumers):
		return withInfo(codes.ResourceExhausted, ReasonTooManyConsumers, err.Error()+"; consumers unseen for a while are forgotten")
	case errors.Is(err, store.ErrUnavailable):
		log.WarnContext(ctx, "database unavailable", "error", err)
		return withInfo(codes.Unavailable, ReasonDatabaseDown, "database unavailable; retry later")
	case errors.Is(err, seal.ErrKEKUnavailable):
		log.WarnContext(ctx, "key-encryption key unavailable", "error", err)
		return withInfo(codes.Unavailable, ReasonKEKUnavailable, "key-encryption key unavailable; retry later")
	case errors.Is(err, seal.ErrCorrupt), errors.Is(err, seal.ErrUnknownKEK):
		log.ErrorContext(ctx, "stored ciphertext does not decrypt", "error", err)
		return withInfo(codes.DataLoss, ReasonCiphertextCorrupt, "stored value failed its integrity check; it was not returned")
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "request canceled")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded")
	}
	log.ErrorContext(ctx, "internal error", "error", err)
	return withInfo(codes.Internal, ReasonInternal, "internal error")
}

// StatusOf maps an error to its gRPC status, as the handlers do (for the
// server's interceptors).
func StatusOf(ctx context.Context, log *slog.Logger, err error) error { return toStatus(ctx, log, err) }
