package watch_test

import (
	"bytes"
	"context"
	"errors"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/orient-bot/secrets/server/watch"
)

// goid is the calling goroutine's id (tests only: to tell which goroutine
// sent).
func goid() int64 {
	var buf [64]byte
	b := buf[:runtime.Stack(buf[:], false)]
	b, _ = bytes.CutPrefix(b, []byte("goroutine "))
	id, _ := strconv.ParseInt(string(b[:bytes.IndexByte(b, ' ')]), 10, 64)
	return id
}

// served is one Serve call's record: the changes sent, in order, and how
// many were sent from another goroutine than Serve's.
type served struct {
	mu     sync.Mutex
	revs   []int64
	away   int
	notify chan struct{}
}

func (r *served) count() (n, away int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.revs), r.away
}

// serve runs s.Serve on a goroutine of its own, recording what it sends;
// block, if set, runs (unlocked) before each send. The test waits for
// Serve to return (ctx must end) before its earlier cleanups (s.Close).
func serve(t *testing.T, ctx context.Context, s *watch.Stream, block func(rev int64)) (*served, chan error) {
	r := &served{notify: make(chan struct{}, 1)}
	done := make(chan error, 1)
	exited := make(chan struct{})
	t.Cleanup(func() { <-exited })
	go func() {
		defer close(exited)
		me := goid()
		done <- s.Serve(ctx, func(item watch.Item) error {
			if item.Change == nil {
				return nil
			}
			if block != nil {
				block(item.Change.Revision)
			}
			r.mu.Lock()
			r.revs = append(r.revs, item.Change.Revision)
			if goid() != me {
				r.away++
			}
			r.mu.Unlock()
			select {
			case r.notify <- struct{}{}:
			default:
			}
			return nil
		})
	}()
	return r, done
}

// waitFor waits until r holds n changes.
func waitFor(t *testing.T, r *served, n int, within time.Duration) {
	t.Helper()
	deadline := time.After(within)
	for {
		if got, _ := r.count(); got >= n {
			return
		}
		select {
		case <-r.notify:
		case <-deadline:
			got, _ := r.count()
			t.Fatalf("%d of %d changes after %s", got, n, within)
		}
	}
}

func checkInOrder(t *testing.T, r *served, from int64, n int) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.revs) != n {
		t.Fatalf("got %d changes, want %d", len(r.revs), n)
	}
	for i, rev := range r.revs {
		if rev != from+int64(i) {
			t.Fatalf("change %d is revision %d, want %d (in order, each once)", i, rev, from+int64(i))
		}
	}
}

// TestServeFromSenders: live streams are sent to by the hub's senders, not
// by their own goroutines, every change once and in order, one change at
// a time spaced apart as writes are.
func TestServeFromSenders(t *testing.T) {
	log := newFakeLog(3)
	h, _ := startHub(t, log, watch.Options{Senders: 2})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const streams, writes = 50, 20
	var rs []*served
	var dones []chan error
	for range streams {
		s, err := h.Open(ctx, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		r, done := serve(t, ctx, s, nil)
		rs, dones = append(rs, r), append(dones, done)
	}
	for _, r := range rs {
		waitFor(t, r, 3, 10*time.Second)
	}
	for i := range writes {
		log.commit(1)
		for _, r := range rs {
			waitFor(t, r, 3+i+1, 10*time.Second)
		}
	}
	away := 0
	for _, r := range rs {
		checkInOrder(t, r, 1, 3+writes)
		_, a := r.count()
		away += a
	}
	// The first changes may go out from the streams' own goroutines (they
	// hand over once caught up); the live ones from the senders.
	if away < streams*writes/2 {
		t.Fatalf("%d of %d live sends came from the senders; want most", away, streams*writes)
	}
	endsCanceled(t, cancel, dones...)
}

// TestServeStalledSendDoesNotHoldOthers: a stream whose send blocks (a
// client that stops reading) holds up no other stream, even with a single
// sender: the sender is replaced, the stalled stream goes back to its own
// goroutine, falls behind, and once unblocked catches up from the log with
// every change in order.
func TestServeStalledSendDoesNotHoldOthers(t *testing.T) {
	log := newFakeLog(0)
	h, _ := startHub(t, log, watch.Options{Senders: 1, SendStall: 20 * time.Millisecond, Buffer: 4, Ring: 8, Page: 16})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	open := func() *watch.Stream {
		s, err := h.Open(ctx, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
		return s
	}
	release := make(chan struct{})
	var once sync.Once
	stuck, stuckDone := serve(t, ctx, open(), func(rev int64) {
		if rev == 2 {
			<-release // the client stops reading at revision 2
		}
	})
	// Several healthy streams: the one sender meets the stuck stream
	// before some of them, whatever the queue's order.
	var healthy []*served
	for range 4 {
		r, _ := serve(t, ctx, open(), nil)
		healthy = append(healthy, r)
	}
	defer once.Do(func() { close(release) })
	for h.Stats().Subscribers != 5 {
		time.Sleep(time.Millisecond)
	}
	const writes = 40
	for i := range writes {
		log.commit(1)
		for _, r := range healthy {
			waitFor(t, r, i+1, 5*time.Second)
		}
	}
	if n, _ := stuck.count(); n != 1 {
		t.Fatalf("the stalled stream sent %d changes; want 1 (the test proves nothing)", n)
	}
	var away int
	for _, r := range healthy {
		checkInOrder(t, r, 1, writes)
		_, a := r.count()
		away += a
	}
	if away == 0 {
		t.Fatal("no change went out from the senders; the test proves nothing")
	}
	if st := h.Stats().SendStalls; st != 1 {
		t.Fatalf("SendStalls = %d, want 1", st)
	}
	once.Do(func() { close(release) })
	waitFor(t, stuck, writes, 10*time.Second)
	checkInOrder(t, stuck, 1, writes)
	endsCanceled(t, cancel, stuckDone)
}

// TestServeEnds: Serve returns the send's error, and ctx's error when ctx
// ends while the senders serve the stream.
func TestServeEnds(t *testing.T) {
	log := newFakeLog(0)
	h, _ := startHub(t, log, watch.Options{Senders: 2})
	s, err := h.Open(context.Background(), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r, done := serve(t, ctx, s, nil)
	for h.Stats().Subscribers != 1 {
		time.Sleep(time.Millisecond)
	}
	log.commit(1)
	waitFor(t, r, 1, 5*time.Second)
	if _, away := r.count(); away != 1 {
		t.Fatal("the change did not go out from a sender; the test proves nothing")
	}
	cancel()
	serveEnded(t, done, context.Canceled, "Serve", "Serve did not end with its context")

	s.Close()

	s2, err := h.Open(context.Background(), log.commit(0), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	failed := errors.New("client gone")
	done2 := make(chan error, 1)
	go func() {
		done2 <- s2.Serve(context.Background(), func(item watch.Item) error {
			if item.Change != nil {
				return failed
			}
			return nil
		})
	}()
	for h.Stats().Subscribers != 1 {
		time.Sleep(time.Millisecond)
	}
	log.commit(1)
	serveEnded(t, done2, failed, "Serve", "Serve did not end with the send's error")
}

// TestServeSenderMeetsHeldStream: a sender that takes a live stream from
// the queue while the stream's own goroutine holds its lock (it woke to
// see whether it was handed back) serves it once the lock is free. It
// used to give up on it with the stream still marked queued, so no later
// change queued it again: the stream went silent for good.
func TestServeSenderMeetsHeldStream(t *testing.T) {
	log := newFakeLog(1)
	h, _ := startHub(t, log, watch.Options{Senders: 1})
	ctx, cancel := context.WithCancel(context.Background())
	s, err := h.Open(ctx, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Cleanups run last first: cancel, wait for Serve, close.
	t.Cleanup(s.Close)
	r, done := serve(t, ctx, s, nil)
	t.Cleanup(cancel)
	// Live and handed over: a change arrives from a sender.
	waitServedBySenders(t, log, r)
	have, _ := r.count()
	release := watch.HoldStream(s)
	log.commit(1)
	time.Sleep(100 * time.Millisecond) // the hub publishes, a sender takes the stream
	release()
	log.commit(1)
	waitFor(t, r, have+2, 5*time.Second)
	checkInOrder(t, r, 1, have+2)
	endsCanceled(t, cancel, done)
}

// TestServeSendPanics: a send that panics on a sender's goroutine (where
// no handler's recovery runs) ends that stream with an error, not the
// process, and the other streams go on.
func TestServeSendPanics(t *testing.T) {
	log := newFakeLog(1)
	h, _ := startHub(t, log, watch.Options{Senders: 1})
	ctx, cancel := context.WithCancel(context.Background())
	bad, err := h.Open(ctx, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bad.Close)
	var armed atomic.Bool
	badDone := make(chan error, 1)
	go func() {
		me := goid()
		badDone <- bad.Serve(ctx, func(item watch.Item) error {
			// Only on a sender's goroutine: on Serve's own, a panic is
			// the caller's (the gRPC handler's recovery).
			if armed.Load() && item.Change != nil && goid() != me {
				panic("boom")
			}
			return nil
		})
	}()
	good, err := h.Open(ctx, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(good.Close)
	r, done := serve(t, ctx, good, nil)
	t.Cleanup(cancel)
	// Both live: changes reach the good stream from a sender.
	waitServedBySenders(t, log, r)
	time.Sleep(50 * time.Millisecond) // the bad stream handed over too
	have, _ := r.count()
	armed.Store(true)
	commits := 0
	for ended := false; !ended; {
		log.commit(1)
		commits++
		select {
		case err := <-badDone:
			if err == nil || !strings.Contains(err.Error(), "panicked") {
				t.Fatalf("the panicking stream's Serve ended with %v", err)
			}
			ended = true
		case <-time.After(100 * time.Millisecond):
			if commits > 100 {
				t.Fatal("the panicking stream's Serve did not end")
			}
		}
	}
	waitFor(t, r, have+commits, 10*time.Second)
	endsCanceled(t, cancel, done)
}

// waitServedBySenders commits changes one at a time (r holding the one
// before) until r receives one from a sender rather than from its Serve's
// goroutine: the stream is live and handed over.
func waitServedBySenders(t *testing.T, log *fakeLog, r *served) {
	t.Helper()
	for n := 2; n <= 50; n++ {
		log.commit(1)
		waitFor(t, r, n, 10*time.Second)
		if _, away := r.count(); away > 0 {
			return
		}
	}
	t.Fatal("the stream was never handed to the senders")
}

// endsCanceled cancels the streams' context and checks that each Serve
// ends with context.Canceled.
func endsCanceled(t *testing.T, cancel context.CancelFunc, dones ...chan error) {
	t.Helper()
	cancel()
	for _, done := range dones {
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("Serve ended with %v, want context.Canceled", err)
		}
	}
}

// TestServeEndsWhenTheHubStopsWithChangesPending: a stream served by the
// senders whose hub stops while changes it has not taken are pending gets
// those changes and then the hub's stop, from its own goroutine. The run
// that sent the pending changes used to keep the stream: the stop had
// signalled it already (while it waited in the queue behind a slow
// stream), nothing signals a stopped hub's subscriptions again, and the
// stream waited for ever — at shutdown, until the server's deadline cut
// every call off (CI: TestGracefulShutdown, 20 s, no SERVER_SHUTTING_DOWN).
func TestServeEndsWhenTheHubStopsWithChangesPending(t *testing.T) {
	log := newFakeLog(1)
	// One sender, and stalls far longer than the test: the victim waits
	// in the queue behind the blocked stream.
	h, stop := startHub(t, log, watch.Options{Senders: 1, SendStall: time.Minute})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	blocker, err := h.Open(ctx, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(blocker.Close)
	victim, err := h.Open(ctx, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(victim.Close)
	var blocking atomic.Bool
	unblock := make(chan struct{})
	entered := make(chan struct{}, 1)
	rb, doneB := serve(t, ctx, blocker, func(int64) {
		if blocking.Load() {
			select {
			case entered <- struct{}{}:
			default:
			}
			<-unblock
		}
	})
	rv, doneV := serve(t, ctx, victim, nil)
	for h.Stats().Subscribers != 2 {
		time.Sleep(time.Millisecond)
	}
	// Both live and handed to the senders.
	for n := 2; ; n++ {
		log.commit(1)
		waitFor(t, rb, n-1, 10*time.Second)
		waitFor(t, rv, n-1, 10*time.Second)
		_, awayB := rb.count()
		_, awayV := rv.count()
		if awayB > 0 && awayV > 0 {
			break
		}
		if n > 50 {
			t.Fatal("the streams were never handed to the senders")
		}
	}
	have, _ := rv.count()
	// The sender blocks in the blocker's send; the victim, signalled by
	// the next change too, is queued behind it (or served first: then
	// the change after it).
	blocking.Store(true)
	log.commit(1)
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the blocker's send never started")
	}
	last := log.commit(1)
	for deadline := time.Now().Add(10 * time.Second); h.Stats().Revision < last; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the hub did not publish revision %d", last)
		}
	}
	stop() // the hub stops with the victim's change(s) pending
	time.Sleep(20 * time.Millisecond)
	close(unblock)
	serveEnded(t, doneV, watch.ErrStopped, "the victim's Serve", "the victim's Serve did not end after the hub stopped: it waits for ever")
	if got, _ := rv.count(); got < have+1 {
		t.Fatalf("the victim got %d changes before the stop, want at least %d", got, have+1)
	}
	serveEnded(t, doneB, watch.ErrStopped, "the blocker's Serve", "the blocker's Serve did not end after the hub stopped")
}

// serveEnded waits (5 s) for a Serve's result on done: want (errors.Is),
// what names the Serve in a failure, and timeout is the failure when it
// has not ended.
func serveEnded(t *testing.T, done <-chan error, want error, what, timeout string) {
	t.Helper()
	select {
	case err := <-done:
		if !errors.Is(err, want) {
			t.Fatalf("%s ended with %v, want %v", what, err, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatal(timeout)
	}
}
