package client

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
)

// Option configures a Client.
type Option func(*options) error

type options struct {
	token        string
	tls          *tls.Config
	insecure     bool
	service      string
	instance     string
	timeout      time.Duration
	retry        RetryPolicy
	dialOpts     []grpc.DialOption
	lookupEnv    func(string) (string, bool)
	defaults     map[string]string
	defaultsFile string
	logger       *slog.Logger
	block        bool
	tracer       trace.TracerProvider
	propagator   propagation.TextMapPropagator
	fallbackWait time.Duration
}

func defaultOptions() options {
	return options{
		timeout:   10 * time.Second,
		retry:     DefaultRetryPolicy,
		lookupEnv: os.LookupEnv,
		// The process's own log: a refused token or a cache that fails
		// closed must be seen without extra set-up.
		logger:       slog.Default(),
		fallbackWait: DefaultFallbackWait,
	}
}

// RetryPolicy says how often and how patiently calls are retried when the
// service is unavailable. Only calls that are safe to repeat are retried:
// reads, watches, and writes that carry an etag or a request id (the
// client gives every write a request id, so a retried write returns the
// first attempt's result instead of writing twice).
type RetryPolicy struct {
	// MaxAttempts counts the first try; 1 disables retries.
	MaxAttempts int
	// InitialBackoff is the wait before the first retry; it grows by
	// Multiplier up to MaxBackoff, with ±20% jitter.
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	Multiplier     float64
}

// DefaultRetryPolicy retries 4 times over about 3 seconds.
var DefaultRetryPolicy = RetryPolicy{MaxAttempts: 5, InitialBackoff: 200 * time.Millisecond, MaxBackoff: 2 * time.Second, Multiplier: 2}

// WithToken sends token as "authorization: Bearer <token>" on every call.
// The token is refused over plaintext except to loopback addresses.
func WithToken(token string) Option {
	return func(o *options) error { o.token = token; return nil }
}

// WithTLS uses TLS with the given configuration (a client certificate in it
// gives mutual TLS). Without TLS options, loopback targets use plaintext and
// other targets TLS with the system's roots.
func WithTLS(cfg *tls.Config) Option {
	return func(o *options) error {
		if cfg == nil {
			return errors.New("WithTLS: nil config")
		}
		o.tls = cfg.Clone()
		return nil
	}
}

// WithTLSFiles uses TLS trusting the PEM CA bundle caFile (empty: the
// system's roots) and, when certFile and keyFile are set, presents that
// client certificate (mutual TLS).
func WithTLSFiles(caFile, certFile, keyFile string) Option {
	return func(o *options) error {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if caFile != "" {
			pem, err := os.ReadFile(caFile)
			if err != nil {
				return fmt.Errorf("CA file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return fmt.Errorf("CA file %s: no PEM certificates", caFile)
			}
			cfg.RootCAs = pool
		}
		if (certFile == "") != (keyFile == "") {
			return errors.New("client certificate: both the certificate and the key file are needed")
		}
		if certFile != "" {
			cert, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				return fmt.Errorf("client certificate: %w", err)
			}
			cfg.Certificates = []tls.Certificate{cert}
		}
		o.tls = cfg
		return nil
	}
}

// WithInsecure forces plaintext even to a non-loopback target (for a
// trusted network or a TLS-terminating sidecar). A token is still refused
// over it: gRPC will not send per-call credentials in the clear.
func WithInsecure() Option {
	return func(o *options) error { o.insecure = true; return nil }
}

// WithConsumer names this service instance for restart tracking (watches
// and caches register it). instance defaults to the host name.
func WithConsumer(service, instance string) Option {
	return func(o *options) error {
		if service == "" {
			return errors.New("WithConsumer: empty service name")
		}
		o.service, o.instance = service, instance
		return nil
	}
}

// WithTimeout bounds each call whose context has no deadline (default 10 s,
// retries included). Watches are not bounded.
func WithTimeout(d time.Duration) Option {
	return func(o *options) error { o.timeout = d; return nil }
}

// WithRetry replaces the retry policy.
func WithRetry(p RetryPolicy) Option {
	return func(o *options) error {
		if p.MaxAttempts < 1 {
			p.MaxAttempts = 1
		}
		if p.Multiplier < 1 {
			p.Multiplier = 1
		}
		o.retry = p
		return nil
	}
}

// WithDialOptions adds gRPC dial options (interceptors, a custom resolver,
// keepalive settings).
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) error { o.dialOpts = append(o.dialOpts, opts...); return nil }
}

// WithEnvironment replaces os.LookupEnv as the environment the resolver
// consults (useful in tests, or to read a prefixed namespace).
func WithEnvironment(lookup func(key string) (string, bool)) Option {
	return func(o *options) error { o.lookupEnv = lookup; return nil }
}

// WithDefaults sets config defaults, the lowest-priority source.
func WithDefaults(defaults map[string]string) Option {
	return func(o *options) error {
		if o.defaults == nil {
			o.defaults = map[string]string{}
		}
		for k, v := range defaults {
			o.defaults[k] = v
		}
		return nil
	}
}

// WithDefaultsFile reads config defaults from a YAML or JSON file of
// KEY: value pairs (see LoadDefaultsFile).
func WithDefaultsFile(path string) Option {
	return func(o *options) error {
		d, err := LoadDefaultsFile(path)
		if err != nil {
			return err
		}
		o.defaultsFile = path
		return WithDefaults(d)(o)
	}
}

// WithLogger receives the client's background messages (reconnects,
// fallbacks, refused credentials); the default is slog.Default(). It never
// receives values. slog.New(slog.DiscardHandler) silences the client.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) error {
		if l != nil {
			o.logger = l
		}
		return nil
	}
}

// DefaultFallbackWait is how long Resolve, ResolveAll, Load and NewCache
// keep retrying an unavailable service before they fall back.
const DefaultFallbackWait = time.Second

// WithFallbackWait bounds how long Resolve, ResolveAll, Load and NewCache
// keep retrying a service that answers UNAVAILABLE (down, restarting,
// unreachable) before they fall back to the last-known value, the
// environment and the defaults (default 1 s). It bounds the retries, not a
// call the service is answering: a slow answer is still awaited (up to
// WithTimeout). 0 means no retry.
func WithFallbackWait(d time.Duration) Option {
	return func(o *options) error {
		if d < 0 {
			return errors.New("WithFallbackWait: negative duration")
		}
		o.fallbackWait = d
		return nil
	}
}

// WithBlock makes New wait until the connection is ready (or its context
// ends). Without it New returns at once and connects on first use, so a
// service can start while the secrets service is down.
func WithBlock() Option {
	return func(o *options) error { o.block = true; return nil }
}

// WithTracerProvider traces the client's calls: a gRPC client span per
// attempt goes to tp, and the caller's trace context (from the ctx of each
// call) reaches the service through propagator (nil: W3C trace context).
// An application that set OpenTelemetry's globals passes
// otel.GetTracerProvider() and otel.GetTextMapPropagator(). Without it the
// client does no tracing work at all. Spans record the method and status,
// never a value or the token.
func WithTracerProvider(tp trace.TracerProvider, propagator propagation.TextMapPropagator) Option {
	return func(o *options) error {
		if tp == nil {
			return errors.New("WithTracerProvider: nil provider")
		}
		if propagator == nil {
			propagator = propagation.TraceContext{}
		}
		o.tracer, o.propagator = tp, propagator
		return nil
	}
}
