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
	mux.Handle("/ui/", ui.Handler())
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

// cachedCheck remembers a successful check for a while: a KMS round trip
// per KEK per probe costs money and quota. Failures are never cached, so
// recovery shows at the next probe.
type cachedCheck struct {
	mu     sync.Mutex
	okUpTo time.Time
}

const kekCheckTTL = 30 * time.Second

// invalidate forgets the last success (a KEK call just failed).
func (c *cachedCheck) invalidate() {
	c.mu.Lock()
	c.okUpTo = time.Time{}
	c.mu.Unlock()
}

func (c *cachedCheck) check(ctx context.Context, fn func(context.Context) error) error {
	c.mu.Lock()
	fresh := time.Now().Before(c.okUpTo)
	c.mu.Unlock()
	if fresh {
		return nil
	}
	if err := fn(ctx); err != nil {
		return err
	}
	c.mu.Lock()
	c.okUpTo = time.Now().Add(kekCheckTTL)
	c.mu.Unlock()
	return nil
}

// watchedKeyring reports KEK outages to the readiness check as they happen,
// so a cached success is not served while requests fail.
type watchedKeyring struct {
	*seal.Keyring
	check *cachedCheck
}

func (k watchedKeyring) observe(err error) error {
	if errors.Is(err, seal.ErrKEKUnavailable) {
		k.check.invalidate()
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
