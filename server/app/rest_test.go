package app_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"hash/crc32"
	"io"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/orient-bot/secrets/internal/testserver"
)

// restClient talks to a test server's REST gateway over real HTTP.
type restClient struct {
	t     *testing.T
	base  string
	hc    *http.Client
	token string
}

// response is one HTTP answer: status, raw body and (if it is a JSON object)
// the decoded body.
type response struct {
	status int
	raw    string
	body   map[string]any
}

func newREST(t *testing.T) restClient {
	t.Helper()
	srv := testserver.Start(t, testserver.Options{})
	loadServedDocument(t, srv.BaseURL)
	return restClient{t: t, base: srv.BaseURL, hc: &http.Client{Timeout: 30 * time.Second}, token: srv.AdminToken}
}

// do sends body (nil, a string of raw JSON, or a value to marshal).
func (c restClient) do(method, path string, body any) response {
	c.t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		r = strings.NewReader(b)
	case []byte:
		r = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			c.t.Fatal(err)
		}
		r = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, c.base+path, r)
	if err != nil {
		c.t.Fatal(err)
	}
	if r != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return c.send(req)
}

func (c restClient) send(req *http.Request) response {
	c.t.Helper()
	if c.token != "" && req.Header.Get("Authorization") == "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatalf("%s %s: reading body: %v", req.Method, req.URL.Path, err)
	}
	checkAgainstDocument(c.t, req, resp.StatusCode, resp.Header, raw)
	out := response{status: resp.StatusCode, raw: string(raw)}
	_ = json.Unmarshal(raw, &out.body)
	return out
}

// must asserts the status and returns the decoded body.
func (c restClient) must(want int, method, path string, body any) map[string]any {
	c.t.Helper()
	r := c.do(method, path, body)
	if r.status != want {
		c.t.Fatalf("%s %s: status %d, want %d; body: %s", method, path, r.status, want, r.raw)
	}
	if r.body == nil {
		c.t.Fatalf("%s %s: body is not a JSON object: %s", method, path, r.raw)
	}
	return r.body
}

// put creates a secret (or a new version) with a text value.
func (c restClient) put(key, value string) map[string]any {
	c.t.Helper()
	return c.must(200, "PUT", "/v1/secrets/"+key, map[string]any{"value": b64(value)})
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// obj, arr, str and int64s walk decoded JSON, failing the test on a shape
// mismatch.
func obj(t *testing.T, v any, path string) map[string]any {
	t.Helper()
	m, ok := v.(map[string]any)
	if !ok {
		t.Fatalf("%s: got %T (%v), want a JSON object", path, v, v)
	}
	return m
}

func arr(t *testing.T, v any, path string) []any {
	t.Helper()
	a, ok := v.([]any)
	if !ok {
		t.Fatalf("%s: got %T (%v), want a JSON array", path, v, v)
	}
	return a
}

func str(t *testing.T, m map[string]any, name string) string {
	t.Helper()
	s, ok := m[name].(string)
	if !ok {
		t.Fatalf("field %q: got %T (%v), want a string; object: %v", name, m[name], m[name], m)
	}
	return s
}

// int64s reads an int64 field, which protobuf JSON renders as a string.
func int64s(t *testing.T, m map[string]any, name string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(str(t, m, name), 10, 64)
	if err != nil {
		t.Fatalf("field %q: %v", name, err)
	}
	return n
}

func boolean(t *testing.T, m map[string]any, name string) bool {
	t.Helper()
	b, ok := m[name].(bool)
	if !ok {
		t.Fatalf("field %q: got %T (%v), want a bool", name, m[name], m[name])
	}
	return b
}

func versionCount(c restClient, key string) int {
	c.t.Helper()
	return len(arr(c.t, c.must(200, "GET", "/v1/secrets/"+key+"/versions", nil)["versions"], "versions"))
}

func crc32c(s string) int64 {
	return int64(crc32.Checksum([]byte(s), crc32.MakeTable(crc32.Castagnoli)))
}

func TestRESTSecretLifecycle(t *testing.T) {
	t.Parallel()
	c := newREST(t)
	const key, v1, v2 = "E2E_LIFECYCLE_TOKEN", "first-value-4c1d", "second-value-9e2a"

	// Create: {"secret": {…}, "revision": "N"} with lowerCamelCase names and
	// int64 as strings.
	put := c.put(key, v1)
	if int64s(t, put, "revision") < 1 {
		t.Errorf("revision = %v, want >= 1", put["revision"])
	}
	sec := obj(t, put["secret"], "secret")
	for _, name := range []string{"key", "category", "description", "restartRequired", "configured", "currentVersion", "etag", "createTime", "updateTime"} {
		if _, ok := sec[name]; !ok {
			t.Errorf("secret has no %q field: %v", name, sec)
		}
	}
	if _, ok := sec["restart_required"]; ok {
		t.Errorf("secret uses snake_case names: %v", sec)
	}
	if str(t, sec, "key") != key || str(t, sec, "category") != "custom" || !boolean(t, sec, "configured") || int64s(t, sec, "currentVersion") != 1 {
		t.Errorf("created secret = %v", sec)
	}
	if _, err := time.Parse(time.RFC3339Nano, str(t, sec, "createTime")); err != nil {
		t.Errorf("createTime: %v", err)
	}
	if _, ok := sec["value"]; ok {
		t.Errorf("PutSecret response holds a value: %v", sec)
	}

	// GetSecret: metadata only.
	r := c.do("GET", "/v1/secrets/"+key, nil)
	if r.status != 200 {
		t.Fatalf("GET: %d %s", r.status, r.raw)
	}
	if strings.Contains(r.raw, b64(v1)) || strings.Contains(r.raw, v1) {
		t.Errorf("GetSecret body contains the value: %s", r.raw)
	}
	got := obj(t, r.body["secret"], "secret")
	if str(t, got, "etag") != str(t, sec, "etag") || int64s(t, got, "currentVersion") != 1 {
		t.Errorf("GetSecret = %v, want etag %v version 1", got, sec["etag"])
	}

	c.put(key, v2)
	access := func(version string) response {
		return c.do("GET", "/v1/secrets/"+key+"/versions/"+version+":access", nil)
	}
	for _, tc := range []struct {
		version string
		want    string
		wantN   int64
	}{{"latest", v2, 2}, {"1", v1, 1}, {"2", v2, 2}} {
		r := access(tc.version)
		if r.status != 200 {
			t.Fatalf("access %s: %d %s", tc.version, r.status, r.raw)
		}
		if got := str(t, r.body, "value"); got != b64(tc.want) {
			t.Errorf("access %s: value %q, want base64 of %q", tc.version, got, tc.want)
		}
		if int64s(t, r.body, "version") != tc.wantN || int64s(t, r.body, "dataCrc32c") != crc32c(tc.want) || str(t, r.body, "key") != key {
			t.Errorf("access %s = %v, want version %d crc %d", tc.version, r.body, tc.wantN, crc32c(tc.want))
		}
		int64s(t, r.body, "revision")
	}

	// ListSecretVersions: newest first, states as enum names, no values.
	r = c.do("GET", "/v1/secrets/"+key+"/versions", nil)
	if r.status != 200 || strings.Contains(r.raw, b64(v1)) || strings.Contains(r.raw, b64(v2)) {
		t.Fatalf("versions: %d %s", r.status, r.raw)
	}
	versions := arr(t, r.body["versions"], "versions")
	if len(versions) != 2 {
		t.Fatalf("versions = %v, want 2", versions)
	}
	for i, want := range []int64{2, 1} {
		v := obj(t, versions[i], "version")
		if int64s(t, v, "version") != want || str(t, v, "state") != "VERSION_STATE_ENABLED" || str(t, v, "kekId") == "" {
			t.Errorf("versions[%d] = %v", i, v)
		}
	}

	// Disable, enable, destroy.
	wantState := func(path, want string) {
		t.Helper()
		b := c.must(200, "POST", "/v1/secrets/"+key+"/versions/1:"+path, "{}")
		if got := str(t, obj(t, b["version"], "version"), "state"); got != want {
			t.Errorf(":%s: state %s, want %s", path, got, want)
		}
	}
	wantFailedPrecondition := func(step string) {
		t.Helper()
		r := access("1")
		if r.status != 400 || r.body["code"] != float64(9) {
			t.Errorf("access after %s: %d %s, want 400 with code 9 (FAILED_PRECONDITION)", step, r.status, r.raw)
		}
		if strings.Contains(r.raw, b64(v1)) {
			t.Errorf("error holds the value: %s", r.raw)
		}
	}
	wantState("disable", "VERSION_STATE_DISABLED")
	wantFailedPrecondition("disable")
	if r := access("latest"); r.status != 200 {
		t.Errorf("latest after disabling v1: %d %s", r.status, r.raw)
	}
	wantState("enable", "VERSION_STATE_ENABLED")
	if r := access("1"); r.status != 200 || str(t, r.body, "value") != b64(v1) {
		t.Errorf("access after enable: %d %s", r.status, r.raw)
	}
	wantState("destroy", "VERSION_STATE_DESTROYED")
	wantFailedPrecondition("destroy")
	if r := c.do("POST", "/v1/secrets/"+key+"/versions/1:enable", "{}"); r.status != 400 {
		t.Errorf("enable a destroyed version: %d %s, want 400", r.status, r.raw)
	}

	// Delete, then it is gone.
	del := c.must(200, "DELETE", "/v1/secrets/"+key, nil)
	int64s(t, del, "revision")
	for _, path := range []string{"/v1/secrets/" + key, "/v1/secrets/" + key + "/versions/latest:access"} {
		if r := c.do("GET", path, nil); r.status != 404 || r.body["code"] != float64(5) {
			t.Errorf("GET %s after delete: %d %s, want 404", path, r.status, r.raw)
		}
	}
}

func TestRESTListSecrets(t *testing.T) {
	t.Parallel()
	c := newREST(t)
	for _, k := range []string{"AAA_CUSTOM", "MMM_CUSTOM", "ZZZ_CUSTOM", "SLACK_SIGNING_SECRET"} {
		c.put(k, "v-"+k)
	}
	list := func(query string) ([]map[string]any, string) {
		t.Helper()
		b := c.must(200, "GET", "/v1/secrets"+query, nil)
		var out []map[string]any
		for _, s := range arr(t, b["secrets"], "secrets") {
			out = append(out, obj(t, s, "secret"))
		}
		int64s(t, b, "revision")
		return out, str(t, b, "nextPageToken")
	}

	all, next := list("")
	if next != "" {
		t.Errorf("nextPageToken = %q with the default page size", next)
	}
	byKey := map[string]map[string]any{}
	var keys []string
	for _, s := range all {
		byKey[str(t, s, "key")] = s
		keys = append(keys, str(t, s, "key"))
	}
	if !sort.StringsAreSorted(keys) {
		t.Errorf("not ordered by key: %v", keys)
	}
	slot, ok := byKey["ANTHROPIC_API_KEY"]
	if !ok {
		t.Fatalf("catalog empty slot ANTHROPIC_API_KEY missing: %v", keys)
	}
	if boolean(t, slot, "configured") || int64s(t, slot, "currentVersion") != 0 || str(t, slot, "category") != "ai" {
		t.Errorf("empty slot = %v", slot)
	}
	for _, k := range []string{"AAA_CUSTOM", "SLACK_SIGNING_SECRET"} {
		if s, ok := byKey[k]; !ok || !boolean(t, s, "configured") {
			t.Errorf("%s: %v, want configured", k, s)
		}
	}

	// Category filter.
	slack, _ := list("?category=slack")
	var slackKeys []string
	for _, s := range slack {
		if str(t, s, "category") != "slack" {
			t.Errorf("category=slack returned %v", s)
		}
		slackKeys = append(slackKeys, str(t, s, "key"))
	}
	if want := []string{"SLACK_APP_TOKEN", "SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_USER_TOKEN"}; !cmp.Equal(slackKeys, want) {
		t.Errorf("category=slack keys: %v", cmp.Diff(want, slackKeys))
	}

	// Paging visits every key exactly once, in order.
	for _, size := range []int{1, 3, 7} {
		var paged []string
		token := ""
		for pages := 0; ; pages++ {
			if pages > len(keys)+1 {
				t.Fatalf("pageSize %d: paging does not end", size)
			}
			q := "?pageSize=" + strconv.Itoa(size)
			if token != "" {
				q += "&pageToken=" + url.QueryEscape(token)
			}
			page, next := list(q)
			if len(page) > size {
				t.Fatalf("pageSize %d: page of %d", size, len(page))
			}
			for _, s := range page {
				paged = append(paged, str(t, s, "key"))
			}
			if next == "" {
				break
			}
			token = next
		}
		if !cmp.Equal(paged, keys) {
			t.Errorf("pageSize %d: paged keys differ from one list:\n%s", size, cmp.Diff(keys, paged))
		}
	}
	// A token only works with the filter it was issued for.
	_, token := list("?pageSize=1")
	if r := c.do("GET", "/v1/secrets?category=slack&pageToken="+url.QueryEscape(token), nil); r.status != 400 {
		t.Errorf("token with another filter: %d %s, want 400", r.status, r.raw)
	}
}

func TestRESTUpdateSecret(t *testing.T) {
	t.Parallel()
	c := newREST(t)
	const key = "PATCH_ME"
	put := c.must(200, "PUT", "/v1/secrets/"+key, map[string]any{
		"value": b64("patch-value"), "description": "before", "category": "webhooks", "restartRequired": true,
	})
	before := obj(t, put["secret"], "secret")

	b := c.must(200, "PATCH", "/v1/secrets/"+key, map[string]any{"description": "x"})
	after := obj(t, b["secret"], "secret")
	if str(t, after, "description") != "x" {
		t.Errorf("description = %v, want x", after["description"])
	}
	if str(t, after, "category") != "webhooks" || !boolean(t, after, "restartRequired") || int64s(t, after, "currentVersion") != 1 {
		t.Errorf("PATCH of description changed other fields: %v", after)
	}
	if str(t, after, "etag") == str(t, before, "etag") {
		t.Errorf("etag unchanged by PATCH: %v", after["etag"])
	}
	if versionCount(c, key) != 1 {
		t.Errorf("PATCH added a version")
	}

	// A stale etag is a conflict and changes nothing.
	r := c.do("PATCH", "/v1/secrets/"+key, map[string]any{"description": "y", "etag": str(t, before, "etag")})
	if r.status != 409 || r.body["code"] != float64(10) {
		t.Errorf("PATCH with stale etag: %d %s, want 409 ABORTED", r.status, r.raw)
	}
	got := obj(t, c.must(200, "GET", "/v1/secrets/"+key, nil)["secret"], "secret")
	if str(t, got, "description") != "x" {
		t.Errorf("stale PATCH wrote: %v", got)
	}
	// The current etag works.
	c.must(200, "PATCH", "/v1/secrets/"+key, map[string]any{"description": "z", "etag": str(t, got, "etag")})
}

func TestRESTBatchAccess(t *testing.T) {
	t.Parallel()
	c := newREST(t)
	c.put("BATCH_A", "value-a")
	c.put("BATCH_B", "value-b")
	b := c.must(200, "POST", "/v1/secrets:batchAccess", map[string]any{"keys": []string{"BATCH_A", "BATCH_MISSING", "BATCH_B"}})
	int64s(t, b, "revision")
	results := arr(t, b["results"], "results")
	if len(results) != 3 {
		t.Fatalf("results = %v", results)
	}
	for i, want := range []struct{ key, value string }{{"BATCH_A", "value-a"}, {"BATCH_MISSING", ""}, {"BATCH_B", "value-b"}} {
		r := obj(t, results[i], "result")
		if str(t, r, "key") != want.key {
			t.Errorf("results[%d].key = %v, want %s (request order)", i, r["key"], want.key)
		}
		if want.value == "" {
			e := obj(t, r["error"], "error")
			if e["code"] != float64(5) || str(t, r, "value") != "" || int64s(t, r, "version") != 0 {
				t.Errorf("missing key result = %v, want error.code 5 and no value", r)
			}
			continue
		}
		if r["error"] != nil || str(t, r, "value") != b64(want.value) || int64s(t, r, "version") != 1 || int64s(t, r, "dataCrc32c") != crc32c(want.value) {
			t.Errorf("results[%d] = %v", i, r)
		}
	}
}

func TestRESTProviders(t *testing.T) {
	t.Parallel()
	c := newREST(t)
	c.put("OPENAI_API_KEY", "sk-test-provider")

	ps := arr(t, c.must(200, "GET", "/v1/providers", nil)["providers"], "providers")
	got := map[string]map[string]any{}
	for _, p := range ps {
		m := obj(t, p, "provider")
		got[str(t, m, "provider")] = m
	}
	for id, want := range map[string]struct {
		key        string
		configured bool
	}{"anthropic": {"ANTHROPIC_API_KEY", false}, "openai": {"OPENAI_API_KEY", true}, "google": {"GOOGLE_AI_API_KEY", false}} {
		p, ok := got[id]
		if !ok {
			t.Errorf("provider %s missing: %v", id, ps)
			continue
		}
		if str(t, p, "key") != want.key || boolean(t, p, "configured") != want.configured || str(t, p, "displayName") == "" || len(arr(t, p["models"], "models")) == 0 {
			t.Errorf("provider %s = %v, want key %s configured %v", id, p, want.key, want.configured)
		}
	}

	defaults := func() map[string]map[string]any {
		b := c.must(200, "GET", "/v1/providers/defaults", nil)
		out := map[string]map[string]any{}
		for _, d := range arr(t, b["defaults"], "defaults") {
			m := obj(t, d, "default")
			out[str(t, m, "useCase")] = m
		}
		return out
	}
	d := defaults()
	for _, u := range []string{"chat", "code", "summary"} {
		if _, ok := d[u]; !ok {
			t.Errorf("no default for use case %s: %v", u, d)
		}
	}
	b := c.must(200, "PUT", "/v1/providers/defaults/chat", map[string]any{"provider": "openai", "model": "gpt-5"})
	pd := obj(t, b["providerDefault"], "providerDefault")
	if str(t, pd, "useCase") != "chat" || str(t, pd, "provider") != "openai" || str(t, pd, "model") != "gpt-5" {
		t.Errorf("UpdateProviderDefault = %v", pd)
	}
	int64s(t, b, "revision")
	chat := defaults()["chat"]
	if str(t, chat, "provider") != "openai" || str(t, chat, "model") != "gpt-5" {
		t.Errorf("chat default after PUT = %v", chat)
	}

	for _, tc := range []struct{ name, path, body, field string }{
		{"unknown provider", "/v1/providers/defaults/chat", `{"provider":"acme","model":"m"}`, "provider"},
		{"unknown use case", "/v1/providers/defaults/poetry", `{"provider":"openai","model":"m"}`, "use_case"},
		{"empty model", "/v1/providers/defaults/code", `{"provider":"openai","model":" "}`, "model"},
	} {
		r := c.do("PUT", tc.path, tc.body)
		if r.status != 400 || !slices.Contains(violationFields(t, r), tc.field) {
			t.Errorf("%s: %d %s, want 400 naming %s", tc.name, r.status, r.raw, tc.field)
		}
	}
	if chat := defaults()["chat"]; str(t, chat, "provider") != "openai" {
		t.Errorf("a rejected update changed the default: %v", chat)
	}
}

func TestRESTAuditEvents(t *testing.T) {
	t.Parallel()
	c := newREST(t)
	const key, value = "AUDITED_SECRET", "audit-me-3f81"
	c.put(key, value)
	c.must(200, "GET", "/v1/secrets/"+key+"/versions/latest:access", nil)
	c.put("OTHER_SECRET", "other-value")

	r := c.do("GET", "/v1/audit/events?key="+key, nil)
	if r.status != 200 {
		t.Fatalf("audit: %d %s", r.status, r.raw)
	}
	if strings.Contains(r.raw, value) || strings.Contains(r.raw, b64(value)) {
		t.Errorf("audit events hold the value: %s", r.raw)
	}
	events := arr(t, r.body["events"], "events")
	var actions []string
	last := int64(1 << 62)
	for _, e := range events {
		m := obj(t, e, "event")
		if str(t, m, "key") != key {
			t.Errorf("event for another key: %v", m)
		}
		seq := int64s(t, m, "sequence")
		if seq >= last {
			t.Errorf("events not newest first: %d after %d", seq, last)
		}
		last = seq
		if _, err := time.Parse(time.RFC3339Nano, str(t, m, "time")); err != nil {
			t.Errorf("time: %v", err)
		}
		if str(t, m, "outcome") != "OK" || str(t, m, "actor") == "" {
			t.Errorf("event = %v", m)
		}
		actions = append(actions, str(t, m, "action"))
	}
	if want := []string{"AccessSecretVersion", "PutSecret"}; !cmp.Equal(actions, want) {
		t.Errorf("actions (newest first): %s", cmp.Diff(want, actions))
	}
}
