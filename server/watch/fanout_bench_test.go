//go:build unix

package watch

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/orient-bot/secrets/server/store"
)

// nullSource is a Source with an empty log: the benchmark publishes by hand.
type nullSource struct{}

func (nullSource) Revision(context.Context) (int64, error)       { return 0, nil }
func (nullSource) OldestRevision(context.Context) (int64, error) { return 1, nil }
func (nullSource) ChangesAfter(context.Context, int64, int64, int) ([]store.Change, error) {
	return nil, nil
}
func (nullSource) Listen(context.Context) (*store.Listener, error) { return nil, context.Canceled }
func (nullSource) TouchConsumers(context.Context, []store.ConsumerID) error {
	return nil
}

// BenchmarkFanout is the hub's cost of delivering one change to one live
// stream: a hub with `streams` live Streams, each read by its own goroutine
// (as each WatchChanges handler reads its own), is handed changes one at a
// time the way the log's reader hands them over (publish), and each change
// is waited for at every stream before the next, as with writes spaced
// apart. One op is one (change, stream) delivery: ns/op and allocs/op are
// per stream per change, the figure 10,000 watchers multiply. cpu-ns/op is
// the process's CPU time per op (user + system, all threads): unlike ns/op
// it does not grow when other processes take the cores. With serve=own
// each stream's goroutine takes and delivers its changes (Next); with
// serve=senders the streams are served as WatchChanges serves them
// (Serve): the hub's sender goroutines deliver.
func BenchmarkFanout(b *testing.B) {
	for _, serve := range []string{"own", "senders"} {
		for _, streams := range []int{100, 1000, 5000} {
			b.Run(fmt.Sprintf("serve=%s/streams=%d", serve, streams), func(b *testing.B) { benchFanout(b, streams, serve == "senders") })
		}
	}
}

func benchFanout(b *testing.B, streams int, serve bool) {
	h := New(nullSource{}, Options{NoListen: true, PollInterval: 1 << 40, ProgressInterval: 1 << 40})
	ctx, cancel := context.WithCancel(context.Background())
	var run sync.WaitGroup
	run.Go(func() { h.Run(ctx) })
	defer func() { cancel(); run.Wait() }()
	if _, err := h.Current(ctx); err != nil {
		b.Fatal(err)
	}
	var delivered atomic.Int64
	done := make(chan struct{}, 1)
	var target atomic.Int64
	var readers sync.WaitGroup
	rctx, stop := context.WithCancel(ctx)
	defer func() { stop(); readers.Wait() }()
	for range streams {
		s, err := h.Open(ctx, 0, nil)
		if err != nil {
			b.Fatal(err)
		}
		readers.Go(func() {
			defer s.Close()
			if serve {
				s.Serve(rctx, func(item Item) error {
					if item.Change != nil && delivered.Add(1) == target.Load() {
						done <- struct{}{}
					}
					return nil
				})
				return
			}
			for {
				item, err := s.Next(rctx)
				if err != nil {
					return
				}
				if item.Change != nil && delivered.Add(1) == target.Load() {
					done <- struct{}{}
				}
			}
		})
	}
	// Every stream reads once from the (empty) table, then subscribes.
	for h.Stats().Subscribers < streams {
		time.Sleep(time.Millisecond)
	}
	events := max(1, (b.N+streams-1)/streams)
	changes := make([]store.Change, events)
	for i := range changes {
		changes[i] = store.Change{Revision: int64(i + 1), Kind: store.ChangeValueAdded, Key: "K"}
	}
	b.ReportAllocs()
	cpu0 := cpuTime()
	b.ResetTimer()
	for i := range changes {
		target.Store(int64(i+1) * int64(streams))
		h.publish(changes[i : i+1])
		<-done
	}
	b.StopTimer()
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(events*streams), "cpu-ns/op")
	if got, want := delivered.Load(), int64(events*streams); got != want {
		b.Fatalf("delivered %d, want %d", got, want)
	}
}

// cpuTime is the process's CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
