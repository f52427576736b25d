package app_test

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/protobuf/proto"

	"github.com/orient-bot/secrets/internal/testserver"
	"github.com/orient-bot/secrets/server/app"
)

// TestRESTStrictRequests: what the gateway used to ignore silently — an
// unknown or misplaced query parameter, an HTTP precondition on a write —
// is refused with 400 naming what to send instead, and nothing is written;
// decoding errors name the parameter but never quote the caller's text;
// the watch fails like every other route.
func TestRESTStrictRequests(t *testing.T) {
	t.Parallel()
	c := newREST(t)
	const key = "STRICT_SECRET"
	etag := str(t, obj(t, c.put(key, "strict-v1")["secret"], "secret"), "etag")

	refused := func(t *testing.T, r response, field string) {
		t.Helper()
		if r.status != 400 || r.body["code"] != float64(3) {
			t.Fatalf("%d %s, want 400 with code 3", r.status, r.raw)
		}
		if field != "" && !slices.Contains(violationFields(t, r), field) {
			t.Errorf("field violations %v, want %q; body %s", violationFields(t, r), field, r.raw)
		}
	}

	t.Run("misspelled etag on DELETE", func(t *testing.T) {
		refused(t, c.do("DELETE", "/v1/secrets/"+key+"?e_tag=x", nil), "e_tag")
		if r := c.do("GET", "/v1/secrets/"+key, nil); r.status != 200 {
			t.Fatalf("secret gone after a refused delete: %d %s", r.status, r.raw)
		}
	})
	t.Run("query etag on a body route", func(t *testing.T) {
		refused(t, c.do("PUT", "/v1/secrets/"+key+"?etag=r1", map[string]any{"value": b64("strict-v2")}), "etag")
	})
	t.Run("unknown filter on audit events", func(t *testing.T) {
		refused(t, c.do("GET", "/v1/audit/events?Key=NOPE", nil), "Key")
	})
	t.Run("path parameter in the query", func(t *testing.T) {
		refused(t, c.do("DELETE", "/v1/secrets/"+key+"?key=OTHER&etag="+etag, nil), "key")
	})
	t.Run("hostile parameter name is not echoed", func(t *testing.T) {
		r := c.do("GET", "/v1/secrets?"+strings.Repeat("x", 200)+"%3Cscript%3E=1", nil)
		refused(t, r, "")
		if strings.Contains(r.raw, "xxxxxxxxxx") || strings.Contains(r.raw, "script") {
			t.Errorf("error echoes the parameter name: %s", r.raw)
		}
	})

	t.Run("If-Match on PUT", func(t *testing.T) {
		req, _ := http.NewRequest("PUT", c.base+"/v1/secrets/"+key, strings.NewReader(`{"value":"`+b64("strict-v3")+`"}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("If-Match", `"stale"`)
		r := c.send(req)
		refused(t, r, "If-Match")
		if !strings.Contains(str(t, r.body, "message"), "etag") {
			t.Errorf("message %q does not say to send the etag", r.body["message"])
		}
	})
	t.Run("If-Unmodified-Since on DELETE", func(t *testing.T) {
		req, _ := http.NewRequest("DELETE", c.base+"/v1/secrets/"+key, nil)
		req.Header.Set("If-Unmodified-Since", "Mon, 02 Jan 2006 15:04:05 GMT")
		refused(t, c.send(req), "If-Unmodified-Since")
	})

	t.Run("query decode errors name the parameter", func(t *testing.T) {
		for _, q := range []string{"pageSize=abc", "pageSize=99999999999999999999", "pendingOnly=maybe"} {
			path := "/v1/secrets?" + q
			if strings.HasPrefix(q, "pendingOnly") {
				path = "/v1/audit/events?" + q
			}
			refused(t, c.do("GET", path, nil), strings.Split(q, "=")[0])
		}
	})
	t.Run("decode errors never quote the input", func(t *testing.T) {
		r := c.do("GET", "/v1/secrets?pageSize=field%20HUNTER2SECRET", nil)
		refused(t, r, "pageSize")
		if strings.Contains(r.raw, "HUNTER2") {
			t.Errorf("error quotes the input: %s", r.raw)
		}
		r = c.do("PATCH", "/v1/secrets/"+key, `{"rotationPeriod":"field xoxb-LEAKED"}`)
		refused(t, r, "")
		if strings.Contains(r.raw, "xoxb") || strings.Contains(r.raw, "LEAKED") {
			t.Errorf("error quotes the input: %s", r.raw)
		}
	})

	t.Run("watch errors are a bare Status", func(t *testing.T) {
		req, _ := http.NewRequest("GET", c.base+"/v1/changes:watch", nil)
		req.Header.Set("Authorization", "Bearer osk_not-a-real-token-0123456789")
		resp, err := c.hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") == "" {
			t.Fatalf("bad token on the watch: %d, WWW-Authenticate %q; want 401 with a challenge", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
		}
		r := c.do("GET", "/v1/changes:watch?startRevision=999999", nil)
		if r.status != 400 || r.body["code"] != float64(11) || r.body["error"] != nil {
			t.Fatalf("revision ahead: %d %s, want 400 with a bare google.rpc.Status", r.status, r.raw)
		}
	})
	t.Run("watch refuses invalid UTF-8", func(t *testing.T) {
		r := c.do("GET", "/v1/changes:watch?keys=%FF", nil)
		refused(t, r, "")
		if strings.Contains(r.raw, "marshaling") {
			t.Errorf("error leaks the codec's text: %s", r.raw)
		}
	})

	// None of the refused writes wrote anything.
	if n := versionCount(c, key); n != 1 {
		t.Errorf("%d versions of %s after the refused writes, want 1", n, key)
	}
}

// TestRESTHeadAndDashboardErrors: HEAD works on the GET routes (with the
// ETag a GET gives), and the dashboard's 404 and 405 have the API's JSON
// error shape.
func TestRESTHeadAndDashboardErrors(t *testing.T) {
	t.Parallel()
	c := newREST(t)
	c.put("HEAD_SECRET", "head-v1")
	raw := func(method, path string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest(method, c.base+path, nil)
		req.Header.Set("Authorization", "Bearer "+c.token)
		resp, err := c.hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		_, _ = io.Copy(&b, resp.Body)
		return resp, b.String()
	}
	for _, path := range []string{"/v1/secrets/HEAD_SECRET", "/v1/secrets"} {
		resp, body := raw("HEAD", path)
		if resp.StatusCode != 200 || body != "" {
			t.Errorf("HEAD %s: %d %q, want 200 without a body", path, resp.StatusCode, body)
		}
	}
	if resp, _ := raw("HEAD", "/v1/secrets/HEAD_SECRET"); resp.Header.Get("ETag") == "" {
		t.Errorf("HEAD of a secret has no ETag")
	}
	for _, tc := range []struct {
		method, path string
		status       int
		reason       string
	}{
		{"GET", "/ui/no-such-file.js", 404, "ROUTE_NOT_FOUND"},
		{"POST", "/ui/", 405, "METHOD_NOT_ALLOWED"},
	} {
		resp, body := raw(tc.method, tc.path)
		if resp.StatusCode != tc.status || resp.Header.Get("Content-Type") != "application/json" || reasonOf([]byte(body)) != tc.reason {
			t.Errorf("%s %s: %d %s %q, want %d application/json with reason %s", tc.method, tc.path,
				resp.StatusCode, resp.Header.Get("Content-Type"), body, tc.status, tc.reason)
		}
	}
}

// TestRESTWatchBudget: REST watches share one in-process connection; one
// over the replica's budget is refused at once with 429, not left hanging,
// and a finished watch gives its slot back.
func TestRESTWatchBudget(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{Configure: func(c *app.Config) { c.MaxRESTWatches = 2 }})
	open := func(ctx context.Context) *http.Response {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, "GET", srv.BaseURL+"/v1/changes:watch", nil)
		req.Header.Set("Authorization", "Bearer "+srv.AdminToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	ctx1, cancel1 := context.WithCancel(context.Background())
	defer cancel1()
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	for _, ctx := range []context.Context{ctx1, ctx2} {
		if resp := open(ctx); resp.StatusCode != 200 {
			t.Fatalf("watch within the budget: %d", resp.StatusCode)
		}
	}
	ctx3, cancel3 := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel3()
	start := time.Now()
	resp := open(ctx3)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || reasonOf(body) != "TOO_MANY_STREAMS" || time.Since(start) > 2*time.Second {
		t.Fatalf("watch over the budget: %d %s after %v, want 429 TOO_MANY_STREAMS at once", resp.StatusCode, body, time.Since(start))
	}
	cancel1()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ctx, cancel := context.WithCancel(context.Background())
		resp := open(ctx)
		code := resp.StatusCode
		cancel()
		resp.Body.Close()
		if code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a finished watch did not give its slot back: %d", code)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRESTQueryParametersOnEveryRoute: every route, whatever its request
// holds, refuses a query parameter that is no field of its request and
// one that its path already binds, naming it. The generated handlers of
// routes whose request the path fills entirely (GET /v1/secrets/{key},
// GET /v1/kek, DELETE /v1/tokens/{name}, …) never call the query parser,
// so those once ignored it: GET /v1/secrets/K?key=OTHER answered K.
func TestRESTQueryParametersOnEveryRoute(t *testing.T) {
	t.Parallel()
	c := newREST(t)
	n := 0
	for _, m := range ourMethods(t) {
		rule, _ := proto.GetExtension(m.Options(), annotations.E_Http).(*annotations.HttpRule)
		if rule == nil {
			continue
		}
		for _, r := range append([]*annotations.HttpRule{rule}, rule.GetAdditionalBindings()...) {
			method, tmpl := httpRulePattern(r)
			path := routeVars.ReplaceAllString(tmpl, "QUERY_PROBE_1")
			var body any
			if r.GetBody() != "" {
				body = "{}"
			}
			params := []string{"zzNotAField"}
			for _, v := range routeVars.FindAllString(tmpl, -1) {
				name, _, _ := strings.Cut(strings.Trim(v, "{}"), "=")
				params = append(params, name)
			}
			for _, p := range params {
				n++
				resp := c.do(method, path+"?"+p+"=1", body)
				if resp.status != 400 || resp.body["code"] != float64(3) || !slices.Contains(violationFields(t, resp), p) {
					t.Errorf("%s %s?%s=1: %d %s; want 400 naming %q", method, path, p, resp.status, resp.raw, p)
				}
			}
			// A query that does not parse is no more ignored.
			if resp := c.do(method, path+"?%zz=1", body); resp.status != 400 || resp.body["code"] != float64(3) {
				t.Errorf("%s %s?%%zz=1: %d %s; want 400", method, path, resp.status, resp.raw)
			}
		}
	}
	if n < 40 {
		t.Fatalf("probed %d parameters; the routes were not found", n)
	}
}

var routeVars = regexp.MustCompile(`\{[^}]+\}`)

func httpRulePattern(r *annotations.HttpRule) (method, tmpl string) {
	switch p := r.GetPattern().(type) {
	case *annotations.HttpRule_Get:
		return "GET", p.Get
	case *annotations.HttpRule_Put:
		return "PUT", p.Put
	case *annotations.HttpRule_Post:
		return "POST", p.Post
	case *annotations.HttpRule_Delete:
		return "DELETE", p.Delete
	case *annotations.HttpRule_Patch:
		return "PATCH", p.Patch
	case *annotations.HttpRule_Custom:
		return p.Custom.GetKind(), p.Custom.GetPath()
	}
	return "", ""
}

// TestRESTBodyRepeatsPath: a body field that the route's path also binds
// (the gateway sets it from the path after decoding the body) must hold the
// path's value: another value is refused with 400 naming the field, never
// quoting the value, and nothing is written; the same value (or none) is
// accepted, so a client may send back what it read.
func TestRESTBodyRepeatsPath(t *testing.T) {
	t.Parallel()
	c := newREST(t)
	const key = "PATH_BOUND"
	c.put(key, "path-v1")
	c.put(key, "path-v2")

	const want = "the path sets it; leave it out of the body or send the path's value"
	refused := func(t *testing.T, r response, field string) {
		t.Helper()
		if r.status != 400 || r.body["code"] != float64(3) || reasonOf([]byte(r.raw)) != "MALFORMED_REQUEST" {
			t.Fatalf("%d %s, want 400 INVALID_ARGUMENT MALFORMED_REQUEST", r.status, r.raw)
		}
		if got := violationFields(t, r); !slices.Equal(got, []string{field}) {
			t.Errorf("field violations %v, want [%s]; body %s", got, field, r.raw)
		}
		if msg := str(t, r.body, "message"); msg != "malformed request: field "+field+": "+want {
			t.Errorf("message %q", msg)
		}
		if strings.Contains(r.raw, "LEAK") {
			t.Errorf("the refusal quotes the body's value: %s", r.raw)
		}
	}

	for _, tc := range []struct {
		name, method, path, body, field string
	}{
		{"PUT key", "PUT", "/v1/secrets/" + key, `{"key":"OTHER_LEAK","value":"` + b64("x") + `"}`, "key"},
		{"PUT key, escaped member name", "PUT", "/v1/secrets/" + key, `{"\u006bey":"OTHER_LEAK","value":"` + b64("x") + `"}`, "key"},
		{"PATCH key (body: secret)", "PATCH", "/v1/secrets/" + key, `{"key":"OTHER_LEAK","description":"moved"}`, "key"},
		{"disable: key", "POST", "/v1/secrets/" + key + "/versions/1:disable", `{"key":"OTHER_LEAK"}`, "key"},
		{"disable: version", "POST", "/v1/secrets/" + key + "/versions/1:disable", `{"version":"2LEAK"}`, "version"},
		{"destroy: version", "POST", "/v1/secrets/" + key + "/versions/1:destroy", `{"key":"` + key + `","version":"latestLEAK"}`, "version"},
		{"check: key", "POST", "/v1/secrets/" + key + ":check", `{"key":"OTHER_LEAK"}`, "key"},
		{"provider default: JSON name", "PUT", "/v1/providers/defaults/chat", `{"useCase":"codeLEAK","provider":"openai","model":"m"}`, "useCase"},
		{"provider default: proto name", "PUT", "/v1/providers/defaults/chat", `{"use_case":"codeLEAK","provider":"openai","model":"m"}`, "useCase"},
	} {
		t.Run(tc.name, func(t *testing.T) { refused(t, c.do(tc.method, tc.path, tc.body), tc.field) })
	}
	// Nothing was written: no third version, no OTHER, v1 still enabled,
	// the description and the chat default unchanged.
	if n := versionCount(c, key); n != 2 {
		t.Errorf("%d versions after the refused writes, want 2", n)
	}
	if r := c.do("GET", "/v1/secrets/OTHER_LEAK", nil); r.status != 404 {
		t.Errorf("GET OTHER_LEAK: %d, want 404", r.status)
	}
	c.must(200, "GET", "/v1/secrets/"+key+"/versions/1:access", nil)
	if d := str(t, obj(t, c.must(200, "GET", "/v1/secrets/"+key, nil)["secret"], "secret"), "description"); d == "moved" {
		t.Errorf("a refused PATCH wrote the description")
	}

	// The path's own value, or none, is accepted.
	got := c.must(200, "PUT", "/v1/secrets/"+key, map[string]any{"key": key, "value": b64("path-v3")})
	if s := obj(t, got["secret"], "secret"); str(t, s, "key") != key || int64s(t, s, "currentVersion") != 3 {
		t.Errorf("PUT with the path's key: %v", s)
	}
	c.must(200, "PUT", "/v1/secrets/"+key, map[string]any{"key": "", "value": b64("path-v4")})
	c.must(200, "PATCH", "/v1/secrets/"+key, map[string]any{"key": key, "description": "same key"})
	c.must(200, "POST", "/v1/secrets/"+key+"/versions/1:disable", map[string]any{"key": key, "version": "1"})
	c.must(200, "POST", "/v1/secrets/"+key+"/versions/1:enable", map[string]any{})
	pd := obj(t, c.must(200, "PUT", "/v1/providers/defaults/summary", map[string]any{"useCase": "summary", "provider": "openai", "model": "gpt-5"})["providerDefault"], "providerDefault")
	if str(t, pd, "useCase") != "summary" || str(t, pd, "model") != "gpt-5" {
		t.Errorf("PUT provider default with the path's use case: %v", pd)
	}
	if d := str(t, obj(t, c.must(200, "GET", "/v1/secrets/"+key, nil)["secret"], "secret"), "description"); d != "same key" {
		t.Errorf("description %q after the PATCH with the path's key", d)
	}
}
