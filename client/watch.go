package client

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
)

// WatchOption adjusts a Watch.
type WatchOption func(*watchOptions)

type watchOptions struct {
	keys           []string
	categories     []string
	start          int64
	loaded         int64
	consumer       *Consumer
	progressNotify bool
	interval       time.Duration
	buffer         int
	// alive is called (on the watch goroutine) for every message received,
	// header and progress included; caches use it to track freshness.
	alive func(revision int64)
	// onError is told of every interruption the watch recovers from.
	onError func(error)
	// afterZero: a start revision of 0 means "after revision 0" (the caller
	// loaded an empty log), not "from now".
	afterZero bool
	// loadedRef, if set, is read at every (re)connect, so a cache can
	// update the loaded revision it reports.
	loadedRef *atomic.Int64
}

// WatchKeys keeps changes to these keys only.
func WatchKeys(keys ...string) WatchOption {
	return func(o *watchOptions) { o.keys = append(o.keys, keys...) }
}

// WatchCategories keeps changes in these categories only.
func WatchCategories(categories ...string) WatchOption {
	return func(o *watchOptions) { o.categories = append(o.categories, categories...) }
}

// WatchFromRevision starts after revision: the last revision the caller has
// seen (e.g. the Revision of a list or read). Every later change is
// delivered. Without it the watch starts from now.
func WatchFromRevision(revision int64) WatchOption {
	return func(o *watchOptions) { o.start = revision }
}

// WatchLoadedRevision reports, with the consumer identity, the revision
// whose values this process runs with, so the service can tell which
// restart-required changes it has not picked up.
func WatchLoadedRevision(revision int64) WatchOption {
	return func(o *watchOptions) { o.loaded = revision }
}

// WatchConsumer names the watching instance (default: the client's
// WithConsumer identity, if any).
func WatchConsumer(c Consumer) WatchOption {
	return func(o *watchOptions) { o.consumer = &c }
}

// WatchProgressNotify delivers the service's progress messages (responses
// with Progress set) as well as events.
func WatchProgressNotify() WatchOption {
	return func(o *watchOptions) { o.progressNotify = true }
}

// WatchProgressInterval is the service's progress interval (default 5 s).
// A stream that is silent for twice as long once it has sent its header is
// taken as stalled and reconnected. Opening it is waited for longer: the
// client's call timeout (WithTimeout), at least 10 s and at least twice the
// interval.
func WatchProgressInterval(d time.Duration) WatchOption {
	return func(o *watchOptions) { o.interval = d }
}

// WatchResponse is one delivery of a watch.
type WatchResponse struct {
	// Revision is the revision the watch is up to date with.
	Revision int64
	// Events holds changes, in revision order.
	Events []ChangeEvent
	// Created marks the first response: Revision is the service's revision
	// when the watch started.
	Created bool
	// Progress marks a progress message (with WatchProgressNotify).
	Progress bool
	// Err ends the watch; the channel closes after it. Relist when
	// errors.Is(Err, ErrRelistRequired).
	Err error
}

// RelistRequired reports whether the watch ended because its revision is no
// longer available: load again, then watch from the new revision.
func (r WatchResponse) RelistRequired() bool { return errors.Is(r.Err, ErrRelistRequired) }

// errStalled ends a stream that sent nothing for twice the progress
// interval.
var errStalled = errors.New("secrets: change stream stalled")

// Watch streams committed changes until ctx ends or the client is closed
// (the channel then closes without an error response). It reconnects with
// backoff when the stream ends, fails or stalls, resuming after the last
// revision it delivered, so no change is lost or repeated. It ends with a
// response whose Err is set only for errors a retry cannot fix: a revision
// the service no longer has (ErrRelistRequired), bad options
// (ErrInvalidArgument), or missing rights.
func (c *Client) Watch(ctx context.Context, opts ...WatchOption) <-chan WatchResponse {
	o := watchOptions{interval: 5 * time.Second, buffer: 64}
	for _, opt := range opts {
		opt(&o)
	}
	return c.watch(ctx, o)
}

func (c *Client) watch(ctx context.Context, o watchOptions) <-chan WatchResponse {
	if o.consumer == nil && c.opts.service != "" {
		cons := c.Consumer()
		o.consumer = &cons
	}
	if o.interval <= 0 {
		o.interval = 5 * time.Second
	}
	w := &watcher{c: c, o: o, out: make(chan WatchResponse, max(o.buffer, 1)), last: o.start, loaded: o.loadedRef}
	if w.loaded == nil {
		w.loaded = new(atomic.Int64)
		w.loaded.Store(o.loaded)
	}
	// The watch ends with the caller's context or with the client.
	wctx, cancel := context.WithCancel(ctx)
	unlink := context.AfterFunc(c.life, cancel)
	if !c.spawn(func() {
		defer cancel()
		defer unlink()
		w.run(wctx)
	}) {
		unlink()
		cancel()
		close(w.out)
	}
	return w.out
}

type watcher struct {
	c       *Client
	o       watchOptions
	out     chan WatchResponse
	last    int64
	created bool
	loaded  *atomic.Int64
}

func (w *watcher) run(ctx context.Context) {
	defer close(w.out)
	b := newBackoff(w.c.opts.retry)
	for {
		connected, err := w.stream(ctx)
		if ctx.Err() != nil {
			return
		}
		if permanentWatchError(err) {
			w.send(ctx, WatchResponse{Revision: w.last, Err: err})
			return
		}
		if connected {
			b.reset()
		}
		if w.o.onError != nil {
			w.o.onError(err)
		}
		d := b.next()
		w.c.opts.logger.Warn("secrets: change stream interrupted; resuming", "after_revision", w.last, "error", err, "retry_in", d.Round(time.Millisecond))
		if !sleepCtx(ctx, d) {
			return
		}
	}
}

func permanentWatchError(err error) bool {
	if errors.Is(err, errStalled) {
		return false
	}
	switch Code(err) {
	case codes.OutOfRange, codes.InvalidArgument, codes.PermissionDenied, codes.Unauthenticated,
		codes.Unimplemented, codes.NotFound, codes.FailedPrecondition:
		return true
	}
	return false
}

// stream runs one WatchChanges call; connected reports whether it got as
// far as the header.
func (w *watcher) stream(ctx context.Context) (connected bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req := &pb.WatchChangesRequest{StartRevision: w.last, Keys: w.o.keys, Categories: w.o.categories,
		LoadedRevision: w.loaded.Load()}
	if w.o.consumer != nil {
		req.Consumer = w.o.consumer.proto()
	}
	// Until the header the service is still opening the stream
	// (authentication, the consumer's registration, a write, and a loaded
	// server's queue): that is a call, bounded like one, not silence. Cut
	// at twice the progress interval, every attempt on a busy server would
	// be cancelled before it could answer, forever. After the header,
	// silence for twice the interval is a stall.
	var stalled atomic.Bool
	stallAfter := 2 * w.o.interval
	timer := time.AfterFunc(w.openTimeout(), func() { stalled.Store(true); cancel() })
	defer timer.Stop()
	st, err := w.c.secrets.WatchChanges(sctx, req)
	if err != nil {
		return false, fromRPC("WatchChanges", err)
	}
	for {
		msg, err := st.Recv()
		if err != nil {
			if stalled.Load() && ctx.Err() == nil {
				if !connected {
					return false, fmt.Errorf("%w: no header within %v", errStalled, w.openTimeout())
				}
				return connected, errStalled
			}
			return connected, fromRPC("WatchChanges", err)
		}
		// Time spent handing a response to a slow reader is not the
		// stream's silence.
		timer.Stop()
		var r WatchResponse
		var deliver bool
		switch m := msg.GetResult().(type) {
		case *pb.WatchChangesResponse_Header:
			connected = true
			if w.last == 0 {
				// start_revision 0 can only say "from now": after revision 0
				// it resumes safely only while nothing has committed since.
				if w.o.afterZero && m.Header.GetRevision() > 0 {
					return connected, &Error{Op: "WatchChanges", Code: codes.OutOfRange,
						Message: "cannot resume after revision 0 once changes have committed; list again and watch from its revision"}
				}
				w.last = m.Header.GetRevision()
			}
			w.o.afterZero = true
			if !w.created {
				w.created = true
				r, deliver = WatchResponse{Revision: w.last, Created: true}, true
			}
		case *pb.WatchChangesResponse_Event:
			ev := changeFrom(m.Event)
			// A value that expired, was deleted, or whose version was
			// disabled or destroyed (a leak's first response) must not
			// stand in for the database during a later outage (Resolve's
			// last-known value).
			switch ev.Kind {
			case ChangeSecretExpired, ChangeSecretDeleted:
				w.c.forget(ev.Key, 0, ev.Revision)
			case ChangeVersionDisabled, ChangeVersionDestroyed:
				w.c.forget(ev.Key, ev.Version, ev.Revision)
			}
			if ev.Revision > w.last {
				w.last = ev.Revision
				r, deliver = WatchResponse{Revision: ev.Revision, Events: []ChangeEvent{ev}}, true
			}
		case *pb.WatchChangesResponse_Progress:
			if rev := m.Progress.GetRevision(); rev > w.last {
				w.last = rev
			}
			r, deliver = WatchResponse{Revision: w.last, Progress: true}, w.o.progressNotify
		}
		if w.o.alive != nil {
			w.o.alive(w.last)
		}
		if deliver && !w.send(ctx, r) {
			return connected, ctx.Err()
		}
		timer.Reset(stallAfter)
	}
}

// openTimeout bounds the wait for a stream's header: the client's call
// timeout (WithTimeout), at least twice the progress interval, and never
// less than minWatchOpen.
func (w *watcher) openTimeout() time.Duration {
	return max(w.c.opts.timeout, 2*w.o.interval, minWatchOpen)
}

// minWatchOpen is the shortest wait for a stream's header.
const minWatchOpen = 10 * time.Second

func (w *watcher) send(ctx context.Context, r WatchResponse) bool {
	select {
	case w.out <- r:
		return true
	case <-ctx.Done():
		return false
	}
}
