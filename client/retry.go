package client

import (
	"context"
	cryptorand "crypto/rand"
	"encoding/hex"
	"math/rand/v2"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"

	_ "github.com/orient-bot/secrets/gen/orient/secrets/v1" // registers the descriptors
)

// safeToRepeat reports whether an RPC changes nothing, or sets an absolute
// state, and so may be retried as it is: what its proto declares with
// protobuf's idempotency_level (NO_SIDE_EFFECTS or IDEMPOTENT).
func safeToRepeat(method string) bool {
	service, name, ok := strings.Cut(strings.TrimPrefix(method, "/"), "/")
	if !ok {
		return false
	}
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(service))
	if err != nil {
		return false
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return false
	}
	md := sd.Methods().ByName(protoreflect.Name(name))
	if md == nil {
		return false
	}
	opts, _ := md.Options().(*descriptorpb.MethodOptions)
	switch opts.GetIdempotencyLevel() {
	case descriptorpb.MethodOptions_NO_SIDE_EFFECTS, descriptorpb.MethodOptions_IDEMPOTENT:
		return true
	}
	return false
}

// retryable reports whether a call may be repeated: reads always; writes
// only when a repeat cannot write twice — an etag makes a repeat fail
// instead of overwriting, a request id makes it return the first result.
func retryable(method string, req any) bool {
	if safeToRepeat(method) {
		return true
	}
	if r, ok := req.(interface{ GetRequestId() string }); ok && r.GetRequestId() != "" {
		return true
	}
	if r, ok := req.(interface{ GetEtag() string }); ok && r.GetEtag() != "" {
		return true
	}
	return false
}

// retryInterceptor applies the default timeout and retries UNAVAILABLE
// answers of retryable calls with jittered exponential backoff.
func retryInterceptor(p RetryPolicy, timeout time.Duration) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if _, ok := ctx.Deadline(); !ok && timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		attempts := p.MaxAttempts
		if attempts < 1 || !retryable(method, req) {
			attempts = 1
		}
		budget, bounded := ctx.Value(retryBudgetKey{}).(time.Duration)
		start := time.Now()
		b := newBackoff(p)
		for i := 1; ; i++ {
			err := invoker(ctx, method, req, reply, cc, opts...)
			if err == nil || i >= attempts || status.Code(err) != codes.Unavailable {
				return err
			}
			wait := b.next()
			if bounded {
				left := budget - time.Since(start)
				if left <= 0 {
					return err
				}
				wait = min(wait, left)
			}
			if !sleepCtx(ctx, wait) {
				return err
			}
		}
	}
}

type retryBudgetKey struct{}

// withRetryBudget bounds how long the calls made with ctx keep retrying
// UNAVAILABLE answers (the first attempt is not bounded): callers that
// have a fallback use it so a down service costs them at most d.
func withRetryBudget(ctx context.Context, d time.Duration) context.Context {
	return context.WithValue(ctx, retryBudgetKey{}, d)
}

// backoff yields jittered, exponentially growing waits.
type backoff struct {
	p   RetryPolicy
	cur time.Duration
}

func newBackoff(p RetryPolicy) *backoff {
	if p.InitialBackoff <= 0 {
		p.InitialBackoff = 100 * time.Millisecond
	}
	if p.MaxBackoff < p.InitialBackoff {
		p.MaxBackoff = p.InitialBackoff
	}
	if p.Multiplier < 1 {
		p.Multiplier = 2
	}
	return &backoff{p: p}
}

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.p.InitialBackoff
	} else {
		b.cur = min(time.Duration(float64(b.cur)*b.p.Multiplier), b.p.MaxBackoff)
	}
	// ±20% jitter keeps a fleet of clients from reconnecting in lockstep.
	return time.Duration(float64(b.cur) * (0.8 + 0.4*rand.Float64()))
}

func (b *backoff) reset() { b.cur = 0 }

// sleepCtx waits d or until ctx ends; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// newRequestID returns a random idempotency key for a write.
func newRequestID() string {
	b := make([]byte, 16)
	if _, err := cryptorand.Read(b); err != nil {
		return ""
	}
	return hex.EncodeToString(b)
}
