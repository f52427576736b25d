package watch

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Live streams are served by a few sender goroutines per hub, not each by
// its own goroutine. With one goroutine per stream, every change woke
// every stream's goroutine (a channel send, a wake-up, a switch and a park
// per stream per change: a third of the server's CPU at 10,000 streams,
// the rest being gRPC's send). Instead, publish queues the streams that
// have something pending, and up to Options.Senders goroutines take each
// one's items and send them, one stream after another; the stream's own
// goroutine stays parked until the stream needs it again (Stream.Serve).
//
// A send blocks when a client stops reading (gRPC's per-stream write quota
// is full): a sender stuck in one send for longer than Options.SendStall
// is replaced by a new one, so the other streams go on, and the stuck
// stream goes back to its own goroutine when the send returns — from then
// on it is served as before: it lags, is cut loose and catches up from the
// table, without ever holding up a sender again.

// delivery is a live stream served by the senders.
type delivery struct {
	s    *Stream
	send func(Item) error
	// state says where the stream is with the senders (see mark and run):
	// one queue entry at most, one sender at a time, and a change
	// published while a sender serves it is never lost.
	state atomic.Int32
	// slow: a send to this stream stalled a sender; hand it back.
	slow atomic.Bool
	// mu is held by the sender serving the stream (and briefly by the
	// stream's own goroutine, to see whether it was handed back); what
	// follows and the Stream's fields are guarded by it while the stream
	// is handed over.
	mu     sync.Mutex
	active bool
	// back: the senders handed the stream back, with err: nil (the
	// subscription ended or the stream is slow: its goroutine goes on
	// with Next) or send's error.
	back bool
	err  error
}

// A delivery's states.
const (
	idle    int32 = iota // not queued, no sender on it
	queued               // in the senders' queue, once
	running              // a sender serves it
	dirty                // a sender serves it, and more was published meanwhile
)

// mark notes that the stream has something pending. It reports whether
// the caller must queue it (it was idle); a stream queued already, or
// being served (the sender looks again once done), needs nothing more.
func (d *delivery) mark() bool {
	for {
		switch st := d.state.Load(); st {
		case idle:
			if d.state.CompareAndSwap(idle, queued) {
				return true
			}
		case running:
			if d.state.CompareAndSwap(running, dirty) {
				return false
			}
		default:
			return false
		}
	}
}

// run serves d, taken from the queue, and again while more was published
// meanwhile. Only this sender serves d until it returns (the state
// machine), so the lock can be waited for: its only other holder is the
// stream's goroutine, for a moment. (A try-lock that gave up when that
// goroutine held it left the stream marked queued in no queue: no later
// change queued it again, and a live stream went silent.)
func (d *delivery) run(w *sender) {
	d.state.Store(running)
	for {
		d.mu.Lock()
		if d.active {
			d.step(w)
		}
		d.mu.Unlock()
		if d.state.CompareAndSwap(running, idle) {
			return
		}
		d.state.Store(running) // was dirty
	}
}

// step sends what is pending; d.mu is held.
func (d *delivery) step(w *sender) {
	s := d.s
	batch, err := s.sub.take(s.batch[:0])
	for i, item := range batch {
		if d.slow.Load() {
			// What is left goes out from the stream's goroutine.
			s.batch, s.bpos = batch, i
			d.handBack(nil)
			return
		}
		if item.Change != nil {
			if item.Change.Revision <= s.last {
				continue
			}
			s.last = item.Change.Revision
		}
		w.since.Store(time.Now().UnixNano())
		serr := d.sendOne(item)
		w.since.Store(0)
		if serr != nil {
			clear(batch)
			s.batch, s.bpos = batch[:0], 0
			d.handBack(serr)
			return
		}
	}
	clear(batch)
	// Everything taken was sent: nothing of the batch is left for the
	// stream's goroutine (its position too, or its next read indexes an
	// empty batch).
	s.batch, s.bpos = batch[:0], 0
	if err != nil || d.slow.Load() || s.sub.ended.Load() {
		// The subscription ended: its goroutine's Next takes the same
		// error again and acts on it (catch up, or stop). Also when take
		// still had changes for it (a hub stopped with changes the stream
		// had not taken yet gives those first, then the error): the stop's
		// signal may have been this very run, and nothing signals a
		// stopped hub's subscription again, so the stream would wait for
		// ever, never told the server is shutting down.
		d.handBack(nil)
	}
}

// errSendPanicked ends a stream whose send panicked on a sender's
// goroutine, where no handler's recovery would catch it.
var errSendPanicked = errors.New("watch: sending to the stream panicked")

// sendOne sends one item; a panic in send ends the stream, not the
// process, and is logged (its type only: the value may hold the item).
func (d *delivery) sendOne(item Item) (err error) {
	defer func() {
		if p := recover(); p != nil {
			d.s.hub.opts.Logger.Error("panic sending to a watch stream; the stream ends", "type", fmt.Sprintf("%T", p))
			err = errSendPanicked
		}
	}()
	return d.send(item)
}

// handBack returns the stream to its goroutine; d.mu is held.
func (d *delivery) handBack(err error) {
	d.active, d.back, d.err = false, true, err
	d.s.sub.direct.Store(nil)
	d.s.sub.wakeReader()
}

// senders is a hub's pool of sender goroutines. They run only while there
// is work: a sender exits when the queue is empty.
type senders struct {
	max   int
	stall time.Duration

	mu      sync.Mutex
	queue   []*delivery
	next    []*delivery // the queue's other buffer (reused)
	running map[*sender]struct{}
	// watching: the stall monitor is running.
	watching bool
	// stalls counts the sends that stalled a sender.
	stalls atomic.Int64
}

type sender struct {
	// since is when the send in progress began (Unix ns; 0: none).
	since atomic.Int64
	// current is the stream being served (under senders.mu).
	current *delivery
}

func newSenders(max int, stall time.Duration) *senders {
	return &senders{max: max, stall: stall, running: map[*sender]struct{}{}}
}

// schedule queues the given streams (marked queued by mark) and starts
// senders as needed.
func (p *senders) schedule(ds ...*delivery) {
	if len(ds) == 0 {
		return
	}
	p.mu.Lock()
	p.queue = append(p.queue, ds...)
	for len(p.running) < p.max && len(p.running) < len(p.queue) {
		w := &sender{}
		p.running[w] = struct{}{}
		go p.work(w)
	}
	if !p.watching {
		p.watching = true
		go p.watch()
	}
	p.mu.Unlock()
}

// enqueue queues d if it needs it (see mark).
func (p *senders) enqueue(d *delivery) {
	if d.mark() {
		p.schedule(d)
	}
}

func (p *senders) work(w *sender) {
	p.mu.Lock()
	for {
		if _, ok := p.running[w]; !ok {
			// Replaced while stuck in a send: the new sender carries on.
			p.mu.Unlock()
			return
		}
		if len(p.queue) == 0 {
			delete(p.running, w)
			p.mu.Unlock()
			return
		}
		d := p.queue[0]
		p.queue[0] = nil
		p.queue = p.queue[1:]
		if len(p.queue) == 0 {
			// Swap buffers so the queue's memory is reused, not regrown.
			p.queue, p.next = p.next[:0], p.queue[:0]
		}
		w.current = d
		p.mu.Unlock()
		d.run(w)
		p.mu.Lock()
		w.current = nil
	}
}

// watch replaces the senders stuck in one send for longer than p.stall,
// while any sender runs.
func (p *senders) watch() {
	tick := time.NewTicker(max(p.stall/4, time.Millisecond))
	defer tick.Stop()
	for range tick.C {
		now := time.Now().UnixNano()
		p.mu.Lock()
		if len(p.running) == 0 {
			p.watching = false
			p.mu.Unlock()
			return
		}
		for w := range p.running {
			since := w.since.Load()
			if since == 0 || now-since < int64(p.stall) || w.current == nil || w.since.Load() != since {
				// No send, a short one, or it just ended.
				continue
			}
			w.current.slow.Store(true)
			p.stalls.Add(1)
			delete(p.running, w)
			if len(p.queue) > 0 {
				r := &sender{}
				p.running[r] = struct{}{}
				go p.work(r)
			}
		}
		p.mu.Unlock()
	}
}

// live reports whether the stream is caught up with nothing of its own
// pending, so that the senders can serve it.
func (s *Stream) live() bool {
	return s.sub != nil && !s.slow && s.hub.senders != nil && s.last >= s.upTo &&
		s.pos >= len(s.page) && s.bpos >= len(s.batch) && s.progress == 0
}

// Serve sends every item of the stream to send, in order, until ctx ends
// (ctx's error), send fails (its error), or the stream does (Next's
// errors). While the stream is live the hub's senders call send, on their
// goroutines, one call at a time; otherwise the caller's goroutine does.
func (s *Stream) Serve(ctx context.Context, send func(Item) error) error {
	wait := false
	for {
		item, err := s.next(ctx, wait)
		if err == errLive {
			if err := s.handOver(ctx, send); err != nil {
				return err
			}
			// Handed back: the subscription ended or the stream is slow;
			// the next call to next takes it from here, waiting if need
			// be.
			wait = true
			continue
		}
		if err != nil {
			return err
		}
		wait = false
		if err := send(item); err != nil {
			return err
		}
	}
}

// handOver lets the senders serve the stream until they hand it back
// (nil, or send's error) or ctx ends (ctx's error).
func (s *Stream) handOver(ctx context.Context, send func(Item) error) error {
	d, sub := &s.d, s.sub
	d.mu.Lock()
	// slow is cleared before a sender can see the stream active: a stall
	// marked from then on stays marked.
	d.slow.Store(false)
	d.s, d.send, d.active, d.back, d.err = s, send, true, false, nil
	d.mu.Unlock()
	sub.direct.Store(d)
	// Whatever was published before the hand-over signalled the reader:
	// one look from a sender.
	s.hub.senders.enqueue(d)
	for {
		sub.wait(ctx)
		d.mu.Lock()
		if d.back {
			err := d.err
			d.send, d.err = nil, nil
			d.mu.Unlock()
			s.slow = d.slow.Load()
			return err
		}
		if err := ctx.Err(); err != nil {
			d.active, d.send = false, nil
			sub.direct.Store(nil)
			d.mu.Unlock()
			return err
		}
		d.mu.Unlock()
	}
}
