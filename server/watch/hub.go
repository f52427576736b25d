// Package watch owns the change stream's fan-out: one Hub per process reads
// the change log (woken by LISTEN/NOTIFY, with a periodic poll as a safety
// net) and hands every committed change, in revision order, to its
// subscribers. Changes are kept once, in a ring shared by all subscribers;
// a subscriber is a position in it and a wake-up signal, and takes every
// change pending since its last read at each wake-up (not one wake-up per
// change). A subscriber more than Options.Buffer changes behind is cut
// loose and catches up from the table (Stream), never growing memory or
// blocking the hub. The change_log table is the truth; notifications are
// only hints.
package watch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/orient-bot/secrets/server/store"
)

// Source is what the hub reads: the store.
type Source interface {
	Revision(ctx context.Context) (int64, error)
	OldestRevision(ctx context.Context) (int64, error)
	ChangesAfter(ctx context.Context, after, upTo int64, limit int) ([]store.Change, error)
	Listen(ctx context.Context) (*store.Listener, error)
	TouchConsumers(ctx context.Context, ids []store.ConsumerID) error
}

// Errors a subscription ends with.
var (
	// ErrLagged: the subscriber's buffer overflowed; it must catch up from
	// the table and subscribe again (a Stream does both by itself).
	ErrLagged = errors.New("watch: subscriber fell behind")
	// ErrStopped: the hub is shutting down; clients resume elsewhere.
	ErrStopped = errors.New("watch: server shutting down")
	// ErrCompacted: the requested revisions are no longer in the log.
	ErrCompacted = errors.New("watch: revision compacted")
)

// Options tune the hub.
type Options struct {
	// PollInterval bounds the delay of a change whose notification was lost.
	PollInterval time.Duration
	// ProgressInterval is how often idle subscribers get a progress mark.
	ProgressInterval time.Duration
	// Buffer is how many changes a subscriber may have pending (published,
	// not yet read) before it is cut loose.
	Buffer int
	// Ring is how many recent changes are kept in memory for subscribers
	// and catch-up, at least (up to twice as many; never fewer than
	// Buffer).
	Ring int
	// Page is how many changes a catching-up stream reads at once (default
	// 1000): its memory bound.
	Page int
	// NoListen turns LISTEN/NOTIFY off: changes arrive by polling only (for
	// connection poolers in transaction mode, where LISTEN does not work).
	NoListen bool
	// Senders is how many goroutines at most send to the live streams
	// served with Stream.Serve (default GOMAXPROCS; negative: none, each
	// stream's own goroutine sends). See senders.go.
	Senders int
	// SendStall is how long one send may hold a sender before another
	// replaces it and the stream goes back to its own goroutine (default
	// 50ms).
	SendStall time.Duration
	Logger    *slog.Logger
}

func (o *Options) defaults() {
	if o.PollInterval <= 0 {
		o.PollInterval = time.Second
	}
	if o.ProgressInterval <= 0 {
		o.ProgressInterval = 5 * time.Second
	}
	if o.Buffer <= 0 {
		o.Buffer = 128
	}
	if o.Ring <= 0 {
		o.Ring = 4096
	}
	o.Ring = max(o.Ring, o.Buffer) // a subscriber's pending changes are in the ring
	if o.Page <= 0 {
		o.Page = fetchBatch
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Senders == 0 {
		o.Senders = runtime.GOMAXPROCS(0)
	}
	if o.SendStall <= 0 {
		o.SendStall = 50 * time.Millisecond
	}
}

// Item is what a subscription delivers: a change, or a progress mark (the
// hub's revision when nothing else is pending in this buffer before it).
type Item struct {
	Change   *store.Change
	Progress int64
}

// Hub fans the change log out to subscribers.
type Hub struct {
	src  Source
	opts Options

	wake  chan struct{}
	ready chan struct{}

	// connected is true while a LISTEN connection is up. listenSync is
	// the sync number taken when it came up; synced is the highest sync
	// number a complete fetch started after. Listening needs both: a
	// connection, and a fetch since it that caught up with everything
	// committed before it.
	connected         atomic.Bool
	syncs, listenSync atomic.Int64
	synced            atomic.Int64

	// published mirrors rev for readers that only need to know whether
	// anything is pending (a woken stream, once it has sent what it took,
	// looks again before it waits: without the lock). Set under mu,
	// before the subscribers are signalled.
	published atomic.Int64

	// mu guards what follows; subscribers read the ring under RLock.
	mu       sync.RWMutex
	rev      int64 // last revision published
	ring     []*store.Change
	subs     map[*Subscription]struct{}
	stopped  bool
	lagCount int64
	// woken is publish's list of subscribers to signal once mu is
	// released, and direct its list of streams for the senders (reused).
	woken  []*Subscription
	direct []*delivery
	// senders serve the live streams (nil: none).
	senders *senders
}

// New returns a hub; Run starts it.
func New(src Source, opts Options) *Hub {
	opts.defaults()
	h := &Hub{src: src, opts: opts, wake: make(chan struct{}, 1), ready: make(chan struct{}),
		subs: make(map[*Subscription]struct{})}
	if opts.Senders > 0 {
		h.senders = newSenders(opts.Senders, opts.SendStall)
	}
	return h
}

// Stats are the hub's figures, for metrics.
type Stats struct {
	Subscribers int
	Revision    int64
	Lagged      int64
	// SendStalls counts the streams whose send held a sender for longer
	// than Options.SendStall (a client not reading): they went back to a
	// goroutine of their own.
	SendStalls int64
}

// Stats returns current figures.
func (h *Hub) Stats() Stats {
	h.mu.Lock()
	defer h.mu.Unlock()
	st := Stats{Subscribers: len(h.subs), Revision: h.rev, Lagged: h.lagCount}
	if h.senders != nil {
		st.SendStalls = h.senders.stalls.Load()
	}
	return st
}

// Run reads the log and publishes until ctx ends, then ends every
// subscription with ErrStopped.
func (h *Hub) Run(ctx context.Context) {
	defer h.stop()
	listening := make(chan struct{})
	var listener sync.WaitGroup
	defer listener.Wait() // Run returns only once its LISTEN goroutine has
	if h.opts.NoListen {
		close(listening)
	} else {
		listener.Go(func() { h.listen(ctx, listening) })
	}
	// LISTEN first, then read where the log stands: a change committed in
	// between is either notified or seen by the read. If LISTEN cannot be
	// set up quickly, the poll covers it.
	select {
	case <-listening:
	case <-time.After(3 * time.Second):
	case <-ctx.Done():
		return
	}
	for {
		rev, err := h.src.Revision(ctx)
		if err == nil {
			h.mu.Lock()
			h.rev = rev
			h.published.Store(rev)
			h.mu.Unlock()
			break
		}
		h.opts.Logger.Warn("watch hub: reading the current revision", "error", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(h.opts.PollInterval):
		}
	}
	close(h.ready)
	poll := time.NewTicker(h.opts.PollInterval)
	defer poll.Stop()
	progress := time.NewTicker(h.opts.ProgressInterval)
	defer progress.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-h.wake:
		case <-poll.C:
		case <-progress.C:
			h.fetch(ctx)
			h.progress(ctx)
			continue
		}
		h.fetch(ctx)
	}
}

// listen keeps a LISTEN connection open, waking the loop on each
// notification, and reconnects with backoff when it drops.
func (h *Hub) listen(ctx context.Context, listening chan struct{}) {
	var once sync.Once
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		l, err := h.src.Listen(ctx)
		if err != nil {
			h.opts.Logger.Warn("watch hub: LISTEN connection failed; polling meanwhile", "error", err, "retry_in", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 10*time.Second)
			continue
		}
		once.Do(func() { close(listening) })
		backoff = 100 * time.Millisecond
		h.listenSync.Store(h.syncs.Add(1))
		h.connected.Store(true)
		h.poke() // catch anything committed while we were not listening
		for {
			if err := l.Wait(ctx); err != nil {
				h.connected.Store(false)
				if ctx.Err() == nil {
					h.opts.Logger.Warn("watch hub: LISTEN connection lost; reconnecting", "error", err)
				}
				break
			}
			h.poke()
		}
		l.Close()
	}
}

// Listening reports whether changes reach this hub by notification (a
// LISTEN connection is up, and a fetch since it came up has caught up), so
// that what it publishes trails the database by milliseconds rather than
// by a poll interval.
func (h *Hub) Listening() bool {
	return h.connected.Load() && h.synced.Load() >= h.listenSync.Load()
}

func (h *Hub) poke() {
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

const fetchBatch = 1000

// fetch publishes every change after the last published revision.
func (h *Hub) fetch(ctx context.Context) {
	sync := h.syncs.Load()
	for {
		h.mu.Lock()
		after := h.rev
		h.mu.Unlock()
		changes, err := h.src.ChangesAfter(ctx, after, 0, fetchBatch)
		if err != nil {
			if ctx.Err() == nil {
				h.opts.Logger.Warn("watch hub: reading the change log", "error", err)
			}
			return
		}
		h.publish(changes)
		if len(changes) < fetchBatch {
			for cur := h.synced.Load(); cur < sync && !h.synced.CompareAndSwap(cur, sync); cur = h.synced.Load() {
			}
			return
		}
	}
}

func (h *Hub) publish(changes []store.Change) {
	if len(changes) == 0 {
		return
	}
	h.mu.Lock()
	for i := range changes {
		c := &changes[i]
		if c.Revision != h.rev+1 {
			// The log is gap-free; a gap means compaction overtook us (the
			// hub was down for a long time). Subscribers cannot be served
			// continuously: cut them loose, they will report compaction.
			h.opts.Logger.Warn("watch hub: gap in the change log", "after", h.rev, "next", c.Revision)
			for s := range h.subs {
				h.drop(s, ErrLagged)
			}
			h.ring = h.ring[:0]
		}
		h.rev = c.Revision
		if len(h.ring) >= 2*h.opts.Ring {
			// Drop the older half at once: amortised O(1) per change
			// under the lock (holding between Ring and 2×Ring changes),
			// rather than shifting the whole ring for every one.
			n := copy(h.ring, h.ring[len(h.ring)-h.opts.Ring:])
			clear(h.ring[n:])
			h.ring = h.ring[:n]
		}
		h.ring = append(h.ring, c)
	}
	h.published.Store(h.rev)
	// One pass over the subscribers per batch of changes, not per change:
	// the ones too far behind are cut loose, the others are signalled
	// after the lock is released (a woken reader takes the read lock).
	woken := h.woken[:0]
	for s := range h.subs {
		if h.rev-s.taken.Load() > int64(h.opts.Buffer) {
			h.lagCount++
			h.drop(s, ErrLagged)
			continue
		}
		woken = append(woken, s)
	}
	h.mu.Unlock()
	direct := h.direct[:0]
	for _, s := range woken {
		if d := s.direct.Load(); d != nil {
			// Served by the senders: queued all at once, below.
			if d.mark() {
				direct = append(direct, d)
			}
			continue
		}
		s.signal()
	}
	if len(direct) > 0 {
		h.senders.schedule(direct...)
	}
	clear(woken)
	h.woken = woken[:0]
	clear(direct)
	h.direct = direct[:0]
}

// progress marks every subscriber as due a progress mark (the hub's
// revision once it has read what is pending before it) and marks the
// consumers behind open subscriptions as seen.
func (h *Hub) progress(ctx context.Context) {
	h.mu.Lock()
	seen := map[store.ConsumerID]struct{}{}
	for s := range h.subs {
		s.progressDue.Store(true)
		s.signal()
		if s.consumer != nil {
			seen[*s.consumer] = struct{}{}
		}
	}
	h.mu.Unlock()
	if len(seen) == 0 {
		return
	}
	ids := make([]store.ConsumerID, 0, len(seen))
	for id := range seen {
		ids = append(ids, id)
	}
	tctx, cancel := context.WithTimeout(ctx, h.opts.ProgressInterval)
	defer cancel()
	if err := h.src.TouchConsumers(tctx, ids); err != nil && ctx.Err() == nil {
		h.opts.Logger.Warn("watch hub: marking consumers seen", "error", err)
	}
}

// drop ends a subscription; h.mu must be held.
func (h *Hub) drop(s *Subscription, err error) {
	if _, ok := h.subs[s]; !ok {
		return
	}
	delete(h.subs, s)
	s.err = err
	s.ended.Store(true)
	s.signal()
}

func (h *Hub) stop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stopped = true
	for s := range h.subs {
		h.drop(s, ErrStopped)
	}
}

// Subscription receives every change published after Start: a position
// in the hub's ring and a wake-up signal.
type Subscription struct {
	hub      *Hub
	start    int64
	consumer *store.ConsumerID
	// taken is the last revision read; the hub reads it to tell how far
	// behind the subscriber is.
	taken atomic.Int64
	// progressDue: the hub asked for a progress mark.
	progressDue atomic.Bool
	// ended is set (and err, under hub.mu) when the hub drops it.
	ended atomic.Bool
	err   error
	// wake (capacity 1) says there may be something to read, or, while
	// the senders serve the stream (direct is set), that they handed it
	// back or that the reader's context ended.
	wake chan struct{}
	// direct is set while the hub's senders serve the subscription's
	// stream: it is signalled by queueing it for them.
	direct atomic.Pointer[delivery]
	// waitDone is the Done channel of the context Next last waited with,
	// and stopWait ends the hook that wakes Next when it is closed (set by
	// the reader; Close may run on another goroutine).
	waitDone <-chan struct{}
	waitMu   sync.Mutex
	stopWait func() bool
}

// signal says there may be something to read: to the senders while they
// serve the stream, else to its reader.
func (s *Subscription) signal() {
	if d := s.direct.Load(); d != nil {
		s.hub.senders.enqueue(d)
		return
	}
	s.wakeReader()
}

func (s *Subscription) wakeReader() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Subscribe registers a subscriber. It waits for the hub to be ready.
// consumer, if not nil, is marked as seen while the subscription lives.
func (h *Hub) Subscribe(ctx context.Context, consumer *store.ConsumerID) (*Subscription, error) {
	select {
	case <-h.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopped {
		return nil, ErrStopped
	}
	s := &Subscription{hub: h, start: h.rev, consumer: consumer, wake: make(chan struct{}, 1)}
	s.taken.Store(h.rev)
	h.subs[s] = struct{}{}
	return s, nil
}

// Start is the hub's revision when the subscription began: every later
// change is returned by Next.
func (s *Subscription) Start() int64 { return s.start }

// Next appends to buf every item pending since the last call, in revision
// order — the changes published since, then a progress mark if one is
// due — waiting until there is one. Once the hub has dropped the
// subscription it returns what was still pending, then Err's reason
// (ErrLagged or ErrStopped); it returns ctx's error when ctx ends. One
// reader at a time.
func (s *Subscription) Next(ctx context.Context, buf []Item) ([]Item, error) {
	for {
		buf, err := s.take(buf)
		if err != nil || len(buf) > 0 {
			return buf, err
		}
		if err := ctx.Err(); err != nil {
			return buf, err
		}
		s.wait(ctx)
	}
}

// wait blocks until the subscription's reader is woken or ctx ends.
func (s *Subscription) wait(ctx context.Context) {
	if done := ctx.Done(); done != nil && done != s.waitDone {
		// A hook on ctx instead of a select on ctx.Done() at every
		// wait: the wait is a plain receive.
		s.waitMu.Lock()
		if s.stopWait != nil {
			s.stopWait()
		}
		s.waitDone, s.stopWait = done, context.AfterFunc(ctx, s.wakeReader)
		s.waitMu.Unlock()
	}
	<-s.wake
}

// take appends the pending items to buf.
func (s *Subscription) take(buf []Item) ([]Item, error) {
	h := s.hub
	if !s.ended.Load() && !s.progressDue.Load() && s.taken.Load() == h.published.Load() {
		// Nothing pending, and no reader-count traffic on the hub's lock
		// (shared by every stream): what is published or ended after
		// these loads signals s.wake, so the wait that follows returns.
		return buf, nil
	}
	h.mu.RLock()
	defer h.mu.RUnlock()
	taken := s.taken.Load()
	if s.ended.Load() && (s.err != ErrStopped || h.rev == taken) {
		// A lagging subscriber's pending changes may have left the ring;
		// a stopped one still gets what was published before the stop.
		return buf, s.err
	}
	if taken < h.rev {
		if len(h.ring) == 0 || h.ring[0].Revision > taken+1 {
			return buf, ErrLagged
		}
		for _, c := range h.ring[taken+1-h.ring[0].Revision:] {
			buf = append(buf, Item{Change: c})
		}
		s.taken.Store(h.rev)
	}
	if s.progressDue.Load() && s.progressDue.CompareAndSwap(true, false) {
		buf = append(buf, Item{Progress: h.rev})
	}
	return buf, nil
}

// Err is why the subscription ended (ErrLagged or ErrStopped); nil while
// open.
func (s *Subscription) Err() error {
	s.hub.mu.RLock()
	defer s.hub.mu.RUnlock()
	return s.err
}

// Close ends the subscription.
func (s *Subscription) Close() {
	s.hub.mu.Lock()
	s.hub.drop(s, ErrStopped)
	s.hub.mu.Unlock()
	s.waitMu.Lock()
	defer s.waitMu.Unlock()
	if s.stopWait != nil {
		s.stopWait()
		s.stopWait = nil
	}
}

// Current waits for the hub to be ready and returns the last revision it
// published.
func (h *Hub) Current(ctx context.Context) (int64, error) {
	select {
	case <-h.ready:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopped {
		return 0, ErrStopped
	}
	return h.rev, nil
}

// Stream delivers every change after a revision, in revision order, each
// once. Like etcd's unsynced watchers, a stream that starts behind the hub
// catches up from the table one page at a time (its memory is one page,
// whatever the backlog, and its first change leaves after one page read),
// then joins the live fan-out; if it falls behind again it goes back to
// the table from where it was. Progress marks come from the fan-out, and
// after each full page of a catch-up (so a stream whose filter drops
// everything still hears how far it got).
type Stream struct {
	hub      *Hub
	consumer *store.ConsumerID
	last     int64 // last revision returned
	page     []store.Change
	pos      int
	// upTo, while a subscription is up, is the subscription's start: the
	// changes up to it come from the ring or the table, later ones from
	// the subscription.
	upTo int64
	sub  *Subscription
	// batch holds what the subscription returned at its last wake-up,
	// from bpos on (reused).
	batch []Item
	bpos  int
	// progress is a mark to return once the page is drained (0: none).
	progress int64
	// d is the stream's state while the hub's senders serve it (Serve);
	// slow: a send to it once stalled a sender, it is not handed to them
	// again.
	d    delivery
	slow bool
}

// Open starts a stream of the changes after `after`. It fails with
// ErrCompacted when revision after+1 is no longer in the log — judged by
// the table, so every replica answers a resume the same way whatever its
// memory holds — and with ErrStopped when the hub is shutting down. It
// reads no change yet: Next does, a page at a time.
func (h *Hub) Open(ctx context.Context, after int64, consumer *store.ConsumerID) (*Stream, error) {
	if _, err := h.Current(ctx); err != nil {
		return nil, err
	}
	oldest, err := h.src.OldestRevision(ctx)
	if err != nil {
		return nil, err
	}
	if oldest > after+1 {
		return nil, fmt.Errorf("%w: revision %d is no longer in the change log (oldest kept: %d)", ErrCompacted, after+1, oldest)
	}
	return &Stream{hub: h, consumer: consumer, last: after}, nil
}

// Last is the last revision the stream returned (or started after).
func (s *Stream) Last() int64 { return s.last }

// Close ends the stream, once Next or Serve has returned.
func (s *Stream) Close() {
	// No sender may take from the subscription once it is gone (Serve
	// has handed the stream back by now: this only guards misuse).
	s.d.mu.Lock()
	s.d.active = false
	s.d.mu.Unlock()
	if s.sub != nil {
		s.sub.Close()
		s.sub = nil
	}
	s.page, s.batch, s.bpos = nil, nil, 0
}

// Next returns the next item: a change (revision last+1, as the log is
// gap-free) or a progress mark. It blocks until there is one or ctx ends,
// and fails with ErrCompacted (the log no longer holds what comes next)
// or ErrStopped (the hub is shutting down).
func (s *Stream) Next(ctx context.Context) (Item, error) {
	return s.next(ctx, true)
}

// errLive: the stream is caught up and would wait on its subscription,
// which the senders can do for it (Serve).
var errLive = errors.New("watch: stream live")

// next is Next; unless wait, it returns errLive instead of waiting on the
// subscription when the senders can serve the stream.
func (s *Stream) next(ctx context.Context, wait bool) (Item, error) {
	for {
		if err := ctx.Err(); err != nil {
			return Item{}, err
		}
		if s.pos < len(s.page) {
			c := &s.page[s.pos]
			s.pos++
			if c.Revision <= s.last {
				continue
			}
			if c.Revision != s.last+1 {
				return Item{}, fmt.Errorf("%w: revision %d is no longer in the change log", ErrCompacted, s.last+1)
			}
			s.last = c.Revision
			return Item{Change: c}, nil
		}
		if s.progress > 0 {
			p := s.progress
			s.progress = 0
			return Item{Progress: p}, nil
		}
		if s.sub == nil {
			if err := s.catchUp(ctx); err != nil {
				return Item{}, err
			}
			continue
		}
		if s.last < s.upTo {
			// The changes between where the table read ended and where the
			// subscription began.
			if err := s.fill(ctx); err != nil {
				return Item{}, err
			}
			continue
		}
		if s.bpos == len(s.batch) {
			if !wait && s.live() {
				return Item{}, errLive
			}
			clear(s.batch)
			batch, err := s.sub.Next(ctx, s.batch[:0])
			s.batch, s.bpos = batch, 0
			if err != nil {
				if ctx.Err() != nil {
					return Item{}, ctx.Err()
				}
				s.sub.Close()
				s.sub = nil
				if errors.Is(err, ErrLagged) {
					continue // back to the table from s.last
				}
				return Item{}, err
			}
		}
		item := s.batch[s.bpos]
		s.bpos++
		if item.Change != nil {
			if item.Change.Revision <= s.last {
				continue // already read from the table
			}
			s.last = item.Change.Revision
		}
		return item, nil
	}
}

// catchUp reads the next page from the table; once a page comes back short
// (the table's end, as of that read) it subscribes to the fan-out.
func (s *Stream) catchUp(ctx context.Context) error {
	h := s.hub
	h.mu.Lock()
	stopped := h.stopped
	h.mu.Unlock()
	if stopped {
		return ErrStopped
	}
	page, err := s.read(ctx, 0)
	if err != nil {
		return err
	}
	if len(page) == h.opts.Page {
		s.progress = page[len(page)-1].Revision
		return nil
	}
	sub, err := h.Subscribe(ctx, s.consumer)
	if err != nil {
		return err
	}
	s.sub, s.upTo = sub, sub.Start()
	return nil
}

// fill reads the next page of (last, upTo], from the ring when it still
// holds it, else from the table.
func (s *Stream) fill(ctx context.Context) error {
	h := s.hub
	h.mu.Lock()
	if n := len(h.ring); n > 0 && h.ring[0].Revision <= s.last+1 && h.ring[n-1].Revision >= s.upTo {
		first := int(s.last + 1 - h.ring[0].Revision)
		count := min(int(s.upTo-s.last), h.opts.Page)
		s.page, s.pos = s.page[:0], 0
		for _, c := range h.ring[first : first+count] {
			s.page = append(s.page, *c)
		}
		h.mu.Unlock()
		return nil
	}
	h.mu.Unlock()
	page, err := s.read(ctx, s.upTo)
	if err != nil {
		return err
	}
	if len(page) == 0 {
		return fmt.Errorf("%w: revision %d is no longer in the change log", ErrCompacted, s.last+1)
	}
	return nil
}

// read loads the next page after s.last (up to upTo; 0: no bound) into
// s.page, reusing its memory.
func (s *Stream) read(ctx context.Context, upTo int64) ([]store.Change, error) {
	page, err := s.hub.src.ChangesAfter(ctx, s.last, upTo, s.hub.opts.Page)
	if err != nil {
		return nil, err
	}
	if len(page) > 0 && page[0].Revision != s.last+1 {
		return nil, fmt.Errorf("%w: revision %d is no longer in the change log", ErrCompacted, s.last+1)
	}
	s.page, s.pos = page, 0
	return page, nil
}
