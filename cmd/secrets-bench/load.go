package main

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// loadResult is one closed-loop run: conc workers each issuing the next call
// as soon as the previous one returns, for a fixed duration.
type loadResult struct {
	OK       int
	Errors   int
	FirstErr error
	Elapsed  time.Duration
	RPS      float64 // successful calls per second
	P50, P99 time.Duration
}

func (r loadResult) String() string {
	s := fmt.Sprintf("%.0f req/s, p50 %s, p99 %s (%d calls", r.RPS, ms(r.P50), ms(r.P99), r.OK)
	if r.Errors > 0 {
		s += fmt.Sprintf(", %d errors; first: %v", r.Errors, r.FirstErr)
	}
	return s + ")"
}

// callFunc is one call; worker identifies the goroutine (to pick a
// connection), rng is the worker's own generator.
type callFunc func(ctx context.Context, worker int, rng *rand.Rand) error

// runLoad runs fn from conc workers for d and returns throughput and latency
// of the successful calls. Calls in flight at the deadline are completed and
// counted (the elapsed time includes them).
func runLoad(ctx context.Context, conc int, d time.Duration, fn callFunc) loadResult {
	type workerOut struct {
		lat      []time.Duration
		errs     int
		firstErr error
	}
	outs := make([]workerOut, conc)
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for w := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(start.UnixNano()), uint64(w)))
			o := &outs[w]
			o.lat = make([]time.Duration, 0, 1<<14)
			for ctx.Err() == nil {
				t0 := time.Now()
				if !t0.Before(deadline) {
					return
				}
				if err := fn(ctx, w, rng); err != nil {
					if ctx.Err() != nil {
						return
					}
					o.errs++
					if o.firstErr == nil {
						o.firstErr = err
					}
					continue
				}
				o.lat = append(o.lat, time.Since(t0))
			}
		}()
	}
	wg.Wait()
	r := loadResult{Elapsed: time.Since(start)}
	var all []time.Duration
	for _, o := range outs {
		all = append(all, o.lat...)
		r.Errors += o.errs
		if r.FirstErr == nil {
			r.FirstErr = o.firstErr
		}
	}
	r.OK = len(all)
	r.RPS = float64(r.OK) / r.Elapsed.Seconds()
	slices.Sort(all)
	r.P50, r.P99 = percentile(all, 0.50), percentile(all, 0.99)
	return r
}

// percentile returns the q-quantile (nearest rank) of sorted values.
func percentile[T int64 | time.Duration](sorted []T, q float64) T {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// msf converts a duration to fractional milliseconds.
func msf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func ms(d time.Duration) string { return fmt.Sprintf("%.2fms", msf(d)) }

// bearer is per-RPC credentials carrying the admin token (plaintext
// loopback, as in internal/testserver).
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return false }

// dial opens n client connections to target ("" token: none) and waits
// until each is connected.
func dial(ctx context.Context, target, token string, n int) ([]*grpc.ClientConn, error) {
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearer(token)))
	}
	conns := make([]*grpc.ClientConn, 0, n)
	for range n {
		c, err := grpc.NewClient(target, opts...)
		if err != nil {
			closeAll(conns)
			return nil, err
		}
		conns = append(conns, c)
	}
	if err := connectAll(ctx, conns, 64); err != nil {
		closeAll(conns)
		return nil, err
	}
	return conns, nil
}

func closeAll(conns []*grpc.ClientConn) {
	for _, c := range conns {
		c.Close()
	}
}
