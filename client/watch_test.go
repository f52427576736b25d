package client_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"

	"github.com/orient-bot/secrets/client"
	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/server/app"
)

// nextEvents reads responses until n events arrived.
func nextEvents(t *testing.T, ch <-chan client.WatchResponse, n int, within time.Duration) []client.ChangeEvent {
	t.Helper()
	var out []client.ChangeEvent
	timeout := time.After(within)
	for len(out) < n {
		select {
		case r, ok := <-ch:
			if !ok {
				t.Fatalf("watch closed after %d events", len(out))
			}
			if r.Err != nil {
				t.Fatalf("watch ended: %v", r.Err)
			}
			out = append(out, r.Events...)
		case <-timeout:
			t.Fatalf("%d of %d events after %v", len(out), n, within)
		}
	}
	return out
}

func TestWatchResumesAcrossServerRestart(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	a := startServer(t, serverOpts{addr: addr})
	c := dial(t, addr)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	ch := c.Watch(ctx, client.WatchKeys("CUSTOM_W"))
	if r := <-ch; !r.Created {
		t.Fatalf("first response = %+v", r)
	}
	put(t, c, "CUSTOM_W", "1")
	first := nextEvents(t, ch, 1, 5*time.Second)[0]
	if first.Kind != client.ChangeValueAdded || first.Key != "CUSTOM_W" || first.Version != 1 {
		t.Fatalf("first event = %+v", first)
	}

	a.Stop()
	// Changes committed while the watcher's server is down, through a
	// replica on the same database.
	b := startServer(t, serverOpts{databaseURL: a.DatabaseURL, kekURL: a.KEKURL})
	cb := dial(t, b.GRPCAddr())
	put(t, cb, "CUSTOM_W", "2")
	put(t, cb, "CUSTOM_UNWATCHED", "x")
	put(t, cb, "CUSTOM_W", "3")
	startServer(t, serverOpts{addr: addr, databaseURL: a.DatabaseURL, kekURL: a.KEKURL})
	put(t, cb, "CUSTOM_W", "4")

	evs := nextEvents(t, ch, 3, 10*time.Second)
	var versions []int64
	for _, e := range evs {
		versions = append(versions, e.Version)
		if e.Key != "CUSTOM_W" || e.Revision <= first.Revision {
			t.Fatalf("resumed event %+v (first was %d)", e, first.Revision)
		}
	}
	if diff := cmp.Diff([]int64{2, 3, 4}, versions); diff != "" {
		t.Fatalf("versions after resume (-want +got):\n%s", diff)
	}
}

func TestWatchRelistRequired(t *testing.T) {
	t.Parallel()
	srv := startServer(t, serverOpts{configure: func(c *app.Config) {
		c.ChangeRetentionCount = 5
		c.MaintenanceInterval = 100 * time.Millisecond
	}})
	c := dial(t, srv.GRPCAddr())
	for i := range 20 {
		put(t, c, "CUSTOM_COMPACT", fmt.Sprint(i))
	}
	eventually(t, 10*time.Second, "revision 2 still watchable after compaction", func() bool {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		for r := range c.Watch(ctx, client.WatchFromRevision(2)) {
			if r.Err != nil {
				if !r.RelistRequired() || !errors.Is(r.Err, client.ErrRevisionCompacted) {
					t.Fatalf("watch error %v is not a relist signal", r.Err)
				}
				return true
			}
			if len(r.Events) > 0 {
				return false
			}
		}
		t.Fatal("watch closed without an error")
		return false
	})
}

func TestWatchReportsLoadedRevision(t *testing.T) {
	t.Parallel()
	srv := startServer(t, serverOpts{})
	c := dial(t, srv.GRPCAddr(), client.WithConsumer("orient-slack-bot", "host-1"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	loaded := put(t, c, "SLACK_BOT_TOKEN", "xoxb-1").Revision
	ch := c.Watch(ctx, client.WatchKeys("SLACK_BOT_TOKEN"), client.WatchLoadedRevision(loaded))
	<-ch
	changed := put(t, c, "SLACK_BOT_TOKEN", "xoxb-2").Revision
	nextEvents(t, ch, 1, 5*time.Second)

	consumers, _, err := c.ListConsumers(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	want := []client.PendingChange{{Key: "SLACK_BOT_TOKEN", Revision: changed}}
	if len(consumers) != 1 || consumers[0].Consumer.String() != "orient-slack-bot/host-1" || !cmp.Equal(want, consumers[0].Pending) {
		t.Fatalf("consumers = %+v", consumers)
	}
	st, err := c.ReportConsumerState(ctx, client.Consumer{}, changed, []string{"SLACK_BOT_TOKEN"}, nil)
	if err != nil || len(st.Pending) != 0 || st.LoadedRevision != changed {
		t.Fatalf("after report = %+v, %v", st, err)
	}
}

// silentServer answers WatchChanges with a header and an event, then ends
// the first stream, and stays silent on later ones: a stream that ends and
// one that stalls.
// silentServer sends a stream's header (after open, as a loaded service
// does: authentication, consumer registration, queueing) and, from
// revision 0 or with keepOpen, an event; from revision 0 without keepOpen
// the stream then ends, else it goes silent.
type silentServer struct {
	pb.UnimplementedSecretServiceServer
	open     time.Duration
	keepOpen bool
	starts   chan int64
}

func (s *silentServer) WatchChanges(req *pb.WatchChangesRequest, st grpc.ServerStreamingServer[pb.WatchChangesResponse]) error {
	s.starts <- req.GetStartRevision()
	select {
	case <-time.After(s.open):
	case <-st.Context().Done():
		return st.Context().Err()
	}
	if err := st.Send(&pb.WatchChangesResponse{Result: &pb.WatchChangesResponse_Header{Header: &pb.WatchHeader{Revision: 7}}}); err != nil {
		return err
	}
	if req.GetStartRevision() == 0 || s.keepOpen {
		ev := &pb.ChangeEvent{Revision: 8, Key: "CUSTOM_S", Kind: pb.ChangeKind_CHANGE_KIND_VALUE_ADDED}
		if err := st.Send(&pb.WatchChangesResponse{Result: &pb.WatchChangesResponse_Event{Event: ev}}); err != nil || !s.keepOpen {
			return err
		}
	}
	<-st.Context().Done()
	return nil
}

// dialSilent serves fake on a loopback port for the test's duration and
// returns a client of it.
func dialSilent(t *testing.T, fake *silentServer) *client.Client {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	pb.RegisterSecretServiceServer(gs, fake)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	return dial(t, lis.Addr().String())
}

func TestWatchReconnectsStreamThatEndsOrStalls(t *testing.T) {
	t.Parallel()
	fake := &silentServer{starts: make(chan int64, 10)}
	c := dialSilent(t, fake)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	t0 := time.Now()
	ch := c.Watch(ctx, client.WatchProgressInterval(100*time.Millisecond))
	var starts []int64
	for len(starts) < 3 {
		select {
		case s := <-fake.starts:
			starts = append(starts, s)
		case <-time.After(5 * time.Second):
			t.Fatalf("watch did not reconnect; start revisions so far %v", starts)
		}
	}
	// From now; after the stream ended, from the event (8); after the
	// stall (no message in 2 × 100 ms), from 8 again.
	if !slices.Equal(starts, []int64{0, 8, 8}) {
		t.Fatalf("start revisions = %v", starts)
	}
	if d := time.Since(t0); d > 3*time.Second {
		t.Fatalf("stall detected after %v", d)
	}
	if r := <-ch; !r.Created || r.Revision != 7 {
		t.Fatalf("first = %+v", r)
	}
	if r := <-ch; len(r.Events) != 1 || r.Events[0].Revision != 8 {
		t.Fatalf("second = %+v", r)
	}
}

// A stream whose header comes later than twice the progress interval is
// being opened, not stalled: cutting it there would cancel every attempt
// on a loaded service before it could answer, and the watch would never
// deliver anything.
func TestWatchWaitsForASlowOpening(t *testing.T) {
	t.Parallel()
	const interval = 50 * time.Millisecond
	fake := &silentServer{open: 10 * interval, keepOpen: true, starts: make(chan int64, 100)}
	c := dialSilent(t, fake)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := c.Watch(ctx, client.WatchProgressInterval(interval))
	select {
	case r := <-ch:
		if !r.Created || r.Revision != 7 {
			t.Fatalf("first = %+v", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no header in 5 s; the watch started %d streams", len(fake.starts))
	}
	if evs := nextEvents(t, ch, 1, 5*time.Second); evs[0].Revision != 8 {
		t.Fatalf("event = %+v", evs[0])
	}
	if n := len(fake.starts); n != 1 {
		t.Fatalf("%d streams started before the first was answered; want 1", n)
	}
	<-fake.starts
	// Silence after the header is still a stall: the stream is reconnected,
	// after the event it delivered.
	select {
	case s := <-fake.starts:
		if s != 8 {
			t.Fatalf("resumed from %d; want 8", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a stream silent after its header was not taken as stalled")
	}
}
