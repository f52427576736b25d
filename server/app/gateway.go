package app

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/server/api"
)

// MaxBodyBytes bounds a REST request body: a 64 KiB value is ~87 KiB in
// base64, plus the rest of the request.
const MaxBodyBytes = 256 << 10

// BodyReadTimeout bounds how long a REST request body may take to arrive.
const BodyReadTimeout = 30 * time.Second

// newGateway builds the REST/JSON gateway. It dials the gRPC listener like
// any client, so every interceptor runs once and streaming works.
func newGateway(ctx context.Context, grpcAddr, gatewaySecret string, tlsConf *tls.Config, log *slog.Logger) (http.Handler, *grpc.ClientConn, error) {
	mux := runtime.NewServeMux(
		runtime.WithMarshalerOption(runtime.MIMEWildcard, &runtime.HTTPBodyMarshaler{Marshaler: &runtime.JSONPb{
			MarshalOptions: protojson.MarshalOptions{EmitUnpopulated: true},
			// A misspelled field must fail, not vanish: a dropped "etag"
			// would turn a compare-and-set into a blind overwrite.
			UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
		}}),
		runtime.WithMetadata(func(context.Context, *http.Request) metadata.MD {
			return metadata.Pairs(gatewayHeader, gatewaySecret)
		}),
		runtime.WithErrorHandler(gatewayErrorHandler(log)),
		// No X-HTTP-Method-Override: a POST must not become a DELETE.
		runtime.WithDisablePathLengthFallback(),
	)
	creds := insecure.NewCredentials()
	if tlsConf != nil {
		creds = credentials.NewTLS(tlsConf)
	}
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, nil, fmt.Errorf("gateway: dial %s: %w", grpcAddr, err)
	}
	for _, register := range []func(context.Context, *runtime.ServeMux, *grpc.ClientConn) error{
		pb.RegisterSecretServiceHandler,
		pb.RegisterProviderServiceHandler,
		pb.RegisterAuditServiceHandler,
		pb.RegisterTokenServiceHandler,
		pb.RegisterKeyServiceHandler,
	} {
		if err := register(ctx, mux, conn); err != nil {
			conn.Close()
			return nil, nil, fmt.Errorf("gateway: %w", err)
		}
	}
	return limitBody(mux), conn, nil
}

// limitBody refuses bodies over MaxBodyBytes with 413 before reading them
// (declared length) or as soon as the limit is crossed (chunked bodies).
func limitBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > MaxBodyBytes {
			writeJSONError(w, http.StatusRequestEntityTooLarge, codes.InvalidArgument,
				fmt.Sprintf("request body over the %d KiB limit", MaxBodyBytes>>10))
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
		if r.ContentLength != 0 {
			// A body must arrive in time: a client that stalls mid-body
			// (before any token is checked) must not hold a connection and
			// a handler forever. Bodiless requests — the watch stream —
			// keep no read deadline, so streaming is not cut off.
			rc := http.NewResponseController(w)
			if rc.SetReadDeadline(time.Now().Add(BodyReadTimeout)) == nil {
				r.Body = &deadlineBody{ReadCloser: r.Body, rc: rc}
			}
		}
		next.ServeHTTP(w, r)
	})
}

// deadlineBody lifts the body's read deadline once the body is in: the
// connection's background read (which notices a client going away) must not
// time out and cancel a long call such as VerifyAuditLog.
type deadlineBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	done bool
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF && !b.done {
		b.done = true
		_ = b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}

func writeJSONError(w http.ResponseWriter, httpStatus int, code codes.Code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(httpStatus)
	st := status.New(code, msg)
	b, _ := protojson.Marshal(st.Proto())
	_, _ = w.Write(b)
}

var (
	unknownFieldRe = regexp.MustCompile(`unknown field "([A-Za-z0-9_]{1,64})"`)
	badValueRe     = regexp.MustCompile(`invalid value for ([a-z0-9]{1,16}) field ([A-Za-z0-9_]{1,64})`)
	badTypeRe      = regexp.MustCompile(`field ([A-Za-z0-9_.]{1,64})`)
)

// gatewayErrorHandler is the default handler, except for errors the gateway
// raises itself while decoding a request: their text can quote the input
// (an invalid base64 value, say), so it is replaced by one that names the
// field only. Errors from our handlers carry ErrorInfo and pass unchanged.
func gatewayErrorHandler(log *slog.Logger) runtime.ErrorHandlerFunc {
	return func(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
		st := status.Convert(err)
		if st.Code() == codes.InvalidArgument && !fromService(st) {
			msg := st.Message()
			if strings.Contains(msg, "request body too large") {
				writeJSONError(w, http.StatusRequestEntityTooLarge, codes.InvalidArgument,
					fmt.Sprintf("request body over the %d KiB limit", MaxBodyBytes>>10))
				return
			}
			if strings.Contains(msg, "i/o timeout") {
				writeJSONError(w, http.StatusRequestTimeout, codes.DeadlineExceeded,
					fmt.Sprintf("request body not received within %v", BodyReadTimeout))
				return
			}
			msg, field := sanitizeDecodeError(msg)
			st := status.New(codes.InvalidArgument, msg)
			if field != "" {
				if d, derr := st.WithDetails(&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: field, Description: msg}}}); derr == nil {
					st = d
				}
			}
			err = st.Err()
		}
		runtime.DefaultHTTPErrorHandler(ctx, mux, m, w, r, err)
	}
}

func fromService(st *status.Status) bool {
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.Domain == api.ErrorDomain {
			return true
		}
	}
	return false
}

// sanitizeDecodeError rewrites a decoding error without the input it may
// quote, and names the field concerned when it can.
func sanitizeDecodeError(msg string) (string, string) {
	if m := unknownFieldRe.FindStringSubmatch(msg); m != nil {
		return fmt.Sprintf("malformed request: unknown field %q", m[1]), m[1]
	}
	if m := badValueRe.FindStringSubmatch(msg); m != nil {
		return fmt.Sprintf("malformed request: field %s: invalid %s value", m[2], m[1]), m[2]
	}
	if strings.Contains(msg, "syntax error") || strings.Contains(msg, "unexpected token") || strings.Contains(msg, "unexpected EOF") {
		return "malformed request: body is not valid JSON", ""
	}
	if m := badTypeRe.FindStringSubmatch(msg); m != nil {
		return fmt.Sprintf("malformed request: field %s has the wrong type or value", m[1]), m[1]
	}
	return "malformed request: the body or parameters do not match the request type", ""
}
