package reliability

import (
	"context"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testserver"
	"github.com/orient-bot/secrets/server/app"
)

// abuseEnv is the server under abuse and the normal clients that must not
// notice it.
type abuseEnv struct {
	srv    *testserver.Server
	client *http.Client // for REST calls (its idle connections closed at the end)
	// logs is the server's log, on disk: the test measures this process's
	// heap, which an in-memory copy of a growing log would inflate.
	logs   *os.File
	lat    latencies    // the normal reader's call latencies
	errs   codeCounter  // the normal reader's failures
	last   atomic.Int64 // the normal watcher's last revision
	ticks  atomic.Int64 // the last revision written by the ticker
	keys   []string
	round  int // of the abuse, from 0
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// heapInuse is the process's heap in use after a full collection: the
// in-process server's and the test's own (which closes its connections
// before the figures that matter are taken).
func heapInuse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// heapLive is the bytes of live objects after two full collections (the
// second frees what sync.Pools kept through the first).
func heapLive() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func mb(b uint64) string { return fmt.Sprintf("%.1f MB", float64(b)/(1<<20)) }

// TestAbusiveClients runs the server in process, with a normal reader and a
// normal watcher going all along, and abuses it: stalled watchers, 1,000 idle
// TCP connections on each port (and slowloris headers, and garbage instead of
// protocol), oversized gRPC messages and HTTP bodies, malformed protobuf sent
// raw on every method, malformed JSON on every REST route with a body, 10 KB
// keys, JSON nested 100,000 deep. Each abuse gets its proper error; in the
// end heap in use has grown by less than 32 MB (full mode: the
// bounded caches are filled first and the abuse runs twice, and the second
// round must not grow the live heap), no goroutine leaked, nothing
// panicked, the normal reader never failed and its p99 stayed sane, and the
// normal watcher kept receiving every revision.
func TestAbusiveClients(t *testing.T) {
	gate(t)
	logs, err := os.Create(filepath.Join(t.TempDir(), "secretsd.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logs.Close() }) // after the server stops (cleanups run last first)
	e := &abuseEnv{logs: logs, client: &http.Client{Timeout: time.Minute, Transport: &http.Transport{}}}
	e.srv = testserver.Start(t, testserver.Options{Log: e.logs, Configure: func(c *app.Config) {
		c.WatchPollInterval = 200 * time.Millisecond
		c.WatchProgressInterval = 500 * time.Millisecond
	}})
	ctx := withTimeout(t, 10*time.Minute)
	for i := range 50 {
		key := fmt.Sprintf("ABUSE_%02d", i)
		e.keys = append(e.keys, key)
		if _, err := e.srv.Secrets.PutSecret(ctx, &pb.PutSecretRequest{Key: key, Value: randomValue(64)}); err != nil {
			t.Fatal(err)
		}
	}
	if !short() {
		// Fill the bounded caches first (4,096 unwrapped data keys, 4,096
		// recent changes), so that what the abuse adds shows.
		began := time.Now()
		var wg sync.WaitGroup
		for w := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < 4200; i += 16 {
					if _, err := e.srv.Secrets.PutSecret(ctx, &pb.PutSecretRequest{Key: fmt.Sprintf("PREFILL_%d", i%500), Value: randomValue(32)}); err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		t.Logf("caches filled with 4,200 writes in %v", time.Since(began).Round(time.Millisecond))
	}
	e.startNormalClients(t)
	time.Sleep(2 * time.Second)
	base := e.lat.reset()
	heapBefore, liveBefore, goroutinesBefore := heapInuse(), heapLive(), runtime.NumGoroutine()
	t.Logf("baseline: reader %s; heap in use %s; %d goroutines", summary(base), mb(heapBefore), goroutinesBefore)

	var during []time.Duration
	phase := func(name string, f func(t *testing.T)) {
		e.lat.reset()
		began := time.Now()
		t.Run(name, f)
		d := e.lat.reset()
		during = append(during, d...)
		t.Logf("%s: %v; normal reader %s", name, time.Since(began).Round(time.Millisecond), summary(d))
	}
	// Full mode repeats the abuse: a second round must not grow the live
	// heap again (one-time growth is caches and pools; repeated growth is a
	// leak).
	var live []uint64
	for round := range size(1, 2) {
		e.round = round
		phase("StalledWatchers", e.stalledWatchers)
		phase("IdleConnections", e.idleConnections)
		phase("Oversized", e.oversized)
		phase("RawProtobufGarbage", e.rawGarbage)
		phase("MalformedJSON", e.malformedJSON)
		phase("LongKeys", e.longKeys)
		phase("DeepNesting", e.deepNesting)
		e.client.CloseIdleConnections()
		live = append(live, heapLive())
		t.Logf("round %d: live heap %s (before the abuse %s)", round+1, mb(live[round]), mb(liveBefore))
	}
	if n := len(live); n > 1 && live[n-1] > live[n-2]+4<<20 {
		t.Errorf("the live heap grew from %s to %s over a second round of abuse: a leak", mb(live[n-2]), mb(live[n-1]))
	}

	e.stopNormalClients(t)
	e.client.CloseIdleConnections()
	if !waitFor(20*time.Second, 100*time.Millisecond, func() bool { return runtime.NumGoroutine() <= goroutinesBefore+20 }) {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines after the abuse, %d before:\n%.20000s", runtime.NumGoroutine(), goroutinesBefore, buf[:runtime.Stack(buf, true)])
	}
	heapAfter, liveAfter := heapInuse(), heapLive()
	t.Logf("after: heap in use %s (before %s), live objects %s (before %s); %d goroutines (before %d)",
		mb(heapAfter), mb(heapBefore), mb(liveAfter), mb(liveBefore), runtime.NumGoroutine(), goroutinesBefore)
	if heapAfter > heapBefore+32<<20 {
		t.Errorf("heap in use grew from %s to %s over the abuse", mb(heapBefore), mb(heapAfter))
	}
	p99, base99 := percentile(during, 99), percentile(base, 99)
	t.Logf("normal reader during the abuse: %s (baseline p99 %v); failures: %s", summary(during), base99, e.errs.String())
	if p99 > max(time.Second, 20*base99) {
		t.Errorf("normal reader p99 %v during the abuse (baseline %v)", p99, base99)
	}
	if e.errs.String() != "" {
		t.Errorf("the normal reader failed: %s", e.errs.String())
	}
	logged, err := os.ReadFile(e.logs.Name())
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(logged), "panic") {
		t.Errorf("the server logged a panic")
	}
	checkConsistency(t, e.srv.DatabaseURL, nil)
}

// startNormalClients starts a reader (latency recorded), a ticker writing a
// change every 20 ms, and a watcher that must see every revision.
func (e *abuseEnv) startNormalClients(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	sc := pb.NewSecretServiceClient(dial(t, e.srv.GRPCAddr(), e.srv.AdminToken))
	e.wg.Add(3)
	go func() {
		defer e.wg.Done()
		for ctx.Err() == nil {
			began := time.Now()
			cctx, c := context.WithTimeout(ctx, 10*time.Second)
			_, err := sc.AccessSecretVersion(cctx, &pb.AccessSecretVersionRequest{Key: e.keys[mrand.IntN(len(e.keys))], Version: "latest"})
			c()
			if ctx.Err() != nil {
				return
			}
			e.lat.add(time.Since(began))
			if err != nil {
				e.errs.add(err)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	go func() {
		defer e.wg.Done()
		for ctx.Err() == nil {
			res, err := sc.PutSecret(ctx, &pb.PutSecretRequest{Key: "ABUSE_TICK", Value: randomValue(16)})
			if err == nil {
				e.ticks.Store(res.Revision)
			} else if ctx.Err() == nil {
				e.errs.addName("tick " + codeName(err))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	st, err := sc.WatchChanges(ctx, &pb.WatchChangesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer e.wg.Done()
		for {
			m, err := st.Recv()
			if err != nil {
				if ctx.Err() == nil {
					e.errs.addName("watch " + codeName(err))
				}
				return
			}
			if h := m.GetHeader(); h != nil {
				e.last.Store(h.Revision)
			}
			if ev := m.GetEvent(); ev != nil {
				if want := e.last.Load() + 1; ev.Revision != want {
					e.errs.addName(fmt.Sprintf("watch gap: got %d want %d", ev.Revision, want))
				}
				e.last.Store(ev.Revision)
			}
		}
	}()
}

func (e *abuseEnv) stopNormalClients(t *testing.T) {
	t.Helper()
	rev := e.ticks.Load()
	if !waitFor(30*time.Second, 10*time.Millisecond, func() bool { return e.last.Load() >= rev }) {
		t.Errorf("normal watcher at revision %d, the last write was %d", e.last.Load(), rev)
	}
	e.cancel()
	e.wg.Wait()
}

// stalledWatchers: 20 watchers with a 64 KiB flow-control window never read
// while 1,000 large changes go by. The normal watcher keeps up; the server's
// heap stays bounded while they are stalled.
func (e *abuseEnv) stalledWatchers(t *testing.T) {
	const stalled = 20
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for range stalled {
		conn := dial(t, e.srv.GRPCAddr(), e.srv.AdminToken, grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
		if _, err := pb.NewSecretServiceClient(conn).WatchChanges(ctx, &pb.WatchChangesRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	heap0 := heapInuse()
	n := size(300, 1000)
	var wg sync.WaitGroup
	var last atomic.Int64
	began := time.Now()
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 4 {
				key := fmt.Sprintf("STALL_%03d_%s", i%100, strings.Repeat("X", 110))
				res, err := e.srv.Secrets.PutSecret(ctx, &pb.PutSecretRequest{Key: key, Value: []byte("v")})
				if err != nil {
					t.Error(err)
					return
				}
				for cur := last.Load(); res.Revision > cur && !last.CompareAndSwap(cur, res.Revision); cur = last.Load() {
				}
			}
		}()
	}
	wg.Wait()
	written := time.Since(began)
	if !waitFor(15*time.Second, 5*time.Millisecond, func() bool { return e.last.Load() >= last.Load() }) {
		t.Errorf("normal watcher at revision %d, %d written: it stopped receiving", e.last.Load(), last.Load())
	}
	caughtUp := time.Since(began) - written
	heap1 := heapInuse()
	t.Logf("%d changes in %v with %d stalled watchers; normal watcher caught up %v after the last; heap %s -> %s",
		n, written.Round(time.Millisecond), stalled, caughtUp.Round(time.Millisecond), mb(heap0), mb(heap1))
	if heap1 > heap0+64<<20 {
		t.Errorf("heap grew by %s with %d stalled watchers", mb(heap1-heap0), stalled)
	}
}

// idleConnections: 1,000 idle TCP connections to each port, 100 half-sent
// HTTP request headers (slowloris) and 100 connections sending garbage
// instead of the protocol, on each port. The normal clients go on; the
// server drops the garbage and, after its header timeout, the slowloris
// connections.
func (e *abuseEnv) idleConnections(t *testing.T) {
	idle := size(1000, 1000)
	heap0 := heapInuse()
	httpAddr := strings.TrimPrefix(e.srv.BaseURL, "http://")
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	open := func(addr string) net.Conn {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			t.Fatalf("connection %d to %s: %v", len(conns), addr, err)
		}
		conns = append(conns, c)
		return c
	}
	for range idle {
		open(e.srv.GRPCAddr())
		open(httpAddr)
	}
	var slow, garbage []net.Conn
	for i := range 100 {
		c := open(httpAddr)
		fmt.Fprintf(c, "GET /v1/secrets HTTP/1.1\r\nHost: x\r\nX-Slow-%d: ", i)
		slow = append(slow, c)
		for _, addr := range []string{httpAddr, e.srv.GRPCAddr()} {
			g := open(addr)
			junk := make([]byte, 512)
			for j := range junk {
				junk[j] = byte(mrand.IntN(256))
			}
			g.Write(append(junk, "\r\n\r\n"...)) // a complete "request"
			garbage = append(garbage, g)
		}
	}
	time.Sleep(time.Second)
	heap1 := heapInuse()
	t.Logf("%d idle connections per port, 100 slowloris, 200 garbage: heap %s -> %s (%.1f KB per connection)",
		idle, mb(heap0), mb(heap1), float64(int64(heap1)-int64(heap0))/float64(len(conns))/1024)
	if heap1 > heap0+256<<20 {
		t.Errorf("heap grew by %s with %d open connections", mb(heap1-heap0), len(conns))
	}
	// Garbage instead of the protocol: answered or dropped, at once or, when
	// it never ends a line, after the header timeout; half-sent headers
	// (slowloris) after the header timeout (10 s). Slowloris: full mode only.
	began := time.Now()
	check := map[string][]net.Conn{"garbage": garbage}
	if !short() {
		check["slowloris"] = slow
	}
	for what, cs := range check {
		var longest time.Duration
		for _, c := range cs {
			if !closedWithin(c, 20*time.Second) {
				t.Errorf("a %s connection to %s is still open after 20s", what, c.RemoteAddr())
				break
			}
			longest = max(longest, time.Since(began))
		}
		t.Logf("%s connections closed by the server within %v", what, longest.Round(time.Millisecond))
	}
}

// closedWithin reports whether the peer closed c (EOF or reset, after any
// answer it sent) within d.
func closedWithin(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if err != nil && errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	return true
}
