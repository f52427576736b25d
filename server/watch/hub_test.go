package watch_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/orient-bot/secrets/server/store"
	"github.com/orient-bot/secrets/server/watch"
)

// fakeLog is an in-memory change log: the hub's Source without a database.
// It records how much each read returned, to check the memory bound.
type fakeLog struct {
	mu      sync.Mutex
	changes []store.Change // changes[i].Revision == oldest+i
	oldest  int64
	// reads counts ChangesAfter calls; maxRead is the most one returned.
	reads, maxRead int
	// readHook, if set, runs (unlocked) before each ChangesAfter.
	readHook func(after int64)
}

func newFakeLog(n int) *fakeLog {
	f := &fakeLog{oldest: 1}
	f.commit(n)
	return f
}

// commit appends n changes and returns the last revision.
func (f *fakeLog) commit(n int) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	for range n {
		rev := f.oldest + int64(len(f.changes))
		f.changes = append(f.changes, store.Change{Revision: rev, Kind: store.ChangeValueAdded, Key: fmt.Sprintf("K%d", rev%7)})
	}
	return f.oldest + int64(len(f.changes)) - 1
}

// compact drops every change up to rev.
func (f *fakeLog) compact(rev int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	drop := int(rev - f.oldest + 1)
	f.changes = append([]store.Change(nil), f.changes[drop:]...)
	f.oldest = rev + 1
}

func (f *fakeLog) Revision(context.Context) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.oldest + int64(len(f.changes)) - 1, nil
}

func (f *fakeLog) OldestRevision(context.Context) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.oldest, nil
}

func (f *fakeLog) ChangesAfter(_ context.Context, after, upTo int64, limit int) ([]store.Change, error) {
	f.mu.Lock()
	hook := f.readHook
	f.mu.Unlock()
	if hook != nil {
		hook(after)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads++
	var out []store.Change
	for _, c := range f.changes {
		if c.Revision > after && (upTo == 0 || c.Revision <= upTo) && len(out) < limit {
			out = append(out, c)
		}
	}
	f.maxRead = max(f.maxRead, len(out))
	return out, nil
}

func (f *fakeLog) Listen(context.Context) (*store.Listener, error) {
	return nil, errors.New("no LISTEN here")
}

func (f *fakeLog) TouchConsumers(context.Context, []store.ConsumerID) error { return nil }

func (f *fakeLog) stats() (reads, maxRead int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reads, f.maxRead
}

// startHub runs a polling hub over log until the test ends, and checks that
// its goroutines end with it.
func startHub(t *testing.T, log *fakeLog, opts watch.Options) (*watch.Hub, context.CancelFunc) {
	t.Helper()
	t.Cleanup(func() { goleak.VerifyNone(t, goleak.IgnoreCurrent()) })
	opts.NoListen = true
	if opts.PollInterval == 0 {
		opts.PollInterval = time.Millisecond
	}
	h := watch.New(log, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); h.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	if _, err := h.Current(ctx); err != nil {
		t.Fatal(err)
	}
	return h, cancel
}

// next reads the next change from s, skipping progress marks.
func next(t *testing.T, s *watch.Stream) store.Change {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		item, err := s.Next(ctx)
		if err != nil {
			t.Fatalf("Next after %d: %v", s.Last(), err)
		}
		if item.Change != nil {
			return *item.Change
		}
	}
}

// TestStreamCatchesUpPageByPage: a stream resuming from revision 0 over a
// backlog of many pages gets its first change after one page read, never
// reads more than a page at once, delivers every change once and in order
// — including those committed while it catches up — and then follows live.
func TestStreamCatchesUpPageByPage(t *testing.T) {
	const page, backlog = 50, 50 * 40
	log := newFakeLog(backlog)
	h, _ := startHub(t, log, watch.Options{Page: page, Buffer: 8})
	// The stream's reads are the ones from behind the head (the hub's own
	// polls, every millisecond, read from the head): its first change
	// needs one.
	var catchUpReads atomic.Int64
	log.mu.Lock()
	log.readHook = func(after int64) {
		if after < backlog {
			catchUpReads.Add(1)
		}
	}
	log.mu.Unlock()
	s, err := h.Open(context.Background(), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if c := next(t, s); c.Revision != 1 {
		t.Fatalf("first change %d, want 1", c.Revision)
	}
	if n := catchUpReads.Load(); n != 1 {
		t.Errorf("%d catch-up reads before the first change, want one page read", n)
	}
	want := int64(2)
	for want <= backlog+300 {
		if want%100 == 0 && want <= backlog {
			log.commit(3) // writes go on while the stream catches up
		}
		c := next(t, s)
		if c.Revision != want {
			t.Fatalf("got revision %d, want %d (gap or duplicate)", c.Revision, want)
		}
		want++
		if want == backlog+300 {
			break
		}
		if rev, _ := log.Revision(context.Background()); want > rev {
			// Caught up: what comes next arrives live.
			log.commit(1)
		}
	}
	if _, maxRead := log.stats(); maxRead > page {
		t.Errorf("a read returned %d changes; the page is %d", maxRead, page)
	}
	if st := h.Stats(); st.Subscribers != 1 {
		t.Errorf("caught-up stream is not on the live fan-out: %d subscribers", st.Subscribers)
	}
}

// TestStreamProgressDuringCatchUp: each full page of a catch-up ends with a
// progress mark at its last revision, so a stream whose filter drops
// everything still hears how far it got.
func TestStreamProgressDuringCatchUp(t *testing.T) {
	log := newFakeLog(25)
	h, _ := startHub(t, log, watch.Options{Page: 10})
	s, err := h.Open(context.Background(), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var marks []int64
	for s.Last() < 25 {
		item, err := s.Next(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if item.Change == nil {
			marks = append(marks, item.Progress)
		}
	}
	if fmt.Sprint(marks) != "[10 20]" {
		t.Errorf("progress marks %v, want [10 20]", marks)
	}
}

// TestStreamFallsBehindAndRecovers: a reader that stops reading while many
// changes arrive overflows its buffer; the stream goes back to the table and
// still delivers every change once, in order.
func TestStreamFallsBehindAndRecovers(t *testing.T) {
	log := newFakeLog(5)
	h, _ := startHub(t, log, watch.Options{Page: 16, Buffer: 4, Ring: 8})
	s, err := h.Open(context.Background(), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for want := int64(1); want <= 5; want++ {
		if c := next(t, s); c.Revision != want {
			t.Fatalf("got %d, want %d", c.Revision, want)
		}
	}
	// Wait until the stream is live, then flood it while it is not reading.
	for h.Stats().Subscribers != 1 {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		_, _ = s.Next(ctx) // a progress mark or nothing
		cancel()
	}
	lagged := h.Stats().Lagged
	for range 10 {
		last := log.commit(50)
		for h.Stats().Revision < last {
			time.Sleep(time.Millisecond)
		}
	}
	if h.Stats().Lagged == lagged {
		t.Fatal("the stream never fell behind; the test proves nothing")
	}
	for want := int64(6); want <= 505; want++ {
		if c := next(t, s); c.Revision != want {
			t.Fatalf("got %d, want %d", c.Revision, want)
		}
	}
}

// TestStreamCompacted: a start the log no longer holds fails at Open; a
// compaction that overtakes a catching-up stream fails it at the gap.
func TestStreamCompacted(t *testing.T) {
	log := newFakeLog(100)
	log.compact(10)
	h, _ := startHub(t, log, watch.Options{Page: 10})
	if _, err := h.Open(context.Background(), 5, nil); !errors.Is(err, watch.ErrCompacted) {
		t.Fatalf("Open before the oldest revision: %v", err)
	}
	s, err := h.Open(context.Background(), 10, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if c := next(t, s); c.Revision != 11 {
		t.Fatalf("first change %d", c.Revision)
	}
	log.compact(50)
	for {
		_, err := s.Next(context.Background())
		if errors.Is(err, watch.ErrCompacted) {
			if s.Last() != 20 {
				t.Errorf("failed after %d, want after the first page (20)", s.Last())
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestStreamStopped: streams end with ErrStopped when the hub stops, both
// while catching up and while live.
func TestStreamStopped(t *testing.T) {
	log := newFakeLog(100)
	h, stop := startHub(t, log, watch.Options{Page: 10})
	catching, err := h.Open(context.Background(), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer catching.Close()
	live, err := h.Open(context.Background(), 100, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	next(t, catching)
	log.commit(1)
	if c := next(t, live); c.Revision != 101 {
		t.Fatalf("live got %d", c.Revision)
	}
	stop()
	for _, s := range []*watch.Stream{catching, live} {
		for {
			_, err := s.Next(context.Background())
			if errors.Is(err, watch.ErrStopped) {
				break
			}
			if err != nil {
				t.Fatalf("after stop: %v", err)
			}
		}
	}
}

// TestSubscriptionTakesPendingAtOnce: a subscriber woken once takes every
// change published since its last read, in order (one wake-up for a burst,
// not one per change), and is cut loose only past Buffer pending changes.
func TestSubscriptionTakesPendingAtOnce(t *testing.T) {
	log := newFakeLog(3)
	h, _ := startHub(t, log, watch.Options{Buffer: 10})
	ctx := context.Background()
	sub, err := h.Subscribe(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	last := log.commit(7)
	for h.Stats().Revision < last {
		time.Sleep(time.Millisecond)
	}
	items, err := sub.Next(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var revs []int64
	for _, it := range items {
		if it.Change != nil {
			revs = append(revs, it.Change.Revision)
		}
	}
	if fmt.Sprint(revs) != "[4 5 6 7 8 9 10]" {
		t.Fatalf("one read took %v, want [4 5 6 7 8 9 10]", revs)
	}
	// 11 pending changes with a buffer of 10: cut loose.
	last = log.commit(11)
	for h.Stats().Revision < last {
		time.Sleep(time.Millisecond)
	}
	if _, err := sub.Next(ctx, nil); !errors.Is(err, watch.ErrLagged) {
		t.Fatalf("11 pending changes with a buffer of 10: %v, want ErrLagged", err)
	}
}

// TestSubscriptionNextEndsWithContext: a reader waiting for changes
// returns when its context ends.
func TestSubscriptionNextEndsWithContext(t *testing.T) {
	h, _ := startHub(t, newFakeLog(1), watch.Options{})
	sub, err := h.Subscribe(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := sub.Next(ctx, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Next after its deadline: %v", err)
	}
}

// TestSubscriptionCloseWakesReader: Close from another goroutine ends a
// reader waiting in Next with ErrStopped.
func TestSubscriptionCloseWakesReader(t *testing.T) {
	h, _ := startHub(t, newFakeLog(1), watch.Options{})
	sub, err := h.Subscribe(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := sub.Next(ctx, nil)
		done <- err
	}()
	time.Sleep(10 * time.Millisecond)
	sub.Close()
	select {
	case err := <-done:
		if !errors.Is(err, watch.ErrStopped) {
			t.Fatalf("Next after Close: %v, want ErrStopped", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not wake the reader")
	}
}
