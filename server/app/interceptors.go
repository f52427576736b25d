package app

import (
	"context"
	"crypto/subtle"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/orient-bot/secrets/server/api"
	"github.com/orient-bot/secrets/server/auth"
	"github.com/orient-bot/secrets/server/store"
)

// gatewayHeader carries a per-process random secret from the REST gateway to
// the gRPC server: only a call bearing it may name its client address through
// x-forwarded-for. A direct gRPC caller cannot forge where it comes from.
const gatewayHeader = "x-orient-gateway"

// peerIdentifier finds the caller's real address. Forwarding headers are
// believed only from the REST gateway's own connection (which proves itself
// with a per-process secret) and from proxies the operator lists; a direct
// caller cannot claim to be someone else.
type peerIdentifier struct {
	gatewaySecret  string
	trustedProxies []netip.Prefix
}

// identify attaches the caller's identity (actor and real peer) to the context.
func (pi peerIdentifier) identify(ctx context.Context) context.Context {
	id := api.Identity{Actor: "anonymous"}
	var transport string
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		transport = p.Addr.String()
		id.Peer = transport
	}
	md, _ := metadata.FromIncomingContext(ctx)
	var fwd []string
	if v := md.Get("x-forwarded-for"); len(v) > 0 {
		for _, part := range strings.Split(v[len(v)-1], ",") {
			fwd = append(fwd, strings.TrimSpace(part))
		}
	}
	if v := md.Get(gatewayHeader); len(v) == 1 && subtle.ConstantTimeCompare([]byte(v[0]), []byte(pi.gatewaySecret)) == 1 {
		// The gateway appended the address of the TCP connection it served;
		// earlier entries count only when they pass trusted proxies.
		if len(fwd) > 0 {
			id.Peer = pi.client(fwd) + " (rest)"
		}
	} else if host, _, err := net.SplitHostPort(transport); err == nil && pi.trusted(host) && len(fwd) > 0 {
		id.Peer = pi.client(append(fwd, host))
	}
	noteIdentity(ctx, id)
	return api.WithIdentity(ctx, id)
}

// client walks a forwarding chain from the nearest hop back, past trusted
// proxies, to the first address that is not one. Only hops that are IP
// addresses count: at the first that is not (free text such as "bastion
// (rest)", a port, an IPv6 zone), the walk stops at the last good one, so
// no forwarded value puts words of its sender's choosing in the audit log.
func (pi peerIdentifier) client(chain []string) string {
	i := len(chain) - 1
	for i > 0 && pi.trusted(chain[i]) && plainAddr(chain[i-1]) {
		i--
	}
	if ip, err := netip.ParseAddr(chain[i]); err == nil {
		return ip.String()
	}
	return chain[i]
}

// plainAddr reports whether a forwarded hop is an IP address without a zone.
func plainAddr(s string) bool {
	ip, err := netip.ParseAddr(s)
	return err == nil && ip.Zone() == ""
}

func (pi peerIdentifier) trusted(addr string) bool {
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		return false
	}
	for _, p := range pi.trustedProxies {
		if p.Contains(ip.Unmap()) {
			return true
		}
	}
	return false
}

func (pi peerIdentifier) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	return handler(pi.identify(ctx), req)
}

func (pi peerIdentifier) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return handler(srv, &wrappedStream{ServerStream: ss, ctx: pi.identify(ss.Context())})
}

type wrappedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (w *wrappedStream) Context() context.Context { return w.ctx }

// failureRecorder is what the failure audit needs from the store.
type failureRecorder interface {
	RecordFailure(ctx context.Context, meta store.Meta, key string, version int64, outcome, detail string) error
}

// failureAudits records the failure audit events of failed calls. An
// event is normally durable before the answer leaves; but a slow database
// must not turn the answer into the caller's DEADLINE_EXCEEDED, so the
// answer waits at most until failureAuditMargin before the caller's
// deadline (no wait with less than that left), and the recording goes on
// without it, on a goroutine of its own. At most failureAuditsInFlight
// such goroutines run at once (a flood of failing calls with short
// deadlines cannot pile up writes on a slow database); past that a call
// waits for its own event, as it always did. wait joins them at shutdown,
// before the store closes.
type failureAudits struct {
	rec   failureRecorder
	log   *slog.Logger
	slots chan struct{}
	wg    sync.WaitGroup
}

// failureAuditTimeout bounds recording one failure audit event.
const failureAuditTimeout = 2 * time.Second

// failureAuditMargin is the time a failed call's answer has to reach its
// caller before the caller's deadline while its audit event is recorded.
const failureAuditMargin = 100 * time.Millisecond

// failureAuditsInFlight bounds the events recorded after their answers.
const failureAuditsInFlight = 64

func newFailureAudits(rec failureRecorder, log *slog.Logger) *failureAudits {
	return &failureAudits{rec: rec, log: log, slots: make(chan struct{}, failureAuditsInFlight)}
}

// record records one event, and returns once it is recorded or the
// answer cannot wait longer.
func (f *failureAudits) record(ctx context.Context, meta store.Meta, key string, version int64, outcome string) {
	run := func() {
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), failureAuditTimeout)
		defer cancel()
		if err := f.rec.RecordFailure(actx, meta, key, version, outcome, ""); err != nil {
			f.log.Warn("failure audit not recorded", "method", meta.Action, "error", err)
		}
	}
	select {
	case f.slots <- struct{}{}:
	default:
		run() // at the bound: this one waits for its event
		return
	}
	recorded := make(chan struct{})
	f.wg.Add(1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				// Its value may hold request data: the type only.
				f.log.Error("failure audit panicked", "method", meta.Action, "panic", fmt.Sprintf("%T", r))
			}
			<-f.slots
			f.wg.Done()
			close(recorded)
		}()
		run()
	}()
	var answerBy <-chan time.Time
	if d, ok := ctx.Deadline(); ok {
		t := time.NewTimer(time.Until(d.Add(-failureAuditMargin)))
		defer t.Stop()
		answerBy = t.C
	}
	select {
	case <-recorded:
	case <-answerBy:
	case <-ctx.Done():
	}
}

// wait returns once every event being recorded is (each within
// failureAuditTimeout).
func (f *failureAudits) wait() { f.wg.Wait() }

// auditFailures records a failed call of an audited method (its policy
// says so) with its status code, before answering but never past the
// caller's deadline (failureAudits). It skips UNAVAILABLE (the database is
// likely what failed) and cancellations. Successes are audited by the
// handlers and the store; refusals by the authorizer. What the caller sent
// is bounded and escaped by the store before it is written.
func auditFailures(fa *failureAudits) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		if err == nil {
			return resp, nil
		}
		pol := auth.PolicyFromContext(ctx)
		code := status.Code(err)
		if !pol.Audited || code == codes.Unavailable || code == codes.Canceled {
			return resp, err
		}
		id := api.IdentityFrom(ctx)
		msg, _ := req.(proto.Message)
		var key string
		if keys := pol.Keys(msg); len(keys) > 0 {
			key = keys[0]
		}
		var version int64
		if r, ok := req.(interface{ GetVersion() string }); ok {
			version, _ = strconv.ParseInt(r.GetVersion(), 10, 64)
		}
		meta := store.Meta{Actor: id.Actor, Peer: id.Peer, Action: pol.Action}
		if r, ok := req.(interface{ GetRequestId() string }); ok {
			meta.RequestID = r.GetRequestId()
		}
		fa.record(ctx, meta, key, version, api.Outcome(code))
		return resp, err
	}
}

// callRecord is filled in as a call is served (the authenticated actor),
// for the request log line, which is written by an interceptor that runs
// before authentication.
type callRecord struct {
	mu          sync.Mutex
	actor, peer string
	// transport is a stream call's gRPC stream as the server made it,
	// outside the metrics and logging wrappers (set before the handler
	// runs, read-only after).
	transport grpc.ServerStream
}

type callRecordKey struct{}

// recordCalls gives each call a callRecord.
func recordCalls(ctx context.Context) (context.Context, *callRecord) {
	r := &callRecord{actor: "anonymous"}
	return context.WithValue(ctx, callRecordKey{}, r), r
}

// noteIdentity writes the caller's identity into the call's record.
func noteIdentity(ctx context.Context, id api.Identity) {
	if r, ok := ctx.Value(callRecordKey{}).(*callRecord); ok {
		r.mu.Lock()
		r.actor, r.peer = id.Actor, id.Peer
		r.mu.Unlock()
	}
}

func recordUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, _ = recordCalls(ctx)
	return handler(ctx, req)
}

// recordStream runs before the metrics and logging interceptors wrap the
// stream, and keeps the stream as it is for checkedStream.SendMsg.
func recordStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, r := recordCalls(ss.Context())
	r.transport = ss
	return handler(srv, &wrappedStream{ServerStream: ss, ctx: ctx})
}

// transportOf is the stream recordStream kept for the call of ctx, or nil.
func transportOf(ctx context.Context) grpc.ServerStream {
	if r, ok := ctx.Value(callRecordKey{}).(*callRecord); ok {
		return r.transport
	}
	return nil
}

// callLog writes one line per finished call, with no payloads (they may
// hold values): method, code, error, duration, actor and peer, at the level
// go-grpc-middleware's logging gives the code. Written here rather than
// through that interceptor: it built, merged and formatted a field list per
// call whether or not the line was wanted (12% of the server's CPU under
// audited reads).
type callLog struct{ log *slog.Logger }

func (l callLog) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	l.finished(ctx, info.FullMethod, "unary", start, err)
	return resp, err
}

func (l callLog) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	start := time.Now()
	err := handler(srv, ss)
	kind := "server_stream"
	switch {
	case info.IsClientStream && info.IsServerStream:
		kind = "bidi_stream"
	case info.IsClientStream:
		kind = "client_stream"
	}
	l.finished(ss.Context(), info.FullMethod, kind, start, err)
	return err
}

func (l callLog) finished(ctx context.Context, fullMethod, kind string, start time.Time, err error) {
	code := status.Code(err)
	level := slog.Level(logging.DefaultServerCodeToLevel(code))
	if !l.log.Enabled(ctx, level) {
		return
	}
	service, method, _ := strings.Cut(strings.TrimPrefix(fullMethod, "/"), "/")
	actor, peer := callIdentity(ctx)
	attrs := make([]slog.Attr, 0, 9)
	attrs = append(attrs, slog.String("grpc.service", service), slog.String("grpc.method", method),
		slog.String("grpc.method_type", kind), slog.String("grpc.code", code.String()))
	if err != nil {
		attrs = append(attrs, slog.String("grpc.error", err.Error()))
	}
	attrs = append(attrs, slog.Float64("grpc.time_ms", float64(time.Since(start).Microseconds())/1000),
		slog.String("actor", actor), slog.String("peer", peer))
	l.log.LogAttrs(ctx, level, "finished call", attrs...)
}

// callIdentity is the actor and peer of the call of ctx, as far as they
// were established.
func callIdentity(ctx context.Context) (actor, peer string) {
	r, ok := ctx.Value(callRecordKey{}).(*callRecord)
	if !ok {
		id := api.IdentityFrom(ctx)
		return id.Actor, id.Peer
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.actor, r.peer
}

// recovered turns a panic into INTERNAL without logging the panic value (it
// could hold request data).
func recovered(log *slog.Logger) func(ctx context.Context, p any) error {
	return func(ctx context.Context, p any) error {
		log.ErrorContext(ctx, "panic in handler", "type", fmt.Sprintf("%T", p))
		return status.Error(codes.Internal, "internal error")
	}
}
