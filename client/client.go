// Package client is the Go client of Orient Secrets. It wraps the gRPC API
// with Go types and typed errors, resolves configuration values in the
// service's priority order (database, then environment, then config-file
// defaults), keeps a local cache fresh through the change stream, and fills
// config structs from resolved values.
//
// A Client is safe for concurrent use. Calls retry with backoff only where a
// retry is safe (see RetryPolicy); watches resume across disconnects from the
// last revision they saw.
package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
)

// Client talks to one Orient Secrets service.
type Client struct {
	target    string
	opts      options
	conn      *grpc.ClientConn
	secrets   pb.SecretServiceClient
	providers pb.ProviderServiceClient
	audit     pb.AuditServiceClient
	tokens    pb.TokenServiceClient
	keys      pb.KeyServiceClient

	// lastKnown holds the latest database value Resolve saw per key, served
	// (with its age) when the service is unreachable.
	mu        sync.Mutex
	lastKnown map[string]lastKnown

	// life ends when Close is called; every watch and cache goroutine the
	// client starts runs under it and is counted in running, so Close can
	// wait for them all before closing the connection.
	life      context.Context
	stop      context.CancelFunc
	running   sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// ErrClosed: the client was closed; it starts no new watch or cache.
var ErrClosed = errors.New("secrets: client closed")

// New returns a client of the service at target ("host:port", or any gRPC
// target such as "dns:///secrets.internal:9090"). It does not wait for the
// connection unless WithBlock is given, so it succeeds while the service is
// down; calls then fail with ErrUnavailable and Resolve falls back.
func New(ctx context.Context, target string, opts ...Option) (*Client, error) {
	if target == "" {
		return nil, errors.New("secrets: empty target address")
	}
	o := defaultOptions()
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, fmt.Errorf("secrets: %w", err)
		}
	}
	if o.service != "" && o.instance == "" {
		o.instance, _ = os.Hostname()
		if o.instance == "" {
			o.instance = "unknown"
		}
	}
	local := IsLoopback(target)
	var creds credentials.TransportCredentials
	switch {
	case o.tls != nil:
		creds = credentials.NewTLS(o.tls)
	case local || o.insecure:
		creds = insecure.NewCredentials()
	default:
		creds = credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12})
	}
	dial := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		// gRPC's own reconnect backoff grows to 2 minutes; a service waiting
		// for its secrets should notice the server's return sooner.
		// MinConnectTimeout must be set with it: left zero, gRPC gives each
		// connection attempt only the current backoff (50 ms at first) to
		// finish its handshake, which a slow network or a busy host misses.
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: grpcbackoff.Config{
			BaseDelay: max(o.retry.InitialBackoff, 50*time.Millisecond), Multiplier: 1.6, Jitter: 0.2,
			MaxDelay: max(o.retry.MaxBackoff, time.Second)}, MinConnectTimeout: 20 * time.Second}),
		grpc.WithChainUnaryInterceptor(retryInterceptor(o.retry, o.timeout)),
	}
	if o.tracer != nil {
		// The caller's trace context reaches the service (a span per
		// attempt). Only when asked: it costs every call a little.
		dial = append(dial, grpc.WithStatsHandler(otelgrpc.NewClientHandler(
			otelgrpc.WithTracerProvider(o.tracer), otelgrpc.WithPropagators(o.propagator))))
	}
	if o.token != "" {
		dial = append(dial, grpc.WithPerRPCCredentials(bearer{token: o.token, allowPlaintext: local}))
	}
	dial = append(dial, o.dialOpts...)
	conn, err := grpc.NewClient(target, dial...)
	if err != nil {
		return nil, fmt.Errorf("secrets: %w", err)
	}
	c := &Client{
		target: target, opts: o, conn: conn,
		secrets:   pb.NewSecretServiceClient(conn),
		providers: pb.NewProviderServiceClient(conn),
		audit:     pb.NewAuditServiceClient(conn),
		tokens:    pb.NewTokenServiceClient(conn),
		keys:      pb.NewKeyServiceClient(conn),
		lastKnown: map[string]lastKnown{},
	}
	c.life, c.stop = context.WithCancel(context.Background())
	if o.block {
		if err := c.waitReady(ctx); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// waitReady connects and waits until the connection is ready.
func (c *Client) waitReady(ctx context.Context) error {
	c.conn.Connect()
	for {
		s := c.conn.GetState()
		if s == connectivity.Ready {
			return nil
		}
		if !c.conn.WaitForStateChange(ctx, s) {
			return fmt.Errorf("secrets: connecting to %s: %w", c.target, ctx.Err())
		}
	}
}

// Target returns the address the client was created with.
func (c *Client) Target() string { return c.target }

// Conn returns the underlying connection, e.g. for the gRPC health service.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Close ends every watch and cache the client started (their channels
// close, their goroutines return; a closed cache's Get keeps answering from
// its last values), then closes the connection. It returns once all of
// them have ended, so it must not be called from a cache callback.
// Closing twice is harmless.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.stop()
		c.mu.Unlock()
		c.running.Wait()
		c.closeErr = c.conn.Close()
	})
	return c.closeErr
}

// spawn runs fn on a goroutine that Close waits for; it reports false (and
// runs nothing) once the client is closed.
func (c *Client) spawn(fn func()) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.life.Err() != nil {
		return false
	}
	c.running.Add(1)
	go func() {
		defer c.running.Done()
		fn()
	}()
	return true
}

// Consumer returns the consumer identity given with WithConsumer (empty
// service when none).
func (c *Client) Consumer() Consumer {
	return Consumer{Service: c.opts.service, Instance: c.opts.instance}
}

// bearer sends the token as per-call credentials.
type bearer struct {
	token          string
	allowPlaintext bool
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

// RequireTransportSecurity keeps the token off plaintext connections,
// except to this machine, where nobody can listen in on the wire.
func (b bearer) RequireTransportSecurity() bool { return !b.allowPlaintext }

// IsLoopback reports whether a gRPC target names this machine: a loopback
// IP, "localhost", or a unix socket. Such targets default to plaintext.
func IsLoopback(target string) bool {
	if strings.HasPrefix(target, "unix:") || strings.HasPrefix(target, "unix-abstract:") {
		return true
	}
	hostport := target
	if i := strings.Index(target, "://"); i >= 0 {
		u, err := url.Parse(target)
		if err != nil {
			return false
		}
		switch u.Scheme {
		case "unix", "unix-abstract":
			return true
		case "passthrough", "dns":
		default:
			return false
		}
		hostport = strings.TrimPrefix(u.Path, "/")
		if hostport == "" {
			hostport = u.Opaque
		}
	}
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = strings.Trim(hostport, "[]")
	}
	if strings.EqualFold(host, "localhost") || strings.HasSuffix(strings.ToLower(host), ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
