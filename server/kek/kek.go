// Package kek owns key-encryption-key (KEK) rotation: re-wrapping every data
// key under the primary KEK, online, in small batches, with progress (done/total, rate, estimated time) readable at
// any time; and the per-KEK counts that say when an old KEK can be removed.
// The server's KeyService and `secretsd kek` both use it.
//
// Rotation never decrypts a value and never touches a ciphertext: only the
// wrapped data keys and their KEK ids change. It is resumable by
// construction: the rows still to do are exactly those whose KEK is not the
// primary, so a rotation killed at any point is finished by running it again.
//
// No lock is ever held across a KMS call: a batch is read without locks,
// re-wrapped outside any transaction, and stored row by row only where the
// row still holds the data key that was read (same KEK id and wrapped key);
// a row that changed meanwhile (a writer destroyed or deleted it, another
// replica re-wrapped it) is skipped and read again by the next pass. Writers
// therefore wait on rotation for one short UPDATE at most, whatever the KMS's
// latency, and several workers (or replicas) can rotate at once.
package kek

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/orient-bot/secrets/server/seal"
	"github.com/orient-bot/secrets/server/store"
)

// Store is what rotation needs from the database.
type Store interface {
	CountByKEK(ctx context.Context) ([]store.KEKCount, error)
	KeysToRewrap(ctx context.Context, primaryID string, after store.WrappedKey, limit int) ([]store.WrappedKey, error)
	ApplyRewrapped(ctx context.Context, keys []store.Rewrapped) (int, error)
	RecordRotation(ctx context.Context, meta store.Meta, outcome, detail string) error
}

// Keyring is what rotation needs from the keyring.
type Keyring interface {
	PrimaryID() string
	IDs() []string
	Rewrap(ctx context.Context, s seal.Sealed) (seal.Sealed, error)
}

// ErrKEKInUse means the database holds data keys wrapped by a KEK that is
// not configured: they cannot be opened, so the server refuses to start and
// rotation refuses to run.
var ErrKEKInUse = errors.New("a KEK that still wraps data keys is not configured")

// ErrRunning means a rotation is already running on this Rotator.
var ErrRunning = errors.New("a KEK rotation is already running")

// Limits and defaults of Options.
const (
	DefaultBatchSize = 100
	MaxBatchSize     = 1000
	DefaultWorkers   = 2
	MaxWorkers       = 16
)

// Options tune a rotation. Zero values take the defaults.
type Options struct {
	// BatchSize is how many data keys one batch reads, re-wraps and stores
	// (default 100, at most 1000).
	BatchSize int
	// Workers is how many batches are re-wrapped at once (default 2). They
	// never share a row: one reader hands each page to one worker.
	Workers int
	// Pause is slept by each worker between batches, to leave the database
	// and the KMS to the service (default 0).
	Pause time.Duration
	// BatchTimeout bounds one batch's KMS calls, so a hung KMS call cannot
	// stall a worker for long (default 30 s). What was re-wrapped before it
	// ran out is stored, and the rest of the batch is retried.
	BatchTimeout time.Duration
	// Retries is how many times in a row a batch that failed for a
	// transient reason (KMS or database unavailable) is retried, with
	// backoff, before the rotation stops (default 8, about 25 s).
	Retries int
	// RefreshInterval is how often the total is recounted while running
	// (default 10 s).
	RefreshInterval time.Duration
	// Logger receives progress and errors; nil discards.
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.BatchSize <= 0 {
		o.BatchSize = DefaultBatchSize
	}
	o.BatchSize = min(o.BatchSize, MaxBatchSize)
	if o.Workers <= 0 {
		o.Workers = DefaultWorkers
	}
	o.Workers = min(o.Workers, MaxWorkers)
	if o.BatchTimeout <= 0 {
		o.BatchTimeout = 30 * time.Second
	}
	if o.Retries <= 0 {
		o.Retries = 8
	}
	if o.RefreshInterval <= 0 {
		o.RefreshInterval = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// KEKStatus is one KEK and how many data keys it wraps.
type KEKStatus struct {
	ID         string
	DataKeys   int64
	Primary    bool
	Configured bool
}

// Status lists every configured KEK (primary first, in configuration
// order) with the number of data keys it wraps, then every KEK the
// database names that is not configured.
func Status(ctx context.Context, st Store, kr Keyring) ([]KEKStatus, error) {
	counts, err := st.CountByKEK(ctx)
	if err != nil {
		return nil, err
	}
	return statusOf(counts, kr), nil
}

func statusOf(counts []store.KEKCount, kr Keyring) []KEKStatus {
	byID := make(map[string]int64, len(counts))
	for _, c := range counts {
		byID[c.KEKID] += c.DataKeys
	}
	primary := kr.PrimaryID()
	var out []KEKStatus
	for _, id := range kr.IDs() {
		out = append(out, KEKStatus{ID: id, DataKeys: byID[id], Primary: id == primary, Configured: true})
		delete(byID, id)
	}
	var unknown []KEKStatus
	for id, n := range byID {
		if n > 0 {
			unknown = append(unknown, KEKStatus{ID: id, DataKeys: n})
		}
	}
	slices.SortFunc(unknown, func(a, b KEKStatus) int { return cmp.Compare(a.ID, b.ID) })
	return append(out, unknown...)
}

// CheckConfigured returns ErrKEKInUse, naming each KEK and its count, if the
// database holds data keys wrapped by a KEK the keyring does not have.
func CheckConfigured(ctx context.Context, st Store, kr Keyring) error {
	status, err := Status(ctx, st, kr)
	if err != nil {
		return fmt.Errorf("count data keys by KEK: %w", err)
	}
	return checkStatus(status)
}

func checkStatus(status []KEKStatus) error {
	var missing []string
	for _, s := range status {
		if !s.Configured && s.DataKeys > 0 {
			missing = append(missing, fmt.Sprintf("KEK %s still wraps %d data keys", s.ID, s.DataKeys))
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s but is not in SECRETS_KEK_URL. Put it back (after the primary), run `secretsd kek rotate` "+
		"(or the RotateKEK RPC), and remove it only when `secretsd kek status` shows 0 data keys for it",
		ErrKEKInUse, strings.Join(missing, "; "))
}

// remaining is how many data keys are wrapped by another KEK than primary.
func remaining(counts []store.KEKCount, primary string) int64 {
	var n int64
	for _, c := range counts {
		if c.KEKID != primary {
			n += c.DataKeys
		}
	}
	return n
}

// Progress is a rotation's progress.
type Progress struct {
	Running bool
	// Done is how many data keys this rotation re-wrapped.
	Done int64
	// Total is Done plus the data keys still wrapped by another KEK than the
	// primary, as last counted.
	Total int64
	// Rate is data keys re-wrapped per second since the start.
	Rate float64
	// ETA is the estimated time left; 0 when finished, -1 when unknown.
	ETA       time.Duration
	PrimaryID string
	StartTime time.Time
	// EndTime is zero while running.
	EndTime time.Time
	// Err is what stopped the last run, if anything.
	Err error
}

// String renders p on one line, e.g.
// "1200/5000 data keys (24%), 830/s, about 5s left".
func (p Progress) String() string {
	pct := 100.0
	if p.Total > 0 {
		pct = 100 * float64(p.Done) / float64(p.Total)
	}
	s := fmt.Sprintf("%d/%d data keys (%.0f%%), %.0f/s", p.Done, p.Total, pct, p.Rate)
	switch {
	case p.Running && p.ETA >= 0:
		s += fmt.Sprintf(", about %s left", p.ETA.Round(time.Second))
	case p.Running:
		s += ", estimating time left"
	case p.Err != nil:
		s += ", stopped: " + p.Err.Error()
	case !p.EndTime.IsZero():
		s += fmt.Sprintf(", done in %s", p.EndTime.Sub(p.StartTime).Round(time.Millisecond))
	}
	return s
}

// Rotator runs one rotation at a time and keeps its progress readable from
// other goroutines. The zero value is not usable; use New.
type Rotator struct {
	store   Store
	keyring Keyring
	opts    Options

	done, total atomic.Int64

	mu      sync.Mutex // guards the fields below
	running bool
	primary string
	start   time.Time
	end     time.Time
	lastErr error
	finish  chan struct{} // closed when the current run ends
}

// New returns a Rotator over st and kr.
func New(st Store, kr Keyring, opts Options) *Rotator {
	return &Rotator{store: st, keyring: kr, opts: opts.withDefaults()}
}

// Progress returns the progress of the running rotation, or of the last one.
func (r *Rotator) Progress() Progress {
	r.mu.Lock()
	p := Progress{Running: r.running, PrimaryID: r.primary, StartTime: r.start, EndTime: r.end, Err: r.lastErr}
	r.mu.Unlock()
	p.Done, p.Total = r.done.Load(), r.total.Load()
	p.Total = max(p.Total, p.Done)
	p.ETA = -1
	if p.StartTime.IsZero() {
		p.ETA = 0
		return p
	}
	end := p.EndTime
	if end.IsZero() {
		end = time.Now()
	}
	if secs := end.Sub(p.StartTime).Seconds(); secs > 0 {
		p.Rate = float64(p.Done) / secs
	}
	switch {
	case !p.Running:
		p.ETA = 0
	case p.Total == p.Done:
		p.ETA = 0
	case p.Rate > 0:
		p.ETA = time.Duration(float64(p.Total-p.Done) / p.Rate * float64(time.Second))
	}
	return p
}

// Start starts a rotation in the background, bounded by lifetime (the
// server's, not the request's), unless one is already running: then it
// returns started=false and the running one carries on. Either way the call
// is audited. The checks that can refuse the rotation (an unconfigured KEK in
// use, the start not audited) run under ctx before it returns. batchSize 0
// keeps the configured size.
func (r *Rotator) Start(ctx, lifetime context.Context, meta store.Meta, batchSize int) (started bool, err error) {
	opts, primary, err := r.begin(ctx, meta, batchSize)
	if errors.Is(err, ErrRunning) {
		p := r.Progress()
		if err := r.store.RecordRotation(ctx, meta, "JOINED", "joined the running rotation: "+p.String()); err != nil {
			return false, fmt.Errorf("audit the call: %w", err)
		}
		return false, nil
	}
	if err != nil {
		return false, err
	}
	go r.run(lifetime, meta, opts, primary)
	return true, nil
}

// Status is the package's Status over the Rotator's store and keyring.
func (r *Rotator) Status(ctx context.Context) ([]KEKStatus, error) {
	return Status(ctx, r.store, r.keyring)
}

// Run runs a rotation to its end in the calling goroutine and returns what
// stopped it (nil once every data key is wrapped by the primary KEK).
// Canceling ctx stops it after the batches in flight roll back; running it
// again resumes.
func (r *Rotator) Run(ctx context.Context, meta store.Meta) error {
	opts, primary, err := r.begin(ctx, meta, 0)
	if err != nil {
		return err
	}
	return r.run(ctx, meta, opts, primary)
}

// Wait blocks until no rotation is running.
func (r *Rotator) Wait() {
	r.mu.Lock()
	ch := r.finish
	r.mu.Unlock()
	if ch != nil {
		<-ch
	}
}

// begin checks, counts and audits the start of a rotation and marks it
// running.
func (r *Rotator) begin(ctx context.Context, meta store.Meta, batchSize int) (Options, string, error) {
	r.mu.Lock()
	if r.running {
		r.mu.Unlock()
		return Options{}, "", ErrRunning
	}
	r.running = true
	r.finish = make(chan struct{})
	r.mu.Unlock()

	opts := r.opts
	if batchSize > 0 {
		opts.BatchSize = min(batchSize, MaxBatchSize)
	}
	primary := r.keyring.PrimaryID()
	fail := func(err error) (Options, string, error) {
		r.mu.Lock()
		r.running = false
		close(r.finish)
		r.mu.Unlock()
		return Options{}, "", err
	}
	counts, err := r.store.CountByKEK(ctx)
	if err != nil {
		return fail(fmt.Errorf("count data keys by KEK: %w", err))
	}
	status := statusOf(counts, r.keyring)
	if err := checkStatus(status); err != nil {
		return fail(err)
	}
	todo := remaining(counts, primary)
	// No audit, no rotation: the start is recorded before anything changes.
	if err := r.store.RecordRotation(ctx, meta, "STARTED", fmt.Sprintf("re-wrap %d data keys under %s (%s)",
		todo, primary, describe(status))); err != nil {
		return fail(fmt.Errorf("audit the rotation's start: %w", err))
	}
	r.mu.Lock()
	r.primary, r.start, r.end, r.lastErr = primary, time.Now(), time.Time{}, nil
	r.done.Store(0)
	r.total.Store(todo)
	r.mu.Unlock()
	opts.Logger.InfoContext(ctx, "KEK rotation started", "primary", primary, "data_keys", todo,
		"batch_size", opts.BatchSize, "workers", opts.Workers, "actor", meta.Actor)
	return opts, primary, nil
}

// describe lists the counts for the audit detail, e.g.
// "kek-a: 0 (primary), kek-b: 5000".
func describe(status []KEKStatus) string {
	parts := make([]string, 0, len(status))
	for _, s := range status {
		p := fmt.Sprintf("%s: %d", s.ID, s.DataKeys)
		if s.Primary {
			p += " (primary)"
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, ", ")
}

// run re-wraps until nothing is left, then audits the end.
func (r *Rotator) run(ctx context.Context, meta store.Meta, opts Options, primary string) error {
	err := r.loop(ctx, opts, primary)
	if err == nil {
		r.total.Store(r.done.Load())
	}
	end := time.Now()
	done := r.done.Load()
	r.mu.Lock()
	elapsed := end.Sub(r.start)
	r.mu.Unlock()

	outcome, detail := "OK", fmt.Sprintf("re-wrapped %d data keys under %s in %s", done, primary, elapsed.Round(time.Millisecond))
	switch {
	case errors.Is(err, context.Canceled):
		outcome, detail = "CANCELLED", detail+"; interrupted, run it again to resume"
	case err != nil:
		outcome, detail = "FAILED", detail+"; stopped: "+err.Error()
	}
	// The end is audited even when ctx was canceled (a shutdown), and
	// before the rotation shows as over: whoever sees it over finds it
	// audited.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if aerr := r.store.RecordRotation(actx, meta, outcome, detail); aerr != nil {
		opts.Logger.ErrorContext(actx, "KEK rotation end not audited", "error", aerr)
	}

	r.mu.Lock()
	r.running = false
	r.end = end
	r.lastErr = err
	finished := r.finish
	r.mu.Unlock()
	close(finished)

	p := r.Progress()
	if err != nil {
		opts.Logger.WarnContext(actx, "KEK rotation stopped", "progress", p.String(), "error", err)
	} else {
		opts.Logger.InfoContext(actx, "KEK rotation finished", "progress", p.String())
	}
	return err
}

// loop runs passes until one finds nothing left to re-wrap. Rows that
// changed while their batch was at the KMS are skipped by the pass; the
// recount catches them and another pass follows.
func (r *Rotator) loop(ctx context.Context, opts Options, primary string) error {
	const maxPasses = 50
	lctx, stop := context.WithCancel(ctx)
	var refresher sync.WaitGroup
	defer refresher.Wait()
	defer stop()
	refresher.Go(func() { r.refresh(lctx, opts, primary) })
	for pass := 0; ; pass++ {
		if err := r.pass(ctx, opts, primary); err != nil {
			return err
		}
		counts, err := r.store.CountByKEK(ctx)
		if err != nil {
			return fmt.Errorf("count data keys by KEK: %w", err)
		}
		left := remaining(counts, primary)
		r.total.Store(r.done.Load() + left)
		if left == 0 {
			return nil
		}
		if pass == maxPasses {
			return fmt.Errorf("%d data keys are still wrapped by an old KEK (rows kept changing, or a replica still "+
				"seals with an old primary KEK); run the rotation again", left)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(min(pass+1, 10)) * 100 * time.Millisecond):
		}
	}
}

// pass reads every data key not wrapped by primary, page by page without
// locks, and hands the pages to opts.Workers workers that re-wrap them (KMS
// calls, outside any transaction) and store each one only if its row is
// unchanged. It ends when the reader reaches the end, or at the first error
// (which stops the others). Rows skipped because they changed meanwhile are
// left for the next pass.
func (r *Rotator) pass(ctx context.Context, opts Options, primary string) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	pages := make(chan []store.WrappedKey)
	var wg sync.WaitGroup
	for range opts.Workers {
		wg.Go(func() {
			for page := range pages {
				err := r.retry(ctx, opts, func() (bool, error) {
					n, err := r.batch(ctx, opts, primary, page)
					page = page[n:]
					return n > 0, err
				})
				if err != nil {
					cancel(err)
					return
				}
				if opts.Pause > 0 && !sleep(ctx, opts.Pause) {
					return
				}
			}
		})
	}
	err := r.read(ctx, opts, primary, pages)
	close(pages)
	if err != nil {
		cancel(err)
	}
	wg.Wait()
	// The first error, or the parent's cancellation; nil when every page
	// was handled.
	return context.Cause(ctx)
}

// read sends every page of data keys still to re-wrap to pages.
func (r *Rotator) read(ctx context.Context, opts Options, primary string, pages chan<- []store.WrappedKey) error {
	var after store.WrappedKey
	for {
		var page []store.WrappedKey
		err := r.retry(ctx, opts, func() (_ bool, err error) {
			page, err = r.store.KeysToRewrap(ctx, primary, after, opts.BatchSize)
			return false, err
		})
		if err != nil || len(page) == 0 {
			return err
		}
		after = page[len(page)-1]
		select {
		case pages <- page:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// retry runs fn until it succeeds, retrying transient failures (KMS or
// database unavailable) with backoff up to opts.Retries times in a row. A
// failure after progress (fn reports it: part of a batch was stored) is
// retried at once and starts the count again.
func (r *Rotator) retry(ctx context.Context, opts Options, fn func() (progressed bool, err error)) error {
	for failures := 0; ; {
		if err := ctx.Err(); err != nil {
			return err
		}
		progressed, err := fn()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !transient(err) {
			return err
		}
		if progressed {
			failures = 0
			continue
		}
		if failures >= opts.Retries {
			return err
		}
		failures++
		backoff := min(time.Duration(1<<failures)*50*time.Millisecond, 5*time.Second)
		opts.Logger.WarnContext(ctx, "KEK rotation step failed; retrying", "error", err, "attempt", failures, "backoff", backoff)
		if !sleep(ctx, backoff) {
			return ctx.Err()
		}
	}
}

// batch re-wraps a page with the KMS, outside any transaction, then
// stores the rows still unchanged in one short transaction, and returns
// how many of the page's rows it handled. The KMS calls share the batch's
// timeout; when a call fails (the timeout, the KMS down, a row that does
// not unwrap), the rows re-wrapped before it are stored all the same, so a
// KMS too slow to re-wrap a whole page within the timeout still moves on.
func (r *Rotator) batch(ctx context.Context, opts Options, primary string, page []store.WrappedKey) (int, error) {
	bctx, cancel := context.WithTimeout(ctx, opts.BatchTimeout)
	defer cancel()
	out := make([]store.Rewrapped, 0, len(page))
	var kmsErr error
	for _, k := range page {
		s, err := r.keyring.Rewrap(bctx, seal.Sealed{WrappedDEK: k.Sealed.WrappedDEK, KEKID: k.Sealed.KEKID})
		if err == nil && (s.KEKID != primary || len(s.WrappedDEK) == 0) {
			err = fmt.Errorf("re-wrapped under %q, want %q", s.KEKID, primary)
		}
		if err != nil {
			if k.ServiceKey() {
				kmsErr = fmt.Errorf("re-wrap data key of service key %s: %w", k.Key, err)
			} else {
				kmsErr = fmt.Errorf("re-wrap data key of %s version %d: %w", k.Key, k.Version, err)
			}
			break
		}
		out = append(out, store.Rewrapped{Old: k, New: store.Sealed{WrappedDEK: s.WrappedDEK, KEKID: s.KEKID}})
	}
	if len(out) == 0 {
		return 0, kmsErr
	}
	// Its own bound: the batch's may just have run out on the KMS.
	sctx, scancel := context.WithTimeout(ctx, opts.BatchTimeout)
	defer scancel()
	n, err := r.store.ApplyRewrapped(sctx, out)
	if err != nil {
		return 0, err
	}
	r.done.Add(int64(n))
	if skipped := len(out) - n; skipped > 0 {
		opts.Logger.DebugContext(ctx, "KEK rotation skipped rows that changed while re-wrapping", "skipped", skipped)
	}
	return len(out), kmsErr
}

// transient errors are retried: the KMS or the database may come back. A
// batch timeout is one too (the parent context is checked first).
func transient(err error) bool {
	return errors.Is(err, seal.ErrKEKUnavailable) || errors.Is(err, store.ErrUnavailable) ||
		errors.Is(err, context.DeadlineExceeded)
}

// refresh recounts the total now and then, so that rows deleted or
// destroyed meanwhile do not keep the progress from reaching 100%.
func (r *Rotator) refresh(ctx context.Context, opts Options, primary string) {
	t := time.NewTicker(opts.RefreshInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		counts, err := r.store.CountByKEK(ctx)
		if err != nil {
			continue
		}
		r.total.Store(r.done.Load() + remaining(counts, primary))
		opts.Logger.InfoContext(ctx, "KEK rotation progress", "progress", r.Progress().String())
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
