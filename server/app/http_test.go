package app_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testserver"
	"github.com/orient-bot/secrets/server/app"
)

// rawGet sends a request without the REST client's conveniences: no
// transparent gzip, no token unless given.
func rawDo(t *testing.T, method, url, token string, header map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	hc := &http.Client{
		Transport:     &http.Transport{DisableCompression: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       30 * time.Second,
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// reasonOf returns the ErrorInfo reason of a JSON google.rpc.Status body.
func reasonOf(body []byte) string {
	var st struct {
		Details []struct {
			Type   string `json:"@type"`
			Reason string `json:"reason"`
			Domain string `json:"domain"`
		} `json:"details"`
	}
	if json.Unmarshal(body, &st) != nil {
		return ""
	}
	for _, d := range st.Details {
		if strings.HasSuffix(d.Type, "google.rpc.ErrorInfo") && d.Domain == "secrets.orient.dev" {
			return d.Reason
		}
	}
	return ""
}

// TestHTTPConventions checks what HTTP clients and proxies expect of any
// HTTP API: 405 with Allow, a Bearer challenge on 401, gzip, no internal
// gRPC headers, / to the dashboard, JSON for unknown routes.
func TestHTTPConventions(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{})
	base, tok := srv.BaseURL, srv.AdminToken

	cases := []struct {
		name, method, path, token string
		status                    int
		allow, reason             string
	}{
		{"wrong method on a REST route", "POST", "/v1/secrets/SLACK_BOT_TOKEN", tok, 405, "DELETE, GET, PATCH, PUT", "METHOD_NOT_ALLOWED"},
		{"wrong method on a collection", "DELETE", "/v1/secrets", tok, 405, "GET", "METHOD_NOT_ALLOWED"},
		{"wrong method on a public endpoint", "POST", "/healthz", "", 405, "GET, HEAD", "METHOD_NOT_ALLOWED"},
		{"unknown REST route", "GET", "/v1/nothing-here", tok, 404, "", "ROUTE_NOT_FOUND"},
		{"unknown route outside the API", "GET", "/nothing-here", "", 404, "", "ROUTE_NOT_FOUND"},
		{"no token", "GET", "/v1/secrets", "", 401, "", "UNAUTHENTICATED"},
		{"bad token", "GET", "/v1/secrets", "osk_not-a-real-token-0123456789", 401, "", "UNAUTHENTICATED"},
	}
	for _, tc := range cases {
		resp, body := rawDo(t, tc.method, base+tc.path, tc.token, nil)
		if resp.StatusCode != tc.status {
			t.Errorf("%s: %d, want %d; %s", tc.name, resp.StatusCode, tc.status, body)
			continue
		}
		if got := resp.Header.Get("Allow"); got != tc.allow {
			t.Errorf("%s: Allow %q, want %q", tc.name, got, tc.allow)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s: Content-Type %q, want application/json", tc.name, ct)
		}
		if got := reasonOf(body); got != tc.reason {
			t.Errorf("%s: reason %q, want %q; %s", tc.name, got, tc.reason, body)
		}
		if tc.status == 401 {
			want := `Bearer realm="orient-secrets"`
			if tc.token != "" {
				want += `, error="invalid_token"`
			}
			if got := resp.Header.Get("WWW-Authenticate"); got != want {
				t.Errorf("%s: WWW-Authenticate %q, want %q", tc.name, got, want)
			}
		}
	}

	// Every header of a REST answer is ours: no Grpc-Metadata-*.
	srvPut(t, srv, "HTTP_CONVENTIONS", "v1")
	for _, path := range []string{"/v1/secrets", "/v1/secrets/HTTP_CONVENTIONS", "/v1/secrets/HTTP_CONVENTIONS/versions/latest:access"} {
		resp, _ := rawDo(t, "GET", base+path, tok, nil)
		for h := range resp.Header {
			if strings.HasPrefix(strings.ToLower(h), "grpc-") {
				t.Errorf("GET %s: internal header %s leaked", path, h)
			}
		}
	}

	// Compressible answers are gzipped for clients that accept it.
	for _, path := range []string{"/openapi.json", "/v1/secrets", "/ui/"} {
		resp, body := rawDo(t, "GET", base+path, tok, map[string]string{"Accept-Encoding": "gzip"})
		if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != "gzip" {
			t.Errorf("GET %s with Accept-Encoding gzip: %d, Content-Encoding %q, want gzip (%d bytes)",
				path, resp.StatusCode, resp.Header.Get("Content-Encoding"), len(body))
		}
	}

	resp, _ := rawDo(t, "GET", base+"/", "", nil)
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "/ui/" {
		t.Errorf("GET /: %d Location %q, want 302 to /ui/", resp.StatusCode, resp.Header.Get("Location"))
	}

	// CORS is off by default: no browser origin is allowed.
	resp, _ = rawDo(t, "OPTIONS", base+"/v1/secrets", "", map[string]string{"Origin": "https://dash.example", "Access-Control-Request-Method": "GET"})
	if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "" {
		t.Errorf("CORS off by default, but Access-Control-Allow-Origin %q", got)
	}
}

// TestCORSAllowlist: --cors-origins lets exactly the listed origins call the
// API from a browser.
func TestCORSAllowlist(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{Configure: func(c *app.Config) { c.CORSOrigins = []string{"https://dash.example"} }})
	for origin, allowed := range map[string]bool{"https://dash.example": true, "https://evil.example": false} {
		resp, _ := rawDo(t, "OPTIONS", srv.BaseURL+"/v1/secrets", "", map[string]string{"Origin": origin, "Access-Control-Request-Method": "GET",
			"Access-Control-Request-Headers": "authorization"})
		got := resp.Header.Get("Access-Control-Allow-Origin")
		if allowed && got != origin || !allowed && got != "" {
			t.Errorf("preflight from %s: Access-Control-Allow-Origin %q (allowed %v)", origin, got, allowed)
		}
		resp, _ = rawDo(t, "GET", srv.BaseURL+"/v1/secrets", srv.AdminToken, map[string]string{"Origin": origin})
		if got := resp.Header.Get("Access-Control-Allow-Origin"); allowed && got != origin || !allowed && got != "" {
			t.Errorf("GET from %s: Access-Control-Allow-Origin %q (allowed %v)", origin, got, allowed)
		}
	}
}

func srvPut(t *testing.T, srv *testserver.Server, key, value string) *pb.PutSecretResponse {
	t.Helper()
	res, err := srv.Secrets.PutSecret(context.Background(), &pb.PutSecretRequest{Key: key, Value: []byte(value)})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// TestRESTErrorsCarryReason: every non-OK REST answer, including those the
// gateway and the HTTP layer make, is a google.rpc.Status with ErrorInfo.
func TestRESTErrorsCarryReason(t *testing.T) {
	t.Parallel()
	c := newREST(t)
	created := c.must(200, "POST", "/v1/tokens", map[string]any{"name": "reason-reader", "role": "reader",
		"scope": map[string]any{"keyPatterns": []string{"SLACK_*"}}})
	readerTok := str(t, created, "token")
	scoped := restClient{t: t, base: c.base, hc: c.hc, token: readerTok}
	anon := restClient{t: t, base: c.base, hc: c.hc, token: ""}
	huge := `{"value":"` + strings.Repeat("A", 300<<10) + `"}`
	cases := []struct {
		name   string
		r      response
		status int
		reason string
	}{
		{"401", anon.do("GET", "/v1/secrets", nil), 401, "UNAUTHENTICATED"},
		{"403", scoped.do("GET", "/v1/secrets/OPENAI_API_KEY", nil), 403, "PERMISSION_DENIED"},
		{"malformed JSON", c.do("PUT", "/v1/secrets/REASONS", `{"value":`), 400, "MALFORMED_REQUEST"},
		{"unknown field", c.do("PUT", "/v1/secrets/REASONS", `{"valu":"aGk="}`), 400, "MALFORMED_REQUEST"},
		{"bad query parameter", c.do("GET", "/v1/secrets?pageSize=many", nil), 400, "MALFORMED_REQUEST"},
		{"413", c.do("PUT", "/v1/secrets/REASONS", huge), 413, "REQUEST_TOO_LARGE"},
		{"validation", c.do("PUT", "/v1/secrets/REASONS", map[string]any{"value": ""}), 400, "INVALID_ARGUMENT"},
		{"not found", c.do("GET", "/v1/secrets/NO_SUCH_KEY_ANYWHERE/versions/latest:access", nil), 404, "NOT_FOUND"},
	}
	for _, tc := range cases {
		if tc.r.status != tc.status || reasonOf([]byte(tc.r.raw)) != tc.reason {
			t.Errorf("%s: %d reason %q, want %d %q; %s", tc.name, tc.r.status, reasonOf([]byte(tc.r.raw)), tc.status, tc.reason, tc.r.raw)
		}
	}
}

// TestRESTOmitsUnsetMessages: unset message fields are left out, never
// null (the document types them as objects or strings); scalars are
// always present.
func TestRESTOmitsUnsetMessages(t *testing.T) {
	t.Parallel()
	c := newREST(t)
	for _, path := range []string{"/v1/secrets/GITHUB_TOKEN", "/v1/secrets?pageSize=100", "/v1/tokens", "/v1/kek", "/v1/providers/defaults"} {
		r := c.do("GET", path, nil)
		if r.status != 200 {
			t.Fatalf("GET %s: %d %s", path, r.status, r.raw)
		}
		if strings.Contains(r.raw, "null") {
			t.Errorf("GET %s: a null in %s", path, r.raw)
		}
	}
	slot := obj(t, c.must(200, "GET", "/v1/secrets/GITHUB_TOKEN", nil)["secret"], "secret")
	if _, ok := slot["createTime"]; ok {
		t.Errorf("empty slot has createTime: %v", slot)
	}
	if v, ok := slot["configured"]; !ok || v != false {
		t.Errorf("empty slot: configured %v (present %v), want false, present", v, ok)
	}
}

// TestRESTPatchIgnoresOutputOnly: sending back what GET returned, with one
// field edited, updates that field (AIP-203: output-only fields ignored).
func TestRESTPatchIgnoresOutputOnly(t *testing.T) {
	t.Parallel()
	c := newREST(t)
	c.put("PATCH_ROUNDTRIP", "v1")
	sec := obj(t, c.must(200, "GET", "/v1/secrets/PATCH_ROUNDTRIP", nil)["secret"], "secret")
	sec["description"] = "edited after a read"
	got := obj(t, c.must(200, "PATCH", "/v1/secrets/PATCH_ROUNDTRIP", sec)["secret"], "secret")
	if got["description"] != "edited after a read" || got["currentVersion"] != "1" {
		t.Errorf("after PATCH: %v", got)
	}
	// A field that is neither updatable nor output-only is still refused.
	r := c.do("PATCH", "/v1/secrets/PATCH_ROUNDTRIP", map[string]any{"etag": got["etag"], "valuePrefix": "x", "description": "d"})
	if r.status != 200 {
		t.Errorf("PATCH with output-only valuePrefix: %d %s", r.status, r.raw)
	}
}

// TestRESTConditionalGet: secret metadata and access answers carry an
// ETag; If-None-Match with it answers 304 without a body, and the access
// is audited all the same.
func TestRESTConditionalGet(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{})
	srvPut(t, srv, "CONDITIONAL_GET", "v1")
	for _, path := range []string{"/v1/secrets/CONDITIONAL_GET", "/v1/secrets/CONDITIONAL_GET/versions/latest:access"} {
		resp, _ := rawDo(t, "GET", srv.BaseURL+path, srv.AdminToken, nil)
		etag := resp.Header.Get("ETag")
		if resp.StatusCode != 200 || !regexp.MustCompile(`^"[A-Za-z0-9_-]{10,}"$`).MatchString(etag) {
			t.Fatalf("GET %s: %d ETag %q", path, resp.StatusCode, etag)
		}
		resp, body2 := rawDo(t, "GET", srv.BaseURL+path, srv.AdminToken, map[string]string{"If-None-Match": etag})
		if resp.StatusCode != http.StatusNotModified || len(body2) != 0 || resp.Header.Get("ETag") != etag {
			t.Errorf("GET %s with If-None-Match: %d, %d bytes, ETag %q; want 304, empty, same ETag", path, resp.StatusCode, len(body2), resp.Header.Get("ETag"))
		}
		resp, _ = rawDo(t, "GET", srv.BaseURL+path, srv.AdminToken, map[string]string{"If-None-Match": `"something-else"`})
		if resp.StatusCode != 200 {
			t.Errorf("GET %s with a stale If-None-Match: %d, want 200", path, resp.StatusCode)
		}
	}
	// Three accesses above, one answered 304: all three audited.
	events, err := srv.Audit.ListAuditEvents(context.Background(), &pb.ListAuditEventsRequest{Key: "CONDITIONAL_GET", Action: "AccessSecretVersion"})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(events.GetEvents()); n != 3 {
		t.Errorf("%d access audit events, want 3 (the 304 included)", n)
	}
	// A change changes the ETag.
	resp, _ := rawDo(t, "GET", srv.BaseURL+"/v1/secrets/CONDITIONAL_GET/versions/latest:access", srv.AdminToken, nil)
	before := resp.Header.Get("ETag")
	srvPut(t, srv, "CONDITIONAL_GET", "v2")
	resp, _ = rawDo(t, "GET", srv.BaseURL+"/v1/secrets/CONDITIONAL_GET/versions/latest:access", srv.AdminToken, map[string]string{"If-None-Match": before})
	if resp.StatusCode != 200 || resp.Header.Get("ETag") == before {
		t.Errorf("after a write: %d ETag %q (before %q), want 200 and a new ETag", resp.StatusCode, resp.Header.Get("ETag"), before)
	}
}

// TestHTTPMetrics: requests are counted by route template (never the raw
// path) and code; secrets_build_info is exported.
func TestHTTPMetrics(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{})
	rawDo(t, "GET", srv.BaseURL+"/v1/secrets/METRICS_KEY", srv.AdminToken, nil)
	rawDo(t, "GET", srv.BaseURL+"/v1/secrets", "", nil)
	_, body := rawDo(t, "GET", srv.BaseURL+"/metrics", "", nil)
	text := string(body)
	for _, want := range []string{
		`secrets_http_requests_total{code="404",method="GET",route="/v1/secrets/{key}"} 1`,
		`secrets_http_requests_total{code="401",method="GET",route="/v1/secrets"} 1`,
		`secrets_build_info{`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(text, "METRICS_KEY") {
		t.Errorf("a raw path (key) became a label value")
	}
}

// TestMinRevisionAhead: a read whose min_revision the database has not
// reached waits for it (bounded) and never answers an older value.
func TestMinRevisionAhead(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{Configure: func(c *app.Config) { c.ReadCacheEntries = 0 }})
	put := srvPut(t, srv, "MIN_REVISION_AHEAD", "v1")

	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := srv.Secrets.AccessSecretVersion(ctx, &pb.AccessSecretVersionRequest{Key: "MIN_REVISION_AHEAD", Version: "latest", MinRevision: put.GetRevision() + 1000})
	if status.Code(err) != codes.OutOfRange || reasonOfErr(err) != "REVISION_AHEAD" {
		t.Fatalf("min_revision far ahead: %v, want OUT_OF_RANGE REVISION_AHEAD", err)
	}
	// The answer beat the deadline: gRPC turns one that arrives after it
	// into DEADLINE_EXCEEDED on the client, so the code above proves it.
	// The clock here also counts the caller's own wake-up after the
	// answer came, which CI's loaded cores have made 7 ms late; it only
	// bounds that.
	if el := time.Since(start); el > 1500*time.Millisecond+500*time.Millisecond {
		t.Errorf("answered after %v, past the caller's deadline", el)
	}
	_, err = srv.Secrets.BatchAccessSecrets(context.Background(), &pb.BatchAccessSecretsRequest{Keys: []string{"MIN_REVISION_AHEAD"}, MinRevision: put.GetRevision() + 1000})
	if status.Code(err) != codes.OutOfRange || reasonOfErr(err) != "REVISION_AHEAD" {
		t.Fatalf("batch min_revision far ahead: %v, want OUT_OF_RANGE REVISION_AHEAD", err)
	}

	// The next revision arrives while the read waits: it answers with it.
	go func() {
		time.Sleep(200 * time.Millisecond)
		srvPut(t, srv, "MIN_REVISION_AHEAD", "v2")
	}()
	res, err := srv.Secrets.AccessSecretVersion(context.Background(), &pb.AccessSecretVersionRequest{Key: "MIN_REVISION_AHEAD", Version: "latest", MinRevision: put.GetRevision() + 1})
	if err != nil {
		t.Fatal(err)
	}
	if res.GetRevision() < put.GetRevision()+1 || string(res.GetValue()) != "v2" {
		t.Errorf("waited read: revision %d value %q, want >= %d and v2", res.GetRevision(), res.GetValue(), put.GetRevision()+1)
	}
}

func reasonOfErr(err error) string {
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info.GetReason()
		}
	}
	return ""
}
