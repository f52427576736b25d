package app

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/server/api"
	"github.com/orient-bot/secrets/server/auth"
	"github.com/orient-bot/secrets/server/catalog"
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
	categoryOf  func(ctx context.Context, key string) (string, error)
	denials     *denialRecorder
	log         *slog.Logger
}

// errUnauthenticated is the one answer to every authentication failure, so
// a caller cannot tell an unknown token from a malformed header.
var errUnauthenticated = api.Unauthenticated("missing or invalid credentials: send \"authorization: Bearer <token>\"")

func (a *authorizer) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, err := a.authorize(ctx, info.FullMethod, req)
	if err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (a *authorizer) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	// A stream's request is not known yet: the role is checked here, and the
	// handler checks the keys it names against the scope.
	ctx, err := a.authorize(ss.Context(), info.FullMethod, nil)
	if err != nil {
		return err
	}
	return handler(srv, &wrappedStream{ServerStream: ss, ctx: ctx})
}

func (a *authorizer) authorize(ctx context.Context, method string, req any) (context.Context, error) {
	rule, ok := auth.Rules[method]
	if !ok {
		a.log.ErrorContext(ctx, "no authorization rule; refusing", "method", method)
		return ctx, api.PermissionDenied("no authorization rule for " + method)
	}
	if rule.Public {
		return ctx, nil
	}
	id := api.IdentityFrom(ctx)
	action := method[strings.LastIndex(method, "/")+1:]
	p, err := a.principal(ctx)
	if err != nil {
		if errors.Is(err, store.ErrUnavailable) {
			return ctx, api.StatusOf(ctx, a.log, err)
		}
		a.denials.record(store.AuditEvent{Actor: "unauthenticated", Action: action, Outcome: "UNAUTHENTICATED", Peer: id.Peer, Detail: err.Error()})
		return ctx, errUnauthenticated
	}
	id.Actor = p.Name
	ctx = api.WithIdentity(auth.WithPrincipal(ctx, p), id)
	deny := func(key, why string) (context.Context, error) {
		a.denials.record(store.AuditEvent{Actor: p.Name, Action: action, Key: key, Outcome: "PERMISSION_DENIED", Peer: id.Peer, Detail: why})
		return ctx, api.PermissionDenied(why)
	}
	if !rule.Allows(p.Role) {
		why := fmt.Sprintf("role %s may not call %s", p.Role, action)
		if len(rule.Roles) == 1 && rule.Roles[0] == auth.RoleAdmin {
			why += "; ensure you are authenticated as admin"
		}
		return deny("", why)
	}
	if rule.KeyScoped && req != nil && !p.Scope.Empty() {
		for _, t := range requestTargets(req) {
			category := t.category
			if category == "" {
				if category, err = a.keyCategory(ctx, t.key, p.Scope); err != nil {
					return ctx, api.StatusOf(ctx, a.log, err)
				}
			}
			if !p.Scope.Allows(t.key, category) {
				return deny(t.key, fmt.Sprintf("%s is outside the scope of %s", t.key, p.Name))
			}
		}
	}
	return ctx, nil
}

// keyCategory is the category a scope check uses: the stored one, else the
// catalog's, else custom. Pattern-only scopes need no lookup.
func (a *authorizer) keyCategory(ctx context.Context, key string, scope auth.Scope) (string, error) {
	if len(scope.Categories) == 0 {
		return "", nil
	}
	c, err := a.categoryOf(ctx, key)
	if err != nil || c != "" {
		return c, err
	}
	if e, ok := catalog.Lookup(key); ok {
		return e.Category, nil
	}
	return catalog.CategoryCustom, nil
}

type target struct{ key, category string }

// requestTargets lists what a request touches: its keys, and for writes
// that set a category, that category too (a write may not move a secret
// into or out of scope).
func requestTargets(req any) []target {
	switch r := req.(type) {
	case *pb.BatchAccessSecretsRequest:
		out := make([]target, len(r.GetKeys()))
		for i, k := range r.GetKeys() {
			out[i] = target{key: k}
		}
		return out
	case *pb.ReportConsumerStateRequest:
		out := make([]target, len(r.GetKeys()))
		for i, k := range r.GetKeys() {
			out[i] = target{key: k}
		}
		return out
	case *pb.PutSecretRequest:
		out := []target{{key: r.GetKey()}}
		if r.Category != nil {
			out = append(out, target{key: r.GetKey(), category: scopeCategory(r.GetCategory())})
		}
		return out
	case *pb.UpdateSecretRequest:
		out := []target{{key: r.GetSecret().GetKey()}}
		for _, p := range r.GetUpdateMask().GetPaths() {
			if p == "category" || p == "*" {
				out = append(out, target{key: r.GetSecret().GetKey(), category: scopeCategory(r.GetSecret().GetCategory())})
			}
		}
		return out
	case interface{ GetKey() string }:
		return []target{{key: r.GetKey()}}
	}
	return nil
}

// scopeCategory is the category a write sets, as the handler will store
// it (catalog.NormalizeCategory); one the handler will refuse is judged as
// given, which no scope contains.
func scopeCategory(c string) string {
	if n, err := catalog.NormalizeCategory(c); err == nil {
		return n
	}
	return c
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
		for _, id := range a.certs {
			if certMatches(cert, id.Subject) {
				return auth.Principal{Name: id.Name, Role: id.Role, Scope: id.Scope}, nil
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

func certMatches(c *x509.Certificate, subject string) bool {
	if c.Subject.CommonName == subject {
		return true
	}
	for _, d := range c.DNSNames {
		if d == subject {
			return true
		}
	}
	for _, u := range c.URIs {
		if u.String() == subject {
			return true
		}
	}
	return false
}

// denialRecorder audits refused requests off the request path, through a
// bounded queue: a flood of bad tokens cannot slow legitimate calls or grow
// memory; past the bound, denials are counted and dropped.
type denialRecorder struct {
	ch      chan store.AuditEvent
	write   func(ctx context.Context, events []store.AuditEvent) error
	dropped func()
	log     *slog.Logger
}

func newDenialRecorder(write func(context.Context, []store.AuditEvent) error, dropped func(), log *slog.Logger) *denialRecorder {
	return &denialRecorder{ch: make(chan store.AuditEvent, 4096), write: write, dropped: dropped, log: log}
}

func (d *denialRecorder) record(e store.AuditEvent) {
	select {
	case d.ch <- e:
	default:
		d.dropped()
	}
}

// run writes queued denials in batches until ctx ends (then drains).
func (d *denialRecorder) run(ctx context.Context) {
	batch := make([]store.AuditEvent, 0, 256)
	flush := func() {
		if len(batch) == 0 {
			return
		}
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := d.write(wctx, batch); err != nil {
			d.log.Warn("denial audit not recorded", "count", len(batch), "error", err)
		}
		batch = batch[:0]
	}
	for {
		select {
		case e := <-d.ch:
			batch = append(batch, e)
			for len(batch) < cap(batch) {
				select {
				case e := <-d.ch:
					batch = append(batch, e)
					continue
				default:
				}
				break
			}
			flush()
		case <-ctx.Done():
			for {
				select {
				case e := <-d.ch:
					batch = append(batch, e)
				default:
					flush()
					return
				}
			}
		}
	}
}
