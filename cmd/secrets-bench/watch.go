package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
)

// watchKey is the secret the change-stream phase writes.
const watchKey = "BENCH_WATCH"

// connectAll makes sure every connection is up, on the server side too, by
// calling the (public) health service once on each, par at a time.
func connectAll(ctx context.Context, conns []*grpc.ClientConn, par int) error {
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	var firstErr error
	var mu sync.Mutex
	for _, c := range conns {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			_, err := healthpb.NewHealthClient(c).Check(cctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
			if err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = fmt.Errorf("connecting: %w", err)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return firstErr
}

// dialReplicas opens n connections spread evenly over the replicas.
func (b *bench) dialReplicas(ctx context.Context, n int, token string) ([]*grpc.ClientConn, error) {
	var conns []*grpc.ClientConn
	for i, r := range b.replicas {
		k := n / len(b.replicas)
		if i < n%len(b.replicas) {
			k++
		}
		cs, err := dial(ctx, r.GRPC, token, k)
		if err != nil {
			closeAll(conns)
			return nil, err
		}
		conns = append(conns, cs...)
	}
	// Interleave, so that stream i on conns[i%n] alternates replicas.
	out := make([]*grpc.ClientConn, 0, n)
	half := (n + 1) / 2
	for i := range half {
		out = append(out, conns[i])
		if half+i < n {
			out = append(out, conns[half+i])
		}
	}
	return out, nil
}

// settle waits until the host's goroutine count is back near base (the
// server has torn down the previous phase's streams), so that the next
// memory baseline is clean.
func (b *bench) settle(base int) {
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		r, err := b.host.call(hostCmd{Op: "mem"})
		if err != nil || r.Goroutines <= base+20 {
			return
		}
	}
}

func (b *bench) hostGoroutines() int {
	r, _ := b.host.call(hostCmd{Op: "mem"})
	return r.Goroutines
}

// watcherLog is what one watch stream received: each event's revision and
// arrival (ns since the phase's base time).
type watcherLog struct{ revs, at []int64 }

type watchResult struct {
	P50, P99        time.Duration
	Pairs, Expected int
	BytesPerStream  float64
	Lagged          float64 // subscriptions that overflowed their buffer (both replicas)
	CPU             cpuSplit
}

// hubLagged sums secrets_watch_lagged_total over the replicas' /metrics.
func (b *bench) hubLagged() float64 { return b.hubCounter("secrets_watch_lagged_total") }

// hubCounter sums a counter over the replicas' /metrics (-1: unreadable).
func (b *bench) hubCounter(name string) float64 {
	var sum float64
	for _, r := range b.replicas {
		resp, err := http.Get("http://" + r.HTTP + "/metrics")
		if err != nil {
			return -1
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
				f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
				sum += f
			}
		}
		resp.Body.Close()
	}
	return sum
}

// watchPhase opens n WatchChanges streams (start_revision 0, from now)
// spread over the replicas and multiplexed over b.cfg.watchConns
// connections, waits for every header, measures the server heap they take,
// then writes b.cfg.watchWrites changes spaced b.cfg.watchSpacing apart
// through the first replica.
//
// Latency of an event at a watcher = its receive time − the time the
// writer's PutSecret returned. The change commits before the response is
// sent, so this slightly under-estimates commit-to-delivery (a watcher may
// even see the event before the writer sees its response: such pairs count
// as negative latencies, not clamped). Writer and watchers are goroutines of
// this process: one monotonic clock. The watchers' own scheduling delay on
// this 2-core machine is included.
//
// frames picks the receivers: false, grpc-go's client (a goroutine per
// stream); true, frame-level receivers (framewatch.go: a goroutine per
// connection), so that the figure is the server's rather than the two
// sharing the machine's cores.
func (b *bench) watchPhase(ctx context.Context, n int, frames bool) (watchResult, error) {
	var res watchResult
	receivers := "grpc-go receivers, a goroutine per stream"
	if frames {
		receivers = "frame-level receivers, a goroutine per connection"
	}
	b.progress(fmt.Sprintf("change stream: %d watch streams over %d connections to %d replicas (%s), %d writes %s apart",
		n, b.cfg.watchConns, len(b.replicas), receivers, b.cfg.watchWrites, b.cfg.watchSpacing))
	baseG := b.hostGoroutines()
	var conns []*grpc.ClientConn
	if !frames {
		var err error
		if conns, err = b.dialReplicas(ctx, b.cfg.watchConns, b.token); err != nil {
			return res, err
		}
		defer closeAll(conns) // also closed (earlier) below, before settling
	}
	writerConns, err := dial(ctx, b.replicas[0].GRPC, b.token, 1)
	if err != nil {
		return res, err
	}
	defer closeAll(writerConns)
	writer := pb.NewSecretServiceClient(writerConns[0])
	// Create the key first, so the measured writes are all new versions.
	if _, err := writer.PutSecret(ctx, &pb.PutSecretRequest{Key: watchKey, Value: []byte("initial")}); err != nil {
		return res, err
	}
	mem0, stack0, err := b.host.memStack()
	if err != nil {
		return res, err
	}

	logs := make([]watcherLog, n)
	sctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	stopFrames := func() {}
	defer func() { cancel(); wg.Wait(); stopFrames(); closeAll(conns); b.settle(baseG) }()
	base := time.Now()
	var delivered [64]paddedCount
	failure := &streamFailure{}
	lagged0 := b.hubLagged()
	stalls0 := b.hubCounter("secrets_watch_send_stalls_total")
	opened := make(chan struct{}, n)
	if frames {
		addrs := make([]string, len(b.replicas))
		for i, r := range b.replicas {
			addrs[i] = r.GRPC
		}
		stop, err := openFrameStreams(sctx, addrs, b.cfg.watchConns, b.token, n, logs, base, delivered[:], opened, failure)
		if err != nil {
			return res, err
		}
		stopFrames = stop
	}
	sem := make(chan struct{}, 256)
	for i := range n {
		if frames {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			fail := func(err error) {
				failure.fail(err)
				opened <- struct{}{}
			}
			stream, err := pb.NewSecretServiceClient(conns[i%len(conns)]).WatchChanges(sctx, &pb.WatchChangesRequest{})
			if err != nil {
				<-sem
				fail(err)
				return
			}
			m, err := stream.Recv()
			<-sem
			if err != nil || m.GetHeader() == nil {
				fail(fmt.Errorf("first message %v, %v", m, err))
				return
			}
			opened <- struct{}{}
			l := &logs[i]
			l.revs, l.at = make([]int64, 0, b.cfg.watchWrites), make([]int64, 0, b.cfg.watchWrites)
			// As an efficient client receives: the header's message reused
			// for every event (each is still decoded whole), the clock read once per
			// event, and a delivery counter shared by few streams (one
			// counter for all 10,000 bounces its cache line between the
			// cores at every event).
			count := &delivered[i%len(delivered)]
			for {
				if err := stream.RecvMsg(m); err != nil {
					if sctx.Err() == nil {
						failure.fail(err)
					}
					return
				}
				if ev := m.GetEvent(); ev != nil {
					l.at = append(l.at, int64(time.Since(base)))
					l.revs = append(l.revs, ev.GetRevision())
					count.Add(1)
				}
			}
		}()
	}
	openTimeout := time.After(3 * time.Minute)
	for range n {
		select {
		case <-opened:
		case <-openTimeout:
			return res, errors.New("watch streams not open after 3 minutes")
		}
	}
	if f := failure.failed.Load(); f > 0 {
		return res, fmt.Errorf("%d of %d watch streams failed to open: %v", f, n, failure.firstErr.get())
	}
	b.progressf("  %d streams open in %.1fs", n, time.Since(base).Seconds())
	time.Sleep(200 * time.Millisecond) // let the hub register the last ones
	mem1, stack1, err := b.host.memStack()
	if err != nil {
		return res, err
	}
	res.BytesPerStream = (float64(mem1) - float64(mem0)) / float64(n)
	stackPerStream := (float64(stack1) - float64(stack0)) / float64(n)

	written := map[int64]int64{} // revision -> PutSecret returned (ns since base)
	rng := rand.New(rand.NewPCG(2, 3))
	var writeErr error
	var drained time.Duration
	var stopProfile func()
	if b.cfg.profileDir != "" && n == b.cfg.watchLarge {
		var err error
		name := fmt.Sprintf("watch-%d", n)
		if frames {
			name += "-frames"
		}
		if stopProfile, err = b.startProfile(name, fmt.Sprintf("%d watch streams, writes and delivery", n), 0); err != nil {
			return res, err
		}
	}
	cpu := b.cpuDuring(func() {
		start := time.Now()
		for i := range b.cfg.watchWrites {
			time.Sleep(time.Until(start.Add(time.Duration(i) * b.cfg.watchSpacing)))
			resp, err := writer.PutSecret(ctx, &pb.PutSecretRequest{Key: watchKey, Value: randomValue(rng, valueSize)})
			if err != nil {
				writeErr = fmt.Errorf("watch write: %w", err)
				return
			}
			written[resp.GetRevision()] = int64(time.Since(base))
		}
		res.Expected = n * len(written)
		lastWrite := time.Now()
		for deadline := time.Now().Add(30 * time.Second); sumCounts(delivered[:]) < int64(res.Expected) && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
		}
		drained = time.Since(lastWrite)
	})
	if stopProfile != nil {
		stopProfile()
	}
	if writeErr != nil {
		return res, writeErr
	}
	res.CPU = cpu
	res.Lagged = b.hubLagged() - lagged0
	if stalls := b.hubCounter("secrets_watch_send_stalls_total") - stalls0; stalls > 0 {
		// A stream taken off the shared senders (a send held one for
		// 50 ms): these bench clients all read, so it was the machine.
		b.note(fmt.Sprintf("watch %d: %.0f streams stalled a sender and went back to their own goroutines", n, stalls))
	}
	cancel()
	wg.Wait()
	stopFrames()
	if f := failure.failed.Load(); f > 0 {
		b.note(fmt.Sprintf("watch %d: %d streams ended early (first: %v)", n, f, failure.firstErr.get()))
	}

	lat := make([]int64, 0, res.Expected)
	for _, l := range logs {
		for j, rev := range l.revs {
			if t, ok := written[rev]; ok {
				lat = append(lat, l.at[j]-t)
			}
		}
	}
	res.Pairs = len(lat)
	if res.Pairs < res.Expected {
		b.note(fmt.Sprintf("watch %d: %d of %d (watcher, event) pairs delivered within 30 s of the last write",
			n, res.Pairs, res.Expected))
	}
	slices.Sort(lat)
	res.P50, res.P99 = time.Duration(percentile(lat, 0.5)), time.Duration(percentile(lat, 0.99))
	heap := fmt.Sprintf("; server heap +%.0f B per idle stream (goroutine stacks %.0f B of it)", res.BytesPerStream, stackPerStream)
	if frames {
		// Its connections opened after the baseline: not a per-stream figure.
		heap, res.BytesPerStream = "", 0
	}
	b.progressf("  watch %d: p50 %s, p99 %s over %d pairs (delivery ended %.1fs after the last write returned; "+
		"%.0f subscriptions overflowed and caught up from the log)%s",
		n, ms(res.P50), ms(res.P99), res.Pairs, drained.Seconds(), res.Lagged, heap)
	b.progressf("  watch %d (writes and delivery): %s", n, res.CPU)
	return res, nil
}

// idleConnPhase measures the server heap per idle client connection (no
// streams): heap before and after opening n connections spread over the
// replicas.
func (b *bench) idleConnPhase(ctx context.Context, n int) (float64, error) {
	b.progress(fmt.Sprintf("idle connections: %d gRPC connections, no streams", n))
	baseG := b.hostGoroutines()
	mem0, err := b.host.mem()
	if err != nil {
		return 0, err
	}
	conns, err := b.dialReplicas(ctx, n, b.token)
	if err != nil {
		return 0, err
	}
	defer func() { closeAll(conns); b.settle(baseG) }()
	time.Sleep(200 * time.Millisecond)
	mem1, err := b.host.mem()
	if err != nil {
		return 0, err
	}
	per := (float64(mem1) - float64(mem0)) / float64(n)
	b.progressf("  idle connections: server heap +%.0f B per connection", per)
	return per, nil
}

// paddedCount is a counter alone on its cache line.
type paddedCount struct {
	atomic.Int64
	_ [56]byte
}

func sumCounts(cs []paddedCount) int64 {
	var n int64
	for i := range cs {
		n += cs[i].Load()
	}
	return n
}

// firstError keeps the first error set.
type firstError struct {
	mu  sync.Mutex
	err error
}

func (f *firstError) set(err error) {
	f.mu.Lock()
	if f.err == nil {
		f.err = err
	}
	f.mu.Unlock()
}

func (f *firstError) get() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}
