package api

import (
	"context"
	"errors"
	"log/slog"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/server/auth"
	"github.com/orient-bot/secrets/server/seal"
	"github.com/orient-bot/secrets/server/store"
)

// ErrorDomain is the ErrorInfo domain of every error this service returns.
const ErrorDomain = "secrets.orient.dev"

// ReasonString is the ErrorInfo reason of r on the wire: the enum value's
// name without its "ERROR_REASON_" prefix (e.g. "ETAG_MISMATCH"). The
// ErrorReason enum in the proto is the one list of reasons; the client
// derives its names the same way.
func ReasonString(r pb.ErrorReason) string {
	return strings.TrimPrefix(r.String(), "ERROR_REASON_")
}

// Refusal is the answer to a call the policy refuses: UNAUTHENTICATED,
// PERMISSION_DENIED or RESOURCE_EXHAUSTED (too many streams), with its
// ErrorInfo reason.
func Refusal(code codes.Code, msg string) error {
	reason := pb.ErrorReason_ERROR_REASON_PERMISSION_DENIED
	switch code {
	case codes.Unauthenticated:
		reason = pb.ErrorReason_ERROR_REASON_UNAUTHENTICATED
	case codes.ResourceExhausted:
		reason = pb.ErrorReason_ERROR_REASON_TOO_MANY_STREAMS
	}
	return withInfo(code, reason, msg)
}

// Status builds a status with ErrorInfo{reason, ErrorDomain} and the given
// BadRequest details. Every non-OK answer of the service is made here.
func Status(code codes.Code, reason pb.ErrorReason, msg string, more ...*errdetails.BadRequest) *status.Status {
	st := status.New(code, msg)
	details := []protoadapt.MessageV1{&errdetails.ErrorInfo{Reason: ReasonString(reason), Domain: ErrorDomain}}
	for _, m := range more {
		details = append(details, m)
	}
	if withDetails, err := st.WithDetails(details...); err == nil {
		st = withDetails
	}
	return st
}

func withInfo(code codes.Code, reason pb.ErrorReason, msg string, more ...*errdetails.BadRequest) error {
	return Status(code, reason, msg, more...).Err()
}

// Unauthenticated is the answer to a call without valid credentials (one
// message for every cause, so a caller learns nothing about tokens).
func Unauthenticated(msg string) error {
	return withInfo(codes.Unauthenticated, pb.ErrorReason_ERROR_REASON_UNAUTHENTICATED, msg)
}

// PermissionDenied is the answer to a call that the caller's role or scope
// does not allow.
func PermissionDenied(msg string) error {
	return withInfo(codes.PermissionDenied, pb.ErrorReason_ERROR_REASON_PERMISSION_DENIED, msg)
}

// ReasonForCode is the reason given to a status that was made without one
// (by gRPC itself, an interceptor or the gateway's transport): the
// closest reason for its code.
func ReasonForCode(c codes.Code) pb.ErrorReason {
	switch c {
	case codes.NotFound:
		return pb.ErrorReason_ERROR_REASON_NOT_FOUND
	case codes.AlreadyExists:
		return pb.ErrorReason_ERROR_REASON_ALREADY_EXISTS
	case codes.InvalidArgument, codes.OutOfRange:
		return pb.ErrorReason_ERROR_REASON_INVALID_ARGUMENT
	case codes.ResourceExhausted:
		return pb.ErrorReason_ERROR_REASON_REQUEST_TOO_LARGE
	case codes.Unauthenticated:
		return pb.ErrorReason_ERROR_REASON_UNAUTHENTICATED
	case codes.PermissionDenied:
		return pb.ErrorReason_ERROR_REASON_PERMISSION_DENIED
	case codes.Unavailable:
		return pb.ErrorReason_ERROR_REASON_SERVER_SHUTTING_DOWN
	case codes.Canceled:
		return pb.ErrorReason_ERROR_REASON_CANCELLED
	case codes.DeadlineExceeded:
		return pb.ErrorReason_ERROR_REASON_DEADLINE_EXCEEDED
	case codes.Unimplemented:
		return pb.ErrorReason_ERROR_REASON_METHOD_NOT_ALLOWED
	}
	return pb.ErrorReason_ERROR_REASON_INTERNAL
}

// HasInfo reports whether st carries this service's ErrorInfo.
func HasInfo(st *status.Status) bool {
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.Domain == ErrorDomain {
			return true
		}
	}
	return false
}

// WithReason returns st with this service's ErrorInfo, adding the reason
// for its code when it has none (statuses made by gRPC, the gateway or an
// interceptor).
func WithReason(st *status.Status) *status.Status {
	if st.Code() == codes.OK || HasInfo(st) {
		return st
	}
	withDetails, err := st.WithDetails(&errdetails.ErrorInfo{Reason: ReasonString(ReasonForCode(st.Code())), Domain: ErrorDomain})
	if err != nil {
		return st
	}
	return withDetails
}

// invalidArg is INVALID_ARGUMENT naming the offending field. desc must never
// contain a secret value.
func invalidArg(field, desc string) error {
	return withInfo(codes.InvalidArgument, pb.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, field+": "+desc,
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
	var bad *auth.BadRequestError
	switch {
	case errors.As(err, &bad):
		return invalidArg(bad.Field, bad.Message)
	case errors.Is(err, store.ErrNotFound):
		return withInfo(codes.NotFound, pb.ErrorReason_ERROR_REASON_NOT_FOUND, err.Error())
	case errors.Is(err, store.ErrAlreadyExists):
		return withInfo(codes.AlreadyExists, pb.ErrorReason_ERROR_REASON_ALREADY_EXISTS, err.Error())
	case errors.Is(err, store.ErrEtagMismatch):
		return withInfo(codes.Aborted, pb.ErrorReason_ERROR_REASON_ETAG_MISMATCH, err.Error()+"; read it again and retry")
	case errors.Is(err, store.ErrFailedPrecondition):
		return withInfo(codes.FailedPrecondition, pb.ErrorReason_ERROR_REASON_VERSION_NOT_ENABLED, err.Error())
	case errors.Is(err, store.ErrRequestIDReused):
		return withInfo(codes.InvalidArgument, pb.ErrorReason_ERROR_REASON_REQUEST_ID_REUSED, "request_id: "+err.Error(),
			&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "request_id", Description: err.Error()}}})
	case errors.Is(err, store.ErrInvalidArgument):
		return withInfo(codes.InvalidArgument, pb.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, err.Error())
	case errors.Is(err, store.ErrConsumerOwned):
		return withInfo(codes.PermissionDenied, pb.ErrorReason_ERROR_REASON_CONSUMER_OWNED, err.Error())
	case errors.Is(err, store.ErrTooManyConsumers):
		return withInfo(codes.ResourceExhausted, pb.ErrorReason_ERROR_REASON_TOO_MANY_CONSUMERS, err.Error()+"; consumers unseen for a while are forgotten")
	case errors.Is(err, store.ErrUnavailable):
		log.WarnContext(ctx, "database unavailable", "error", err)
		return withInfo(codes.Unavailable, pb.ErrorReason_ERROR_REASON_DATABASE_UNAVAILABLE, "database unavailable; retry later")
	case errors.Is(err, seal.ErrKEKRefused):
		// Still UNAVAILABLE (the service cannot use its key now; it serves
		// again once the key is fixed), but the message says an operator is
		// needed. The KEK is named by its fingerprint, never its URL.
		id, _ := seal.FailedKEK(err)
		log.ErrorContext(ctx, "the KMS refused the key-encryption key", "kek", id, "error", err)
		return withInfo(codes.Unavailable, pb.ErrorReason_ERROR_REASON_KEK_UNAVAILABLE, "the KMS refused key-encryption key "+id+
			" (permission denied, key disabled or not found); an operator must fix the key or its permissions")
	case errors.Is(err, seal.ErrKEKUnavailable):
		log.WarnContext(ctx, "key-encryption key unavailable", "error", err)
		msg := "key-encryption key unavailable; retry later"
		if id, ok := seal.FailedKEK(err); ok {
			msg = "key-encryption key " + id + " unavailable (KMS unreachable); retry later"
		}
		return withInfo(codes.Unavailable, pb.ErrorReason_ERROR_REASON_KEK_UNAVAILABLE, msg)
	case errors.Is(err, seal.ErrUnknownKEK):
		// Most often a replica not given a KEK that another one wraps new
		// data keys with (a rotation rolled out to some replicas only); it
		// serves the value once configured, and another replica may now.
		// (A row edited to name a KEK nobody has lands here too.)
		id, named := seal.FailedKEK(err)
		log.ErrorContext(ctx, "a stored value's key-encryption key is not configured on this server", "kek", id, "error", err)
		msg := "the value's data key is wrapped by a key-encryption key this server is not configured with"
		if named {
			msg = "the value's data key is wrapped by key-encryption key " + id + ", which this server is not configured with"
		}
		return withInfo(codes.Unavailable, pb.ErrorReason_ERROR_REASON_KEK_UNAVAILABLE,
			msg+"; an operator must add it to SECRETS_KEK_URL (the value was not returned)")
	case errors.Is(err, seal.ErrCorrupt):
		log.ErrorContext(ctx, "stored ciphertext does not decrypt", "error", err)
		return withInfo(codes.DataLoss, pb.ErrorReason_ERROR_REASON_CIPHERTEXT_CORRUPT, "stored value failed its integrity check; it was not returned")
	case errors.Is(err, context.Canceled):
		return withInfo(codes.Canceled, pb.ErrorReason_ERROR_REASON_CANCELLED, "request canceled")
	case errors.Is(err, context.DeadlineExceeded):
		return withInfo(codes.DeadlineExceeded, pb.ErrorReason_ERROR_REASON_DEADLINE_EXCEEDED, "deadline exceeded")
	}
	log.ErrorContext(ctx, "internal error", "error", err)
	return withInfo(codes.Internal, pb.ErrorReason_ERROR_REASON_INTERNAL, "internal error")
}

// StatusOf maps an error to its gRPC status, as the handlers do (for the
// server's interceptors).
func StatusOf(ctx context.Context, log *slog.Logger, err error) error { return toStatus(ctx, log, err) }
