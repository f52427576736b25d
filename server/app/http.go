package app

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc/codes"

	secrets "github.com/orient-bot/secrets"
	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/server/api"
	"github.com/orient-bot/secrets/server/seal"
	"github.com/orient-bot/secrets/server/store"
	"github.com/orient-bot/secrets/server/ui"
	"github.com/orient-bot/secrets/server/watch"
)

// httpHandler routes the HTTP listener: the public endpoints, the REST
// gateway under /v1/ and the dashboard under /ui/. Every answer that is not
// a page is JSON, including unknown routes and wrong methods (405 with
// Allow). Compressible answers are gzipped for clients that accept it.
func (s *Server) httpHandler(gw http.Handler, reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/healthz", only(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	}), "GET", "HEAD"))
	mux.Handle("/readyz", only(http.HandlerFunc(s.readyz), "GET", "HEAD"))
	mux.Handle("/openapi.json", only(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(secrets.OpenAPI)
	}), "GET", "HEAD"))
	mux.Handle("/metrics", only(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), "GET", "HEAD"))
	mux.Handle("/v1/", s.tls.requireCert(conditionalGET(gw)))
	mux.Handle("/ui/", ui.HandlerWith(writeNotFound, writeMethodNotAllowed))
	mux.Handle("/{$}", only(http.RedirectHandler("/ui/", http.StatusFound), "GET", "HEAD"))
	mux.HandleFunc("/", writeNotFound)
	var h http.Handler = mux
	h = gzipped(h)
	if s.httpMetrics != nil {
		h = s.httpMetrics.wrap(h)
	}
	if len(s.cfg.CORSOrigins) > 0 {
		h = corsAllow(s.cfg.CORSOrigins, h)
	}
	return securityHeaders(h)
}

// only serves the given methods and answers the others 405 with Allow.
func only(next http.Handler, methods ...string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !slices.Contains(methods, r.Method) {
			w.Header().Set("Allow", strings.Join(methods, ", "))
			writeStatus(w, r, http.StatusMethodNotAllowed, api.Status(codes.Unimplemented, pb.ErrorReason_ERROR_REASON_METHOD_NOT_ALLOWED,
				r.Method+" is not allowed on this route"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// dashboardURL is where a person opens the dashboard.
func (s *Server) dashboardURL() string {
	scheme := "http"
	if s.tls != nil && s.tls.server != nil {
		scheme = "https"
	}
	return scheme + "://" + s.HTTPAddr() + "/ui/"
}

// readyz reports the readiness checks (see readiness): 200 when ready,
// else 503.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	checks, ready := s.readiness(r.Context())
	code := http.StatusOK
	if !ready {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, map[string]any{"ready": ready, "checks": checks})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Cache-Control", "no-store")
		h.Set("Referrer-Policy", "no-referrer")
		next.ServeHTTP(w, r)
	})
}

// countingRecorder records access audits (group commit) and counts them.
type countingRecorder struct {
	rec     api.AccessRecorder
	counter *prometheus.CounterVec
}

func (c countingRecorder) RecordAccess(ctx context.Context, events []store.AuditEvent) error {
	err := c.rec.RecordAccess(ctx, events)
	result := "recorded"
	if err != nil {
		result = "failed"
	}
	c.counter.WithLabelValues(result).Add(float64(len(events)))
	return err
}

// poolCollector exports the store's pool and group-commit figures.
type poolCollector struct {
	store                           *store.Store
	total, idle, acquired, acquires *prometheus.Desc
	writeBatches, writes, oneByOne  *prometheus.Desc
}

func newPoolCollector(s *store.Store) *poolCollector {
	return &poolCollector{
		store:    s,
		total:    prometheus.NewDesc("secrets_db_pool_connections", "Open database connections.", nil, nil),
		idle:     prometheus.NewDesc("secrets_db_pool_idle_connections", "Idle database connections.", nil, nil),
		acquired: prometheus.NewDesc("secrets_db_pool_acquired_connections", "Database connections in use.", nil, nil),
		acquires: prometheus.NewDesc("secrets_db_pool_acquires_total", "Connections acquired from the pool.", nil, nil),
		writeBatches: prometheus.NewDesc("secrets_write_batches_total",
			"Write transactions committed by group commit (each holds one or more writes).", nil, nil),
		writes: prometheus.NewDesc("secrets_writes_committed_total",
			"Writes committed; divided by secrets_write_batches_total, the mean batch size.", nil, nil),
		oneByOne: prometheus.NewDesc("secrets_write_batches_one_by_one_total",
			"Write batches that ran their writes one round trip after another instead of planned (writes that read first, or a secret written by many at once).", nil, nil),
	}
}

func (p *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- p.total
	ch <- p.idle
	ch <- p.acquired
	ch <- p.acquires
	ch <- p.writeBatches
	ch <- p.writes
	ch <- p.oneByOne
}

func (p *poolCollector) Collect(ch chan<- prometheus.Metric) {
	st := p.store.Stat()
	ch <- prometheus.MustNewConstMetric(p.total, prometheus.GaugeValue, float64(st.TotalConns()))
	ch <- prometheus.MustNewConstMetric(p.idle, prometheus.GaugeValue, float64(st.IdleConns()))
	ch <- prometheus.MustNewConstMetric(p.acquired, prometheus.GaugeValue, float64(st.AcquiredConns()))
	ch <- prometheus.MustNewConstMetric(p.acquires, prometheus.CounterValue, float64(st.AcquireCount()))
	w := p.store.WriteBatchStats()
	ch <- prometheus.MustNewConstMetric(p.writeBatches, prometheus.CounterValue, float64(w.Batches))
	ch <- prometheus.MustNewConstMetric(p.writes, prometheus.CounterValue, float64(w.Writes))
	ch <- prometheus.MustNewConstMetric(p.oneByOne, prometheus.CounterValue, float64(w.OneByOne))
}

// hubCollector exports the change-stream hub's figures.
type hubCollector struct {
	hub                           *watch.Hub
	watchers, rev, lagged, stalls *prometheus.Desc
}

func newHubCollector(h *watch.Hub) *hubCollector {
	return &hubCollector{
		hub:      h,
		watchers: prometheus.NewDesc("secrets_watch_subscribers", "Open change-stream subscriptions on this replica.", nil, nil),
		rev:      prometheus.NewDesc("secrets_watch_revision", "Last revision the hub published.", nil, nil),
		lagged:   prometheus.NewDesc("secrets_watch_lagged_total", "Subscriptions that overflowed their buffer and caught up from the log.", nil, nil),
		stalls: prometheus.NewDesc("secrets_watch_send_stalls_total",
			"Watch streams taken off the shared senders because one send to them stalled (a client not reading); each then has a goroutine of its own.", nil, nil),
	}
}

func (c *hubCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.watchers
	ch <- c.rev
	ch <- c.lagged
	ch <- c.stalls
}

func (c *hubCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.hub.Stats()
	ch <- prometheus.MustNewConstMetric(c.watchers, prometheus.GaugeValue, float64(st.Subscribers))
	ch <- prometheus.MustNewConstMetric(c.rev, prometheus.GaugeValue, float64(st.Revision))
	ch <- prometheus.MustNewConstMetric(c.lagged, prometheus.CounterValue, float64(st.Lagged))
	ch <- prometheus.MustNewConstMetric(c.stalls, prometheus.CounterValue, float64(st.SendStalls))
}

// cachedCheck runs the KEK readiness probe (a round trip through every KEK)
// for /readyz and gRPC health, which anyone may call without a token: one
// probe at a time whatever the number of callers, a success remembered for
// kekCheckTTL and a failure for kekFailureTTL (a KMS call costs money and
// quota, most of all while the KMS throttles). A probe runs on its own
// budget (budget), not the caller's: a KMS slower than the readiness
// deadline but inside --kek-timeout keeps the replica ready, because a
// caller that stops waiting gets the last known result while the probe
// goes on and records its own.
type cachedCheck struct {
	// budget bounds one probe (every KEK probed side by side, two calls
	// each, each bounded by the keyring's KMS timeout).
	budget time.Duration

	mu       sync.Mutex
	okUpTo   time.Time
	failUpTo time.Time
	// last is the last known result: nil before any probe and after a
	// success; a probe's error, or a KEK call's failure (invalidate).
	last   error
	probed bool
	// running is closed when the probe in flight ends (nil: none), and
	// cancel cuts it short; stopped refuses new probes (shutdown).
	running chan struct{}
	cancel  context.CancelFunc
	stopped bool
}

const (
	kekCheckTTL   = 30 * time.Second
	kekFailureTTL = 5 * time.Second
)

var (
	// errKEKProbePending is the answer before the first probe has ended.
	errKEKProbePending = errors.New("KEK probe still running")
	errKEKProbeStopped = errors.New("KEK probe stopped: shutting down")
)

// stop cuts a probe in flight short and waits for it; no probe starts
// after (shutdown, before the keyring closes).
func (c *cachedCheck) stop() {
	c.mu.Lock()
	c.stopped = true
	running := c.running
	if c.cancel != nil {
		c.cancel()
	}
	c.mu.Unlock()
	if running != nil {
		<-running
	}
}

// invalidate records a KEK call that failed: the last success is
// forgotten, the next readiness check probes again, and until a probe
// ends the replica counts as not ready.
func (c *cachedCheck) invalidate(err error) {
	c.mu.Lock()
	c.okUpTo, c.failUpTo, c.last, c.probed = time.Time{}, time.Time{}, err, true
	c.mu.Unlock()
}

// succeeded records a KEK call that worked: a remembered failure is
// dropped so that the next readiness check probes at once.
func (c *cachedCheck) succeeded() {
	c.mu.Lock()
	if c.last != nil {
		c.failUpTo = time.Time{}
	}
	c.mu.Unlock()
}

// check answers the remembered result while it is fresh; otherwise it
// starts a probe (unless one runs) and waits for it until ctx ends, then
// answers the last known result.
func (c *cachedCheck) check(ctx context.Context, fn func(context.Context) error) error {
	c.mu.Lock()
	now := time.Now()
	switch {
	case now.Before(c.okUpTo):
		c.mu.Unlock()
		return nil
	case c.last != nil && now.Before(c.failUpTo):
		err := c.last
		c.mu.Unlock()
		return err
	}
	if c.stopped {
		c.mu.Unlock()
		return errKEKProbeStopped
	}
	if c.running == nil {
		budget := c.budget
		if budget <= 0 {
			budget = 2*seal.DefaultKMSTimeout + time.Second
		}
		var pctx context.Context
		pctx, c.cancel = context.WithTimeout(context.Background(), budget)
		c.running = make(chan struct{})
		go c.probe(pctx, fn, c.running)
	}
	running, last, probed := c.running, c.last, c.probed
	c.mu.Unlock()
	select {
	case <-running:
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.last
	case <-ctx.Done():
		if !probed {
			return errKEKProbePending
		}
		return last
	}
}

func (c *cachedCheck) probe(ctx context.Context, fn func(context.Context) error, done chan struct{}) {
	err := fn(ctx)
	c.mu.Lock()
	c.cancel()
	now := time.Now()
	c.last, c.probed, c.running, c.cancel = err, true, nil, nil
	if err == nil {
		c.okUpTo, c.failUpTo = now.Add(kekCheckTTL), time.Time{}
	} else {
		c.okUpTo, c.failUpTo = time.Time{}, now.Add(kekFailureTTL)
	}
	c.mu.Unlock()
	close(done)
}

// watchedKeyring reports KEK outages to the readiness check as they happen,
// so a cached success is not served while requests fail.
type watchedKeyring struct {
	*seal.Keyring
	check *cachedCheck
}

func (k watchedKeyring) observe(err error) error {
	switch {
	case err == nil:
		k.check.succeeded()
	case errors.Is(err, seal.ErrKEKUnavailable):
		k.check.invalidate(err)
	}
	return err
}

func (k watchedKeyring) NewDataKey(ctx context.Context) (*seal.DataKey, error) {
	dk, err := k.Keyring.NewDataKey(ctx)
	return dk, k.observe(err)
}

func (k watchedKeyring) Open(ctx context.Context, key string, version int64, s seal.Sealed) ([]byte, uint32, error) {
	v, crc, err := k.Keyring.Open(ctx, key, version, s)
	return v, crc, k.observe(err)
}
