package client

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
)

// ErrorDomain is the ErrorInfo domain of the service's errors.
const ErrorDomain = "secrets.orient.dev"

// ErrorInfo reasons the service sends, from the ErrorReason enum of the
// proto (the one list, shared with the server): the value's name without
// "ERROR_REASON_". Branch on these (through errors.Is with the sentinels
// below, or Error.Reason), never on message text.
var (
	ReasonNotFound          = ReasonString(pb.ErrorReason_ERROR_REASON_NOT_FOUND)
	ReasonAlreadyExists     = ReasonString(pb.ErrorReason_ERROR_REASON_ALREADY_EXISTS)
	ReasonEtagMismatch      = ReasonString(pb.ErrorReason_ERROR_REASON_ETAG_MISMATCH)
	ReasonVersionNotEnabled = ReasonString(pb.ErrorReason_ERROR_REASON_VERSION_NOT_ENABLED)
	ReasonInvalidArgument   = ReasonString(pb.ErrorReason_ERROR_REASON_INVALID_ARGUMENT)
	ReasonRequestIDReused   = ReasonString(pb.ErrorReason_ERROR_REASON_REQUEST_ID_REUSED)
	ReasonMalformedRequest  = ReasonString(pb.ErrorReason_ERROR_REASON_MALFORMED_REQUEST)
	ReasonRequestTooLarge   = ReasonString(pb.ErrorReason_ERROR_REASON_REQUEST_TOO_LARGE)
	ReasonResponseTooLarge  = ReasonString(pb.ErrorReason_ERROR_REASON_RESPONSE_TOO_LARGE)
	ReasonUnauthenticated   = ReasonString(pb.ErrorReason_ERROR_REASON_UNAUTHENTICATED)
	ReasonPermissionDenied  = ReasonString(pb.ErrorReason_ERROR_REASON_PERMISSION_DENIED)
	ReasonDatabaseDown      = ReasonString(pb.ErrorReason_ERROR_REASON_DATABASE_UNAVAILABLE)
	ReasonKEKUnavailable    = ReasonString(pb.ErrorReason_ERROR_REASON_KEK_UNAVAILABLE)
	ReasonAuditUnavailable  = ReasonString(pb.ErrorReason_ERROR_REASON_AUDIT_UNAVAILABLE)
	ReasonShuttingDown      = ReasonString(pb.ErrorReason_ERROR_REASON_SERVER_SHUTTING_DOWN)
	ReasonCiphertextCorrupt = ReasonString(pb.ErrorReason_ERROR_REASON_CIPHERTEXT_CORRUPT)
	ReasonKEKInUse          = ReasonString(pb.ErrorReason_ERROR_REASON_KEK_IN_USE)
	ReasonRevisionCompacted = ReasonString(pb.ErrorReason_ERROR_REASON_REVISION_COMPACTED)
	ReasonRevisionAhead     = ReasonString(pb.ErrorReason_ERROR_REASON_REVISION_AHEAD)
	ReasonInternal          = ReasonString(pb.ErrorReason_ERROR_REASON_INTERNAL)
	ReasonTooManyStreams    = ReasonString(pb.ErrorReason_ERROR_REASON_TOO_MANY_STREAMS)
	ReasonConsumerOwned     = ReasonString(pb.ErrorReason_ERROR_REASON_CONSUMER_OWNED)
	ReasonTooManyConsumers  = ReasonString(pb.ErrorReason_ERROR_REASON_TOO_MANY_CONSUMERS)
)

// ReasonString is the wire form of an ErrorReason ("ETAG_MISMATCH"), for
// comparing with Error.Reason.
func ReasonString(r pb.ErrorReason) string {
	return strings.TrimPrefix(r.String(), "ERROR_REASON_")
}

// Sentinel errors. Every error a Client method returns for a failed call is
// an *Error, which matches the sentinel of its status code (and reason)
// under errors.Is.
var (
	ErrNotFound         = errors.New("secrets: not found")
	ErrConflict         = errors.New("secrets: conflict (stale etag or already exists)")
	ErrPermissionDenied = errors.New("secrets: permission denied")
	ErrUnauthenticated  = errors.New("secrets: unauthenticated")
	ErrInvalidArgument  = errors.New("secrets: invalid argument")
	// ErrVersionNotEnabled: the version is disabled or destroyed.
	ErrVersionNotEnabled = errors.New("secrets: version not enabled")
	// ErrUnavailable: the service (or its database or KMS) cannot be
	// reached now; retrying later may succeed.
	ErrUnavailable = errors.New("secrets: service unavailable")
	// ErrDataLoss: a stored value failed its integrity check.
	ErrDataLoss = errors.New("secrets: stored value corrupt")
	// ErrRelistRequired: a watch cannot resume from its revision (compacted,
	// or ahead of a restored database). List or load again, then watch from
	// the new revision.
	ErrRelistRequired = errors.New("secrets: watch revision unavailable, relist required")
	// ErrRevisionCompacted is the ErrRelistRequired case of a start revision
	// older than the retained change log.
	ErrRevisionCompacted = errors.New("secrets: watch revision compacted")
	// ErrNotConfigured: a key has no value in any source (see
	// *NotConfiguredError for where it looked).
	ErrNotConfigured = errors.New("secrets: not configured")
	// ErrStale: a cache lost the service for longer than its staleness
	// bound and fails closed.
	ErrStale = errors.New("secrets: cached values are stale (service unreachable too long)")
	// ErrNotCached: the key is not in the cache's set of keys or categories.
	ErrNotCached = errors.New("secrets: key not in cache")
)

// Error is a failed call's status: its gRPC code, the service's ErrorInfo
// reason, the message (which never contains a secret value) and the fields
// named by a BadRequest detail.
type Error struct {
	// Op is the RPC, e.g. "PutSecret".
	Op      string
	Code    codes.Code
	Reason  string
	Message string
	// Fields are the offending request fields of an INVALID_ARGUMENT.
	Fields []FieldViolation
}

// FieldViolation names a bad request field and why.
type FieldViolation struct {
	Field       string
	Description string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("secrets: ")
	if e.Op != "" {
		b.WriteString(e.Op + ": ")
	}
	b.WriteString(e.Message)
	b.WriteString(" (" + e.Code.String())
	if e.Reason != "" {
		b.WriteString(", " + e.Reason)
	}
	b.WriteString(")")
	return b.String()
}

// GRPCStatus lets status.FromError see through an *Error.
func (e *Error) GRPCStatus() *status.Status { return status.New(e.Code, e.Message) }

// Is matches the sentinel errors by code and reason.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrNotFound:
		return e.Code == codes.NotFound
	case ErrConflict:
		return e.Code == codes.Aborted || e.Code == codes.AlreadyExists
	case ErrPermissionDenied:
		return e.Code == codes.PermissionDenied
	case ErrUnauthenticated:
		return e.Code == codes.Unauthenticated
	case ErrInvalidArgument:
		return e.Code == codes.InvalidArgument
	case ErrVersionNotEnabled:
		return e.Code == codes.FailedPrecondition
	case ErrUnavailable:
		return e.Code == codes.Unavailable
	case ErrDataLoss:
		return e.Code == codes.DataLoss
	case ErrRelistRequired:
		return e.Code == codes.OutOfRange
	case ErrRevisionCompacted:
		return e.Code == codes.OutOfRange && e.Reason == ReasonRevisionCompacted
	case context.Canceled:
		return e.Code == codes.Canceled
	case context.DeadlineExceeded:
		return e.Code == codes.DeadlineExceeded
	}
	return false
}

// fromRPC converts an error of a generated stub into an *Error (nil stays
// nil; context errors from the caller's own context are returned as they
// are so errors.Is(err, context.Canceled) works).
func fromRPC(op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		if _, ok := status.FromError(err); !ok {
			return err
		}
	}
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("secrets: %s: %w", op, err)
	}
	return fromStatus(op, st)
}

func fromStatus(op string, st *status.Status) *Error {
	e := &Error{Op: op, Code: st.Code(), Message: st.Message()}
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			if d.GetDomain() == ErrorDomain {
				e.Reason = d.GetReason()
			}
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				e.Fields = append(e.Fields, FieldViolation{Field: v.GetField(), Description: v.GetDescription()})
			}
		}
	}
	return e
}

// Code returns the gRPC code of err (codes.OK for nil, codes.Unknown for
// errors that carry none).
func Code(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return status.Code(err)
}

// Reason returns the service's ErrorInfo reason of err, or "".
func Reason(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ""
}

// unreachable reports whether err means the service could not answer (as
// opposed to answering "no"): the cases where Resolve falls back and a
// cache keeps serving what it has.
func unreachable(err error) bool {
	if err == nil {
		return false
	}
	switch Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.ResourceExhausted:
		return true
	}
	return errors.Is(err, context.DeadlineExceeded)
}

// NotConfiguredError says that a key has no value anywhere, and where the
// resolver looked. It matches ErrNotConfigured.
type NotConfiguredError struct {
	Key string
	// Looked lists the places, in priority order, e.g. "secrets service
	// 127.0.0.1:9090", "environment variable SLACK_BOT_TOKEN".
	Looked []string
	// ServiceErr is why the service was not consulted, if it was not.
	ServiceErr error
}

func (e *NotConfiguredError) Error() string {
	msg := e.Key + " is not configured: looked in " + strings.Join(e.Looked, ", ")
	if e.ServiceErr != nil {
		msg += " (service unreachable: " + e.ServiceErr.Error() + ")"
	}
	return "secrets: " + msg
}

// Is matches ErrNotConfigured.
func (e *NotConfiguredError) Is(target error) bool { return target == ErrNotConfigured }

// Unwrap exposes the service error, if any.
func (e *NotConfiguredError) Unwrap() error { return e.ServiceErr }
