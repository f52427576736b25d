package app

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/proto"

	"github.com/orient-bot/secrets/server/api"
	"github.com/orient-bot/secrets/server/auditlog"
	"github.com/orient-bot/secrets/server/auth"
	"github.com/orient-bot/secrets/server/store"
)

// authorizer enforces the policy of server/auth on every RPC, in one place
// (the interceptors). Handlers only filter lists and streams to the scope.
type authorizer struct {
	authn *auth.Authenticator
	certs []auth.CertIdentity
	// gatewayCert is the certificate the REST gateway presents on mutual
	// TLS; it identifies the gateway's connection and grants nothing.
	gatewayCert []byte
	categoryOf  auth.CategoryLookup
	denials     *auditlog.DenialQueue
	// denied counts refusals by reason (secrets_denials_total).
	denied *prometheus.CounterVec
	// streams bounds each principal's concurrent streams.
	streams *streamLimiter
	// creds ends streams whose credentials stop authenticating.
	creds *credentialWatch
	// eventsSent counts the change events sent past the stream wrappers.
	eventsSent prometheus.Counter
	log        *slog.Logger
}

// streamLimiter bounds the concurrent streams of each principal, so one
// token cannot hold every stream a replica can serve.
type streamLimiter struct {
	max int
	mu  sync.Mutex
	n   map[string]int
}

func newStreamLimiter(max int) *streamLimiter { return &streamLimiter{max: max, n: map[string]int{}} }

func (l *streamLimiter) acquire(name string) (release func(), err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.max > 0 && l.n[name] >= l.max {
		return nil, fmt.Errorf("%s already has %d open streams on this replica (--max-streams-per-token)", name, l.max)
	}
	l.n[name]++
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.n[name]--; l.n[name] == 0 {
			delete(l.n, name)
		}
	}, nil
}

// errUnauthenticated is the one answer to every authentication failure, so
// a caller cannot tell an unknown token from a malformed header.
var errUnauthenticated = api.Refusal(codes.Unauthenticated, "missing or invalid credentials: send \"authorization: Bearer <token>\"")

func (a *authorizer) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, err := a.authorize(ctx, info.FullMethod, req)
	if err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

// stream authenticates the caller and checks its role when the stream
// opens, checks the targets of each request message as it arrives (a
// stream's request is not known before), and ends the stream with
// UNAUTHENTICATED once its credentials stop being valid (revoked or
// expired), re-checked every recheck interval — once per credential for
// all the streams open with it, not once per stream (see credentialWatch).
func (a *authorizer) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, err := a.authorize(ss.Context(), info.FullMethod, nil)
	if err != nil {
		return err
	}
	p, ok := auth.FromContext(ctx)
	if !ok { // public
		return handler(srv, &wrappedStream{ServerStream: ss, ctx: ctx})
	}
	release, err := a.streams.acquire(p.Name)
	if err != nil {
		a.deny(ctx, p.Name, auth.PolicyFromContext(ctx).Action, &auth.Denial{Reason: auth.DenyStreamLimit, Message: err.Error()})
		return api.Refusal(codes.ResourceExhausted, err.Error())
	}
	defer release()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer a.creds.join(ctx, credentialKey(ctx), p.ExpireTime, cancel)()
	err = handler(srv, &checkedStream{ServerStream: ss, ctx: ctx, a: a, transport: transportOf(ctx)})
	if cause := context.Cause(ctx); errors.Is(cause, errCredentialsEnded) {
		return errUnauthenticated
	}
	return err
}

// lookupFailed reports whether authenticating failed for want of an
// answer (the database unavailable or slow, the caller's deadline or
// cancellation) rather than because the credentials are bad.
func lookupFailed(err error) bool {
	return errors.Is(err, store.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}

// errCredentialsEnded is the cause of a stream cancelled because its token
// was revoked or expired.
var errCredentialsEnded = errors.New("credentials no longer valid")

// credentialKey identifies the credentials principal reads from ctx (a
// digest: no token is kept as a map key).
func credentialKey(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	if vals := md.Get("authorization"); len(vals) > 0 {
		h := sha256.Sum256([]byte(strings.Join(vals, "\n")))
		return "bearer:" + string(h[:])
	}
	if cert := peerCert(ctx); cert != nil {
		h := sha256.Sum256(cert.Raw)
		return "cert:" + string(h[:])
	}
	return ""
}

// credentialWatch ends open streams once their credentials stop
// authenticating: at a token's expiry time, and at the first re-check
// that finds it revoked. Streams open with the same credentials share one
// re-check (one goroutine, one timer, one authentication per interval):
// 10,000 watches of one token cost one token check a second, not 10,000
// (each a lookup when the cache entry has just expired).
type credentialWatch struct {
	every time.Duration
	// check authenticates the caller of ctx again.
	check func(ctx context.Context) error

	mu     sync.Mutex
	groups map[string]*credGroup
}

// credGroup is the streams open with one credential.
type credGroup struct {
	members map[*context.CancelCauseFunc]struct{}
	stop    context.CancelFunc // ends the group's re-check
	ended   bool               // the credentials stopped authenticating
}

func newCredentialWatch(every time.Duration, check func(ctx context.Context) error) *credentialWatch {
	return &credentialWatch{every: every, check: check, groups: map[string]*credGroup{}}
}

// join watches the credentials of ctx (identified by key, expiring at
// expire if not zero) until leave is called, and cancels the stream with
// errCredentialsEnded when they stop authenticating.
func (w *credentialWatch) join(ctx context.Context, key string, expire time.Time, cancel context.CancelCauseFunc) (leave func()) {
	member := &cancel
	w.mu.Lock()
	defer w.mu.Unlock()
	g := w.groups[key]
	if g == nil {
		// The group's re-check authenticates with the first stream's
		// metadata and peer (the same credentials, by key), but outlives
		// that stream: it ends with the group's last stream.
		gctx, stop := context.WithCancel(context.WithoutCancel(ctx))
		g = &credGroup{members: map[*context.CancelCauseFunc]struct{}{}, stop: stop}
		w.groups[key] = g
		go w.run(gctx, key, g, expire)
	}
	g.members[member] = struct{}{}
	return func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		delete(g.members, member)
		if len(g.members) == 0 && !g.ended {
			delete(w.groups, key)
			g.stop()
		}
	}
}

func (w *credentialWatch) run(ctx context.Context, key string, g *credGroup, expire time.Time) {
	var expiry <-chan time.Time
	if !expire.IsZero() {
		t := time.NewTimer(time.Until(expire))
		defer t.Stop()
		expiry = t.C
	}
	tick := time.NewTicker(w.every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-expiry:
			w.end(key, g)
			return
		case <-tick.C:
			err := w.check(ctx)
			if ctx.Err() != nil {
				return // the last stream left during the check
			}
			if err != nil && !lookupFailed(err) {
				w.end(key, g)
				return
			}
		}
	}
}

// end cancels every stream of the group; a stream opened later with the
// same credentials (it authenticated at open) starts a new group.
func (w *credentialWatch) end(key string, g *credGroup) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.groups[key] == g {
		delete(w.groups, key)
	}
	g.ended = true
	for m := range g.members {
		(*m)(errCredentialsEnded)
	}
	clear(g.members)
	g.stop()
}

// checkedStream authorizes each request message of a stream against the
// method's policy before the handler sees it.
type checkedStream struct {
	grpc.ServerStream
	ctx context.Context
	a   *authorizer
	// transport is the stream outside the metrics and logging wrappers
	// (nil if unknown).
	transport grpc.ServerStream
}

func (s *checkedStream) Context() context.Context { return s.ctx }

// SendMsg sends a change event that the service encoded once for every
// stream (api.PreEncoded) straight to the transport, past the per-message
// metrics and logging wrappers: with 10,000 watches their counting, label
// lookups and clocks cost more than gRPC's own send. Such events are
// counted in secrets_watch_events_sent_total, not in
// grpc_server_msg_sent_total (which still counts every other message, a
// watch's header and progress marks included). Nothing is authorized per
// sent message: the handler filters each event to the stream's scope, and
// the credentials are re-checked on a timer (credentialWatch).
func (s *checkedStream) SendMsg(m any) error {
	if s.transport == nil || !api.PreEncoded(m) {
		return s.ServerStream.SendMsg(m)
	}
	err := s.transport.SendMsg(m)
	if err == nil && s.a.eventsSent != nil {
		s.a.eventsSent.Inc()
	}
	return err
}

func (s *checkedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	_, err := s.a.check(s.ctx, m)
	return err
}

func (a *authorizer) authorize(ctx context.Context, method string, req any) (context.Context, error) {
	pol, ok := auth.PolicyFor(method)
	id := api.IdentityFrom(ctx)
	action := method[strings.LastIndex(method, "/")+1:]
	if !ok {
		a.log.ErrorContext(ctx, "no policy declared for the method; refusing", "method", method)
		a.deny(ctx, id.Actor, action, &auth.Denial{Reason: auth.DenyNoPolicy, Message: "no policy declared for " + method})
		return ctx, api.Refusal(codes.PermissionDenied, "no policy declared for this method")
	}
	if pol.Public {
		return ctx, nil
	}
	p, err := a.principal(ctx)
	if err != nil {
		if lookupFailed(err) {
			// Not a verdict on the credentials: UNAVAILABLE (or the
			// caller's own DEADLINE_EXCEEDED), and no denial is audited.
			return ctx, api.StatusOf(ctx, a.log, err)
		}
		a.deny(ctx, "unauthenticated", action, &auth.Denial{Reason: auth.DenyUnauthenticated, Message: err.Error()})
		return ctx, errUnauthenticated
	}
	id.Actor = p.Name
	noteIdentity(ctx, id)
	ctx = api.WithIdentity(auth.WithPolicy(auth.WithPrincipal(ctx, p), pol), id)
	if req == nil {
		return ctx, nil
	}
	return a.check(ctx, req)
}

// check applies the method's policy to one request of an authenticated
// caller.
func (a *authorizer) check(ctx context.Context, req any) (context.Context, error) {
	p, _ := auth.FromContext(ctx)
	pol := auth.PolicyFromContext(ctx)
	msg, _ := req.(proto.Message)
	d, err := pol.Authorize(ctx, p, msg, a.categoryOf)
	if err != nil {
		return ctx, api.StatusOf(ctx, a.log, err)
	}
	if d != nil {
		a.deny(ctx, p.Name, pol.Action, d)
		return ctx, api.Refusal(codes.PermissionDenied, d.Message)
	}
	return ctx, nil
}

// deny counts a refusal by reason and queues its audit event.
func (a *authorizer) deny(ctx context.Context, actor, action string, d *auth.Denial) {
	a.denied.WithLabelValues(d.Reason).Inc()
	outcome := "PERMISSION_DENIED"
	switch d.Reason {
	case auth.DenyUnauthenticated:
		outcome = "UNAUTHENTICATED"
	case auth.DenyStreamLimit:
		outcome = "RESOURCE_EXHAUSTED"
	}
	a.denials.Record(store.AuditEvent{Actor: actor, Action: action, Key: d.Key, Outcome: outcome,
		Peer: api.IdentityFrom(ctx).Peer, Detail: d.Reason + ": " + d.Message})
}

// principal authenticates the caller: a bearer token if one is sent, else a
// mapped client certificate.
func (a *authorizer) principal(ctx context.Context) (auth.Principal, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if vals := md.Get("authorization"); len(vals) > 0 {
		scheme, token, ok := strings.Cut(vals[0], " ")
		if !ok || !strings.EqualFold(scheme, "bearer") || len(vals) > 1 {
			return auth.Principal{}, errors.New("malformed authorization header")
		}
		return a.authn.Authenticate(ctx, strings.TrimSpace(token))
	}
	if cert := peerCert(ctx); cert != nil && !bytes.Equal(cert.Raw, a.gatewayCert) {
		// The handshake checked the validity period when the connection
		// opened; a long-lived connection must not outlive the
		// certificate. ExpireTime also ends streams at NotAfter.
		if !time.Now().Before(cert.NotAfter) {
			return auth.Principal{}, fmt.Errorf("client certificate %q expired", cert.Subject.CommonName)
		}
		for _, id := range a.certs {
			if certMatches(cert, id.Subject) {
				return auth.Principal{Name: id.Name, Role: id.Role, Scope: id.Scope, ExpireTime: cert.NotAfter}, nil
			}
		}
		return auth.Principal{}, fmt.Errorf("client certificate %q is not mapped to a role", cert.Subject.CommonName)
	}
	return auth.Principal{}, auth.ErrNoCredentials
}

func peerCert(ctx context.Context) *x509.Certificate {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	tlsInfo, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(tlsInfo.State.PeerCertificates) == 0 {
		return nil
	}
	return tlsInfo.State.PeerCertificates[0]
}

// certMatches reports whether a certificate has subject as a name of the
// subject's own type: a URI (it has "://") only among the URI SANs, an
// email (it has "@") only among the email SANs, anything else among the
// DNS SANs, or as the common name of a certificate with no SAN at all. A
// name of one type never matches another type's, so an identity written
// for a SPIFFE ID is not granted to a certificate whose CN or DNS name
// spells it.
func certMatches(c *x509.Certificate, subject string) bool {
	switch {
	case strings.Contains(subject, "://"):
		return slices.ContainsFunc(c.URIs, func(u *url.URL) bool { return u.String() == subject })
	case strings.Contains(subject, "@"):
		return slices.Contains(c.EmailAddresses, subject)
	}
	if slices.Contains(c.DNSNames, subject) {
		return true
	}
	hasSAN := len(c.DNSNames) > 0 || len(c.URIs) > 0 || len(c.EmailAddresses) > 0 || len(c.IPAddresses) > 0
	return !hasSAN && c.Subject.CommonName == subject
}
