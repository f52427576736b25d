package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/grpc-ecosystem/grpc-gateway/v2/utilities"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/server/api"
)

// MaxBodyBytes bounds a REST request body: a 64 KiB value is ~87 KiB in
// base64, plus the rest of the request.
const MaxBodyBytes = 256 << 10

// BodyReadTimeout bounds how long a REST request body may take to arrive.
const BodyReadTimeout = 30 * time.Second

// newGatewayMarshaler is the gateway's JSON codec. Unset message fields are
// left out (never null: the OpenAPI document types them as objects and
// strings), while scalars are always present, zero or not.
func newGatewayMarshaler() runtime.Marshaler {
	return ndjsonStreams{&runtime.HTTPBodyMarshaler{Marshaler: &runtime.JSONPb{
		MarshalOptions: protojson.MarshalOptions{EmitDefaultValues: true},
		// A misspelled field must fail, not vanish: a dropped "etag"
		// would turn a compare-and-set into a blind overwrite.
		UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
	}}}
}

// ndjsonStreams labels server streams (the watch) as what they are:
// newline-delimited JSON, one {"result": …} object a line, as the OpenAPI
// document declares.
type ndjsonStreams struct{ runtime.Marshaler }

// StreamContentType implements runtime.StreamContentType.
func (ndjsonStreams) StreamContentType(any) string { return "application/x-ndjson" }

// gatewayBuffer is the in-process connection's buffer in each direction.
const gatewayBuffer = 1 << 20

// newGateway builds the REST/JSON gateway. Its unary calls go through
// inProcess (the server's handlers and interceptors, called directly); its
// streams through a gRPC connection that dial opens to the server's
// in-process listener (no socket). Either way every interceptor runs once.
func newGateway(ctx context.Context, dial func(context.Context) (net.Conn, error), inProcess func(*grpc.ClientConn) grpc.ClientConnInterface, gatewaySecret string, tlsConf *tls.Config, log *slog.Logger, dialOpts ...grpc.DialOption) (http.Handler, *grpc.ClientConn, error) {
	var mux *runtime.ServeMux
	mux = runtime.NewServeMux(
		runtime.WithMarshalerOption(runtime.MIMEWildcard, newGatewayMarshaler()),
		// A body field the path binds must hold the path's value: the
		// check decodes the body as the handler will (same marshaler).
		runtime.WithMiddlewares(pathBoundBodies(func(r *http.Request) runtime.Marshaler {
			in, _ := runtime.MarshalerForRequest(mux, r)
			return in
		})),
		runtime.WithMetadata(func(context.Context, *http.Request) metadata.MD {
			return metadata.Pairs(gatewayHeader, gatewaySecret)
		}),
		runtime.WithErrorHandler(gatewayErrorHandler(log)),
		runtime.WithStreamErrorHandler(func(ctx context.Context, err error) *status.Status {
			st := api.WithReason(status.Convert(err))
			if f, ok := ctx.Value(streamFailureKey{}).(*streamFailure); ok && f.st == nil {
				f.st = st
			}
			return st
		}),
		runtime.WithRoutingErrorHandler(routingErrorHandler),
		// gRPC metadata is the service's business: none of it becomes an
		// HTTP header or trailer (no Grpc-Metadata-*).
		runtime.WithOutgoingHeaderMatcher(func(string) (string, bool) { return "", false }),
		runtime.WithOutgoingTrailerMatcher(func(string) (string, bool) { return "", false }),
		// No X-HTTP-Method-Override: a POST must not become a DELETE.
		runtime.WithDisablePathLengthFallback(),
		// The strict query parameter parser is set once, in init.
	)
	creds := insecure.NewCredentials()
	if tlsConf != nil {
		creds = credentials.NewTLS(tlsConf)
	}
	conn, err := grpc.NewClient("passthrough:///secretsd", append([]grpc.DialOption{grpc.WithTransportCredentials(creds),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return dial(ctx) })}, dialOpts...)...)
	if err != nil {
		return nil, nil, fmt.Errorf("gateway: %w", err)
	}
	cc := inProcess(conn)
	for _, register := range []func() error{
		func() error { return pb.RegisterSecretServiceHandlerClient(ctx, mux, pb.NewSecretServiceClient(cc)) },
		func() error {
			return pb.RegisterProviderServiceHandlerClient(ctx, mux, pb.NewProviderServiceClient(cc))
		},
		func() error { return pb.RegisterAuditServiceHandlerClient(ctx, mux, pb.NewAuditServiceClient(cc)) },
		func() error { return pb.RegisterTokenServiceHandlerClient(ctx, mux, pb.NewTokenServiceClient(cc)) },
		func() error { return pb.RegisterKeyServiceHandlerClient(ctx, mux, pb.NewKeyServiceClient(cc)) },
	} {
		if err := register(); err != nil {
			conn.Close()
			return nil, nil, fmt.Errorf("gateway: %w", err)
		}
	}
	return strictRequest(limitBody(mux)), conn, nil
}

// conditionalWriteHeaders are the HTTP preconditions this API does not
// evaluate on writes: its compare-and-set is the resource's etag field, in
// the body (PUT, PATCH, POST) or ?etag= (DELETE). Refusing them is honest;
// ignoring them would make a conditional write a blind one.
var conditionalWriteHeaders = []string{"If-Match", "If-Unmodified-Since", "If-None-Match"}

// strictRequest refuses, before any decoding, what the gateway would
// otherwise silently ignore: a query parameter on a route whose body is
// the whole request (body "*") or whose request the path fills, and HTTP
// preconditions on writes. (A body field that the path binds, with another
// value, is refused inside the mux, which knows the path parameters:
// pathBoundBodies.)
func strictRequest(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead {
			// HEAD is GET without the body (net/http drops it), for the
			// GET routes but the watch, which never ends.
			if rt := restRoutes.find(http.MethodGet, r.URL.Path); rt != nil && !rt.stream {
				r = r.Clone(r.Context())
				r.Method = http.MethodGet
			}
		}
		rt := restRoutes.find(r.Method, r.URL.Path)
		if rt == nil {
			next.ServeHTTP(w, r)
			return
		}
		if r.Method != "GET" {
			for _, h := range conditionalWriteHeaders {
				if r.Header.Get(h) != "" {
					where := `the body's "etag" field`
					if r.Method == "DELETE" {
						where = `the "etag" query parameter`
					}
					writeStatus(w, r, http.StatusBadRequest, malformed(h,
						fmt.Sprintf("malformed request: %s is not supported on writes; send the secret's etag in %s", h, where)))
					return
				}
			}
		}
		if rt.stream {
			bareStreamErrors(next).ServeHTTP(w, r)
			return
		}
		if rt.body == "*" && r.URL.RawQuery != "" {
			values, err := url.ParseQuery(r.URL.RawQuery)
			name := ""
			for k := range values {
				if name == "" || k < name {
					name = k
				}
			}
			if err != nil || name == "" {
				writeStatus(w, r, http.StatusBadRequest, malformed("", "malformed request: this route takes no query parameters; send every field in the JSON body"))
				return
			}
			shown := queryName(name)
			writeStatus(w, r, http.StatusBadRequest, malformed(shown,
				fmt.Sprintf("malformed request: query parameter %s: this route takes no query parameters; send every field in the JSON body", orUnnamed(shown))))
			return
		}
		// The generated handler of a route whose request the path (and
		// body field) fill entirely never calls the query parser, so its
		// parameters are judged here, by the parser's own rules.
		if r.URL.RawQuery != "" {
			values, err := url.ParseQuery(r.URL.RawQuery)
			if err != nil {
				// As the parser's routes answer a query they cannot parse.
				writeStatus(w, r, http.StatusBadRequest, malformed("", "malformed request: the body or parameters do not match the request type"))
				return
			}
			if msg, field := rt.badQuery(values); msg != "" {
				writeStatus(w, r, http.StatusBadRequest, malformed(field, "malformed request: "+msg))
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// streamFailureKey holds a request's *streamFailure in its context.
type streamFailureKey struct{}

// streamFailure is the first error of a REST stream, as the stream error
// handler saw it.
type streamFailure struct{ st *status.Status }

// bareStreamErrors makes a stream that fails before its first message (a
// bad token, a denied scope, a compacted revision) answer like every
// other REST error: a bare google.rpc.Status through writeStatus (with the
// Bearer challenge on 401), not grpc-gateway's {"error": Status} stream
// chunk. Once a stream has started (200 sent), errors stay chunks of it.
func bareStreamErrors(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f := &streamFailure{}
		r = r.WithContext(context.WithValue(r.Context(), streamFailureKey{}, f))
		sw := &streamWriter{ResponseWriter: w, failure: f}
		next.ServeHTTP(sw, r)
		if sw.held != 0 {
			writeStatus(w, r, sw.held, f.st)
		}
	})
}

// streamWriter holds back an error answer given before anything was
// written, for bareStreamErrors to rewrite.
type streamWriter struct {
	http.ResponseWriter
	failure *streamFailure
	wrote   bool
	held    int // the held error's HTTP status, or 0
}

func (s *streamWriter) WriteHeader(code int) {
	if !s.wrote && code != http.StatusOK && s.failure.st != nil {
		s.held = code
	}
	if s.held == 0 {
		s.ResponseWriter.WriteHeader(code)
	}
	s.wrote = true
}

func (s *streamWriter) Write(p []byte) (int, error) {
	if !s.wrote {
		s.WriteHeader(http.StatusOK)
	}
	if s.held != 0 {
		return len(p), nil
	}
	return s.ResponseWriter.Write(p)
}

func (s *streamWriter) Flush() {
	if s.held == 0 {
		if f, ok := s.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
	}
}

func (s *streamWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// malformed is a MALFORMED_REQUEST status naming field (if any).
func malformed(field, msg string) *status.Status {
	var bad []*errdetails.BadRequest
	if field != "" {
		bad = append(bad, &errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: field, Description: msg}}})
	}
	return api.Status(codes.InvalidArgument, pb.ErrorReason_ERROR_REASON_MALFORMED_REQUEST, msg, bad...)
}

var queryNameRe = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_.]{0,63}$`)

// queryName is a caller's parameter name fit to quote back (short, plain
// identifier characters), else "".
func queryName(name string) string {
	if queryNameRe.MatchString(name) {
		return name
	}
	return ""
}

func orUnnamed(name string) string {
	if name == "" {
		return "(name not shown)"
	}
	return name
}

// An unknown or misplaced query parameter fails: a dropped "?etag=" would
// turn a compare-and-set delete into a blind one. grpc-gateway keeps the
// query parser in a package variable (SetQueryParameterParser's option
// writes it whatever mux it is given), so it is set once here rather than
// per server: servers started side by side in one process raced on it.
func init() { runtime.SetQueryParameterParser(strictQueryParser{})(nil) }

// strictQueryParser populates a request from its query parameters like
// grpc-gateway's default parser, parameter by parameter, but refuses a
// name that is no field of the request, or that the path or body already
// binds, and says which parameter failed. Its errors reach the error
// handler as text only (the generated code flattens them), so they follow
// one fixed form that queryErrRe reads back: "query parameter NAME: WHY".
type strictQueryParser struct{}

// Parse implements runtime.QueryParameterParser.
func (strictQueryParser) Parse(msg proto.Message, values url.Values, filter *utilities.DoubleArray) error {
	names := make([]string, 0, len(values))
	for k := range values {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, name := range names {
		path, ok := queryFieldPath(msg.ProtoReflect().Descriptor(), name)
		if !ok {
			return fmt.Errorf("query parameter %s: %s", orUnnamed(queryName(name)), queryUnknown)
		}
		if filter.HasCommonPrefix(path) {
			return fmt.Errorf("query parameter %s: %s", name, queryBound)
		}
		if err := (&runtime.DefaultQueryParser{}).Parse(msg, url.Values{name: values[name]}, filter); err != nil {
			return fmt.Errorf("query parameter %s: %s", name, queryBadValue)
		}
	}
	return nil
}

// badQuery returns the strict parser's error for the first parameter (by
// name) that is no field of the route's request or that the path or body
// already binds, and the name to report, or "" when every name is one the
// parser would take (their values are still the parser's to judge).
func (rt *route) badQuery(values url.Values) (msg, field string) {
	names := make([]string, 0, len(values))
	for k := range values {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, name := range names {
		path, ok := queryFieldPath(rt.input, name)
		if !ok {
			shown := queryName(name)
			return fmt.Sprintf("query parameter %s: %s", orUnnamed(shown), queryUnknown), shown
		}
		for _, b := range rt.bound {
			n := min(len(b), len(path))
			if slices.Equal(b[:n], path[:n]) {
				return fmt.Sprintf("query parameter %s: %s", name, queryBound), name
			}
		}
	}
	return "", ""
}

const (
	queryUnknown  = "not a parameter of this route"
	queryBound    = "already set by the path or body"
	queryBadValue = "invalid value"
)

var queryErrRe = regexp.MustCompile(`^query parameter ([A-Za-z][A-Za-z0-9_.]{0,63}|\(name not shown\)): (` +
	queryUnknown + `|` + queryBound + `|` + queryBadValue + `)$`)

// queryFieldPath resolves a query parameter name (proto or JSON names,
// dotted through singular messages) to the request's field path.
func queryFieldPath(d protoreflect.MessageDescriptor, name string) ([]string, bool) {
	if queryName(name) == "" {
		return nil, false
	}
	parts := strings.Split(name, ".")
	out := make([]string, 0, len(parts))
	for i, p := range parts {
		if d == nil {
			return nil, false
		}
		fd := d.Fields().ByTextName(p)
		if fd == nil {
			fd = d.Fields().ByJSONName(p)
		}
		if fd == nil {
			return nil, false
		}
		out = append(out, string(fd.Name()))
		if i < len(parts)-1 {
			if fd.Message() == nil || fd.Cardinality() == protoreflect.Repeated {
				return nil, false
			}
			d = fd.Message()
		}
	}
	return out, true
}

// limitBody refuses bodies over MaxBodyBytes with 413 before reading them
// (declared length) or as soon as the limit is crossed (chunked bodies).
func limitBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > MaxBodyBytes {
			writeStatus(w, r, http.StatusRequestEntityTooLarge, tooLarge())
			return
		}
		body := &requestBody{ReadCloser: http.MaxBytesReader(w, r.Body, MaxBodyBytes)}
		if r.ContentLength != 0 {
			// A body must arrive in time: a client that stalls mid-body
			// (before any token is checked) must not hold a connection and
			// a handler forever. Bodiless requests — the watch stream —
			// keep no read deadline, so streaming is not cut off.
			rc := http.NewResponseController(w)
			if rc.SetReadDeadline(time.Now().Add(BodyReadTimeout)) == nil {
				body.rc = rc
			}
		}
		r.Body = body
		next.ServeHTTP(w, r)
	})
}

// requestBody is a REST request's body. It classifies its own read
// failures as they happen (over the limit, too slow), so the error handler
// answers 413 or 408 from what happened, not from an error's text. Once the
// body is in, it lifts the read deadline: the connection's background read
// (which notices a client going away) must not time out and cancel a long
// call such as VerifyAuditLog.
type requestBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	done bool
	// failure is set when reading failed: the answer to give.
	failure     *status.Status
	failureCode int
}

func (b *requestBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	switch {
	case err == io.EOF && !b.done:
		b.done = true
		if b.rc != nil {
			_ = b.rc.SetReadDeadline(time.Time{})
		}
	case err != nil && err != io.EOF && b.failure == nil:
		var tooBig *http.MaxBytesError
		switch {
		case errors.As(err, &tooBig):
			b.failure, b.failureCode = tooLarge(), http.StatusRequestEntityTooLarge
		case errors.Is(err, os.ErrDeadlineExceeded):
			b.failure, b.failureCode = api.Status(codes.DeadlineExceeded, pb.ErrorReason_ERROR_REASON_REQUEST_TIMEOUT,
				fmt.Sprintf("request body not received within %v", BodyReadTimeout)), http.StatusRequestTimeout
		}
	}
	return n, err
}

func tooLarge() *status.Status {
	return api.Status(codes.InvalidArgument, pb.ErrorReason_ERROR_REASON_REQUEST_TOO_LARGE,
		fmt.Sprintf("request body over the %d KiB limit", MaxBodyBytes>>10))
}

// writeStatus writes st as the JSON google.rpc.Status every REST error is,
// with the Bearer challenge on 401 (RFC 6750).
func writeStatus(w http.ResponseWriter, r *http.Request, httpStatus int, st *status.Status) {
	st = api.WithReason(st)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	if st.Code() == codes.Unauthenticated {
		if r.Header.Get("Authorization") == "" {
			h.Set("WWW-Authenticate", `Bearer realm="orient-secrets"`)
		} else {
			h.Set("WWW-Authenticate", `Bearer realm="orient-secrets", error="invalid_token"`)
		}
	}
	w.WriteHeader(httpStatus)
	b, _ := protojson.Marshal(st.Proto())
	_, _ = w.Write(b)
}

// routingErrorHandler answers requests that match no route: JSON like
// every other error, and for a known path with another method, 405 with
// the Allow header listing the path's methods (from the proto's HTTP
// rules).
func routingErrorHandler(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, httpStatus int) {
	switch httpStatus {
	case http.StatusMethodNotAllowed:
		if allow := restRoutes.allowed(r.URL.Path); len(allow) > 0 {
			w.Header().Set("Allow", strings.Join(allow, ", "))
		}
		writeMethodNotAllowed(w, r)
	case http.StatusNotFound:
		writeNotFound(w, r)
	default:
		writeStatus(w, r, http.StatusBadRequest, api.Status(codes.InvalidArgument, pb.ErrorReason_ERROR_REASON_MALFORMED_REQUEST,
			"malformed request"))
	}
}

// writeMethodNotAllowed answers 405 (the caller sets Allow). The method is
// quoted only if it is one of HTTP's own: it is the caller's text.
func writeMethodNotAllowed(w http.ResponseWriter, r *http.Request) {
	method := methodLabel(r.Method)
	if method == "other" {
		method = "this method"
	}
	writeStatus(w, r, http.StatusMethodNotAllowed, api.Status(codes.Unimplemented, pb.ErrorReason_ERROR_REASON_METHOD_NOT_ALLOWED,
		method+" is not allowed on this route"))
}

func writeNotFound(w http.ResponseWriter, r *http.Request) {
	writeStatus(w, r, http.StatusNotFound, api.Status(codes.NotFound, pb.ErrorReason_ERROR_REASON_ROUTE_NOT_FOUND,
		"no such route; see /openapi.json"))
}

var (
	unknownFieldRe = regexp.MustCompile(`unknown field "([A-Za-z0-9_]{1,64})"`)
	badValueRe     = regexp.MustCompile(`invalid value for ([a-z0-9]{1,16}) field ([A-Za-z0-9_]{1,64})`)
	badTypeRe      = regexp.MustCompile(`field ([A-Za-z0-9_.]{1,64})`)
)

// gatewayErrorHandler writes every error of a REST call as a
// google.rpc.Status with this service's ErrorInfo. Errors from our handlers
// carry it already and pass unchanged. A body that failed to arrive says
// why itself (requestBody). The other errors the gateway raises itself are
// request decoding failures (INVALID_ARGUMENT without our ErrorInfo): their
// text can quote the input (an invalid base64 value, say), so it is
// replaced by one that names the field only, with reason
// MALFORMED_REQUEST. Anything else the gateway made (the gRPC port
// unreachable, the call cancelled) gets the reason for its code.
func gatewayErrorHandler(log *slog.Logger) runtime.ErrorHandlerFunc {
	return func(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
		if b, ok := r.Body.(*requestBody); ok && b.failure != nil {
			writeStatus(w, r, b.failureCode, b.failure)
			return
		}
		st := status.Convert(err)
		if st.Code() == codes.InvalidArgument && !api.HasInfo(st) {
			var input protoreflect.MessageDescriptor
			if rt := restRoutes.find(r.Method, r.URL.Path); rt != nil {
				input = rt.input
			}
			msg, field := sanitizeDecodeError(st.Message(), input)
			var bad []*errdetails.BadRequest
			if field != "" {
				bad = append(bad, &errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: field, Description: msg}}})
			}
			st = api.Status(codes.InvalidArgument, pb.ErrorReason_ERROR_REASON_MALFORMED_REQUEST, msg, bad...)
		}
		writeStatus(w, r, runtime.HTTPStatusFromCode(st.Code()), st)
	}
}

// sanitizeDecodeError rewrites a decoding error without the input it may
// quote, and names the field concerned when it can: a query parameter our
// parser named, or a field name of the request message (input) — never
// other text of the error, which can be the caller's value.
func sanitizeDecodeError(msg string, input protoreflect.MessageDescriptor) (string, string) {
	if m := queryErrRe.FindStringSubmatch(msg); m != nil {
		field := m[1]
		if field == "(name not shown)" {
			field = ""
		}
		return "malformed request: " + msg, field
	}
	known := func(name string) bool { return input != nil && hasField(input, name) }
	if m := unknownFieldRe.FindStringSubmatch(msg); m != nil {
		return fmt.Sprintf("malformed request: unknown field %q", m[1]), m[1]
	}
	if m := badValueRe.FindStringSubmatch(msg); m != nil && known(m[2]) {
		return fmt.Sprintf("malformed request: field %s: invalid %s value", m[2], m[1]), m[2]
	}
	if strings.Contains(msg, "syntax error") || strings.Contains(msg, "unexpected token") || strings.Contains(msg, "unexpected EOF") {
		return "malformed request: body is not valid JSON", ""
	}
	if m := badTypeRe.FindStringSubmatch(msg); m != nil && known(m[1]) {
		return fmt.Sprintf("malformed request: field %s has the wrong type or value", m[1]), m[1]
	}
	return "malformed request: the body or parameters do not match the request type", ""
}
