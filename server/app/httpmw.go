package app

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/klauspost/compress/gzhttp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/cors"
)

// gzipped compresses answers of compressible types (JSON, NDJSON streams,
// HTML, CSS, JavaScript, text; 1 KiB and more) for clients that accept
// zstd or gzip (gzhttp's default: zstd when the client weighs it at least
// as high). Streams are flushed through the compressor message by message.
func gzipped(next http.Handler) http.Handler {
	wrap, err := gzhttp.NewWrapper(
		gzhttp.MinSize(1024),
		gzhttp.ContentTypes([]string{
			"application/json", "application/x-ndjson", "text/html", "text/css",
			"text/javascript", "application/javascript", "text/plain", "image/svg+xml",
		}),
	)
	if err != nil {
		panic(err) // only for invalid options, fixed above
	}
	return wrap(next)
}

// corsAllow lets pages on the given origins call the REST API from a
// browser (a dashboard on another origin). Off unless --cors-origins is
// set; credentials are bearer tokens sent in the Authorization header,
// never cookies.
func corsAllow(origins []string, next http.Handler) http.Handler {
	return cors.New(cors.Options{
		AllowedOrigins: origins,
		AllowedMethods: []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"},
		AllowedHeaders: []string{"Authorization", "Content-Type", "If-None-Match"},
		ExposedHeaders: []string{"ETag", "WWW-Authenticate"},
		MaxAge:         600,
	}).Handler(next)
}

// httpMetrics counts HTTP requests by route template (never the raw path:
// keys would make unbounded label values), method and status code.
type httpMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newHTTPMetrics(reg *prometheus.Registry) *httpMetrics {
	m := &httpMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "secrets_http_requests_total", Help: "HTTP requests, by route template, method and status code.",
		}, []string{"route", "method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "secrets_http_request_duration_seconds", Help: "Time to the end of an HTTP answer, by route template (streams: their whole life).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10},
		}, []string{"route"}),
	}
	reg.MustRegister(m.requests, m.duration, buildInfo())
	return m
}

func (m *httpMetrics) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		next.ServeHTTP(rec, r)
		route := routeLabel(r)
		m.requests.WithLabelValues(route, methodLabel(r.Method), strconv.Itoa(rec.code)).Inc()
		m.duration.WithLabelValues(route).Observe(time.Since(start).Seconds())
	})
}

// routeLabel is the REST route template of r, else the HTTP mux's pattern
// (set on r by the mux), else "other".
func routeLabel(r *http.Request) string {
	if strings.HasPrefix(r.URL.Path, "/v1/") {
		if t := restRoutes.match(r.Method, r.URL.Path); t != "" {
			return t
		}
		return "other"
	}
	switch p := r.Pattern; p {
	case "", "/":
		return "other"
	case "/ui/":
		return "/ui/"
	default:
		return p
	}
}

func methodLabel(m string) string {
	switch m {
	case "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS":
		return m
	}
	return "other"
}

type statusRecorder struct {
	http.ResponseWriter
	code  int
	wrote bool
}

func (s *statusRecorder) WriteHeader(code int) {
	if !s.wrote {
		s.code, s.wrote = code, true
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(p []byte) (int, error) {
	s.wrote = true
	return s.ResponseWriter.Write(p)
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// buildInfo is secrets_build_info: always 1, with the binary's version and
// VCS revision as labels.
func buildInfo() prometheus.Collector {
	version, revision, goVersion := "unknown", "unknown", "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		goVersion = bi.GoVersion
		if bi.Main.Version != "" {
			version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				revision = s.Value
			}
		}
	}
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "secrets_build_info", Help: "Always 1; the labels say which build of secretsd this is.",
		ConstLabels: prometheus.Labels{"version": version, "revision": revision, "goversion": goVersion},
	}, func() float64 { return 1 })
}

// conditionalGETRoutes are the REST reads answered with an ETag and
// If-None-Match: a secret's metadata and a version's value.
var conditionalGETRoutes = map[string]bool{
	"/v1/secrets/{key}":                           true,
	"/v1/secrets/{key}/versions/{version}:access": true,
}

// maxConditionalBody is the largest answer conditionalGET gives an ETag.
// Its routes' answers are small by construction (a value is at most
// 64 KiB, ~90 KiB as JSON), so buffering them whole is bounded by the
// service's own limits.
const maxConditionalBody = 1 << 20

// conditionalGET gives the successful answers of conditionalGETRoutes a
// strong ETag (a hash of the exact JSON answered) and answers 304 Not
// Modified, without the body, when If-None-Match holds it. The call runs
// either way: an access answered 304 is still authorized and audited.
func conditionalGET(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if (r.Method != "GET" && r.Method != "HEAD") || !conditionalGETRoutes[restRoutes.match("GET", r.URL.Path)] {
			next.ServeHTTP(w, r)
			return
		}
		buf := &bufferedResponse{header: http.Header{}, code: http.StatusOK}
		next.ServeHTTP(buf, r)
		for k, v := range buf.header {
			w.Header()[k] = v
		}
		if buf.code != http.StatusOK || buf.overflow {
			w.WriteHeader(buf.code)
			_, _ = w.Write(buf.body.Bytes())
			return
		}
		sum := sha256.Sum256(buf.body.Bytes())
		etag := `"` + base64.RawURLEncoding.EncodeToString(sum[:18]) + `"`
		w.Header().Set("ETag", etag)
		if etagMatches(r.Header.Get("If-None-Match"), etag) {
			w.Header().Del("Content-Type")
			w.Header().Del("Content-Length")
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(buf.body.Bytes())
	})
}

// etagMatches applies If-None-Match's weak comparison (RFC 9110 13.1.2).
func etagMatches(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == "*" || t == etag {
			return true
		}
	}
	return false
}

// bufferedResponse holds an answer until its ETag is known.
type bufferedResponse struct {
	header   http.Header
	code     int
	body     bytes.Buffer
	overflow bool
}

func (b *bufferedResponse) Header() http.Header  { return b.header }
func (b *bufferedResponse) WriteHeader(code int) { b.code = code }
func (b *bufferedResponse) Write(p []byte) (int, error) {
	if b.body.Len()+len(p) > maxConditionalBody {
		b.overflow = true
	}
	return b.body.Write(p)
}
