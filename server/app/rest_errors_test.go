package app_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
)

func TestRESTStatusMapping(t *testing.T) {
	t.Parallel()
	c := newREST(t)
	const key = "MAPPED_SECRET"
	first := obj(t, c.put(key, "mapped-v1")["secret"], "secret")
	c.put(key, "mapped-v2")

	tests := []struct {
		name, method, path string
		body               any
		status             int
		code               float64 // google.rpc.Code in the body
		field              string  // BadRequest field violation, if any
		msg                string  // substring of the message, if any
	}{
		{name: "lowercase key GET", method: "GET", path: "/v1/secrets/lowercase_key", status: 400, code: 3, field: "key"},
		{name: "lowercase key PUT", method: "PUT", path: "/v1/secrets/bad_Key", body: map[string]any{"value": b64("x")}, status: 400, code: 3, field: "key"},
		{name: "lowercase key access", method: "GET", path: "/v1/secrets/nope/versions/latest:access", status: 400, code: 3, field: "key"},
		{name: "bad version", method: "GET", path: "/v1/secrets/" + key + "/versions/first:access", status: 400, code: 3, field: "version"},
		{name: "unknown key GET", method: "GET", path: "/v1/secrets/NO_SUCH_SECRET", status: 404, code: 5},
		{name: "unknown key access", method: "GET", path: "/v1/secrets/NO_SUCH_SECRET/versions/latest:access", status: 404, code: 5},
		{name: "unknown version", method: "GET", path: "/v1/secrets/" + key + "/versions/9:access", status: 404, code: 5},
		{name: "unknown key DELETE", method: "DELETE", path: "/v1/secrets/NO_SUCH_SECRET", status: 404, code: 5},
		{name: "unknown key PATCH", method: "PATCH", path: "/v1/secrets/NO_SUCH_SECRET", body: map[string]any{"description": "d"}, status: 404, code: 5},
		{name: "stale etag PUT", method: "PUT", path: "/v1/secrets/" + key, body: map[string]any{"value": b64("mapped-v3"), "etag": first["etag"]}, status: 409, code: 10},
		{name: "stale etag DELETE", method: "DELETE", path: "/v1/secrets/" + key + "?etag=" + str(t, first, "etag"), status: 409, code: 10},
		{name: "malformed etag", method: "PUT", path: "/v1/secrets/" + key, body: map[string]any{"value": b64("mapped-v3"), "etag": "garbage"}, status: 400, code: 3, field: "etag"},
		{name: "slack bot token shape", method: "PUT", path: "/v1/secrets/SLACK_BOT_TOKEN", body: map[string]any{"value": b64("xoxp-wrong-kind-5d2c")}, status: 400, code: 3, field: "value", msg: "must start with xoxb-"},
		{name: "empty value", method: "PUT", path: "/v1/secrets/" + key, body: map[string]any{"value": ""}, status: 400, code: 3, field: "value"},
		{name: "bad category", method: "PUT", path: "/v1/secrets/" + key, body: map[string]any{"value": b64("v"), "category": "Not A Category!"}, status: 400, code: 3, field: "category"},
		{name: "bad request id", method: "PUT", path: "/v1/secrets/" + key, body: map[string]any{"value": b64("v"), "requestId": "has spaces"}, status: 400, code: 3, field: "request_id"},
		{name: "batch without keys", method: "POST", path: "/v1/secrets:batchAccess", body: `{"keys":[]}`, status: 400, code: 3, field: "keys"},
		{name: "batch duplicate keys", method: "POST", path: "/v1/secrets:batchAccess", body: `{"keys":["A_KEY","A_KEY"]}`, status: 400, code: 3, field: "keys[1]"},
		{name: "negative page size", method: "GET", path: "/v1/secrets?pageSize=-1", status: 400, code: 3, field: "page_size"},
		{name: "garbage page token", method: "GET", path: "/v1/secrets?pageToken=%21%21", status: 400, code: 3, field: "page_token"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := c.do(tc.method, tc.path, tc.body)
			if r.status != tc.status || r.body["code"] != tc.code {
				t.Fatalf("%s %s: %d %s, want %d with code %v", tc.method, tc.path, r.status, r.raw, tc.status, tc.code)
			}
			if tc.field != "" && !slices.Contains(violationFields(t, r), tc.field) {
				t.Errorf("field violations %v, want %q; body %s", violationFields(t, r), tc.field, r.raw)
			}
			if !strings.Contains(str(t, r.body, "message"), tc.msg) {
				t.Errorf("message %q, want it to contain %q", r.body["message"], tc.msg)
			}
			if strings.Contains(r.raw, "xoxp-wrong-kind-5d2c") || strings.Contains(r.raw, b64("xoxp-wrong-kind-5d2c")) {
				t.Errorf("error holds the submitted value: %s", r.raw)
			}
		})
	}
	// Nothing was written by the failed calls.
	if n := versionCount(c, key); n != 2 {
		t.Errorf("%d versions of %s after the failed writes, want 2", n, key)
	}
	if r := c.do("GET", "/v1/secrets/SLACK_BOT_TOKEN", nil); r.status != 200 || obj(t, r.body["secret"], "secret")["configured"] != false {
		t.Errorf("SLACK_BOT_TOKEN after a rejected value: %d %s", r.status, r.raw)
	}
}

func TestRESTMalformedBodies(t *testing.T) {
	t.Parallel()
	c := newREST(t)
	const key, badB64 = "BODY_CHECKS", "NOT-BASE64-!!-zq9"
	tests := []struct {
		name, body string
		mention    string // the message must name this
	}{
		{"not JSON", `{"value":`, ""},
		{"not an object", `[1,2]`, ""},
		{"unknown field", `{"value":"aGk=","etagg":"r1"}`, "etagg"},
		{"wrong type", `{"value":"aGk=","restartRequired":"yes"}`, "restartRequired"},
		{"wrong type number", `{"value":"aGk=","description":12}`, "description"},
		{"invalid base64", `{"value":"` + badB64 + `"}`, "value"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := c.do("PUT", "/v1/secrets/"+key, tc.body)
			if r.status != 400 || r.body["code"] != float64(3) {
				t.Fatalf("%s: %d %s, want 400 INVALID_ARGUMENT", tc.body, r.status, r.raw)
			}
			if msg := str(t, r.body, "message"); !strings.Contains(msg, tc.mention) {
				t.Errorf("message %q does not name %q", msg, tc.mention)
			}
			if tc.mention != "" && !strings.Contains(r.raw, `"field":"`+tc.mention+`"`) {
				t.Errorf("no google.rpc.BadRequest naming %q: %s", tc.mention, r.raw)
			}
			if strings.Contains(r.raw, badB64) || strings.Contains(r.raw, "NOT-BASE64") {
				t.Errorf("error echoes the submitted value: %s", r.raw)
			}
		})
	}
	if r := c.do("GET", "/v1/secrets/"+key, nil); r.status != 404 {
		t.Errorf("a malformed PUT wrote something: %d %s", r.status, r.raw)
	}
}

func TestRESTBodyLimits(t *testing.T) {
	t.Parallel()
	c := newREST(t)
	const maxValue = 64 << 10

	// Over 256 KiB: refused whether the length is declared or not.
	huge := []byte(`{"value":"` + strings.Repeat("A", 300<<10) + `"}`)
	for _, tc := range []struct {
		name    string
		body    io.Reader
		wantLen int64
	}{
		{"content-length", bytes.NewReader(huge), int64(len(huge))},
		{"chunked", struct{ io.Reader }{bytes.NewReader(huge)}, -1},
	} {
		req, err := http.NewRequest("PUT", c.base+"/v1/secrets/HUGE_BODY", tc.body)
		if err != nil {
			t.Fatal(err)
		}
		if tc.wantLen < 0 {
			req.ContentLength = -1
		}
		if req.ContentLength != tc.wantLen {
			t.Fatalf("%s: ContentLength %d, want %d", tc.name, req.ContentLength, tc.wantLen)
		}
		req.Header.Set("Content-Type", "application/json")
		if r := c.send(req); r.status != http.StatusRequestEntityTooLarge {
			t.Errorf("%s: %d %.300s, want 413", tc.name, r.status, r.raw)
		}
	}
	if r := c.do("GET", "/v1/secrets/HUGE_BODY", nil); r.status != 404 {
		t.Errorf("an oversized PUT wrote something: %d", r.status)
	}

	// The largest value fits (its base64 body is ~87 KiB) and reads back intact.
	maxV := strings.Repeat("m", maxValue-1) + "!"
	c.must(200, "PUT", "/v1/secrets/MAX_VALUE", map[string]any{"value": b64(maxV)})
	got := c.must(200, "GET", "/v1/secrets/MAX_VALUE/versions/latest:access", nil)
	if str(t, got, "value") != b64(maxV) || int64s(t, got, "dataCrc32c") != crc32c(maxV) {
		t.Errorf("64 KiB value did not read back intact")
	}
	r := c.do("PUT", "/v1/secrets/MAX_VALUE", map[string]any{"value": b64(maxV + "x")})
	if r.status != 400 || !slices.Contains(violationFields(t, r), "value") {
		t.Errorf("64 KiB + 1: %d %.300s, want 400 naming value", r.status, r.raw)
	}
	if n := versionCount(c, "MAX_VALUE"); n != 1 {
		t.Errorf("%d versions, want 1", n)
	}
}

func TestRESTIdempotency(t *testing.T) {
	t.Parallel()
	c := newREST(t)
	const key = "IDEMPOTENT_KEY"
	body := map[string]any{"value": b64("once"), "description": "d1", "requestId": "req-7f3a"}
	first := c.must(200, "PUT", "/v1/secrets/"+key, body)
	second := c.must(200, "PUT", "/v1/secrets/"+key, body)
	if first["revision"] != second["revision"] {
		t.Errorf("retry revision %v, first %v", second["revision"], first["revision"])
	}
	if n := versionCount(c, key); n != 1 {
		t.Errorf("%d versions after a retried PUT, want 1", n)
	}
	body["description"] = "d2"
	r := c.do("PUT", "/v1/secrets/"+key, body)
	if r.status != 400 || !slices.Contains(violationFields(t, r), "request_id") {
		t.Errorf("reused requestId with another body: %d %s, want 400 naming request_id", r.status, r.raw)
	}
	if n := versionCount(c, key); n != 1 {
		t.Errorf("%d versions after a rejected reuse, want 1", n)
	}
}

func TestRESTPublicEndpoints(t *testing.T) {
	t.Parallel()
	c := newREST(t)
	if r := c.do("GET", "/healthz", nil); r.status != 200 {
		t.Errorf("/healthz: %d %s", r.status, r.raw)
	}
	if r := c.do("GET", "/readyz", nil); r.status != 200 || r.body["ready"] != true {
		t.Errorf("/readyz: %d %s", r.status, r.raw)
	}
	r := c.do("GET", "/openapi.json", nil)
	var doc any
	if r.status != 200 || json.Unmarshal([]byte(r.raw), &doc) != nil || !strings.Contains(r.raw, `"/v1/secrets"`) {
		t.Errorf("/openapi.json: %d, valid JSON with /v1/secrets expected; %.200s", r.status, r.raw)
	}
	c.must(200, "GET", "/v1/secrets", nil) // so the counter has a sample
	if r := c.do("GET", "/metrics", nil); r.status != 200 || !strings.Contains(r.raw, "grpc_server_handled_total") {
		t.Errorf("/metrics: %d, want grpc_server_handled_total; %.300s", r.status, r.raw)
	}
}

// violationFields returns the google.rpc.BadRequest field names of an error.
func violationFields(t *testing.T, r response) []string {
	t.Helper()
	var fields []string
	details, _ := r.body["details"].([]any)
	for _, d := range details {
		m, _ := d.(map[string]any)
		if m["@type"] != "type.googleapis.com/google.rpc.BadRequest" {
			continue
		}
		vs, _ := m["fieldViolations"].([]any)
		for _, v := range vs {
			if f, ok := v.(map[string]any)["field"].(string); ok {
				fields = append(fields, f)
			}
		}
	}
	return fields
}
