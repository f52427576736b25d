package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testserver"
	secretsd "github.com/orient-bot/secrets/server/app"
)

// fakeProviders serves Slack, OpenAI and JIRA locally: a credential ending
// in "-good" is accepted. calls counts the requests each received.
type fakeProviders struct {
	slack, openai, jira *httptest.Server
	calls               atomic.Int64
}

func newFakeProviders(t *testing.T) *fakeProviders {
	f := &fakeProviders{}
	f.slack = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.calls.Add(1)
		if strings.HasSuffix(r.Header.Get("Authorization"), "-good") {
			w.Write([]byte(`{"ok":true}`))
			return
		}
		w.Write([]byte(`{"ok":false,"error":"invalid_auth"}`))
	}))
	f.openai = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.calls.Add(1)
		if !strings.HasSuffix(r.Header.Get("Authorization"), "-good") {
			w.WriteHeader(http.StatusUnauthorized)
		}
	}))
	f.jira = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.calls.Add(1)
		want := "Basic " + base64.StdEncoding.EncodeToString([]byte("bot@example.com:jira-good"))
		if r.URL.Path != "/rest/api/3/myself" || r.Header.Get("Authorization") != want {
			w.WriteHeader(http.StatusUnauthorized)
		}
	}))
	for _, s := range []*httptest.Server{f.slack, f.openai, f.jira} {
		t.Cleanup(s.Close)
	}
	return f
}

func (f *fakeProviders) configure(c *secretsd.Config) {
	pool := x509.NewCertPool()
	for _, s := range []*httptest.Server{f.slack, f.openai, f.jira} {
		pool.AddCert(s.Certificate())
	}
	c.ProviderChecks.BaseURLs = map[string]string{"slack": f.slack.URL, "openai": f.openai.URL,
		// Unused providers point at a closed port: a test never reaches the internet.
		"anthropic": "https://127.0.0.1:1", "google": "https://127.0.0.1:1", "github": "https://127.0.0.1:1"}
	c.ProviderChecks.JIRAHosts = []string{"127.0.0.1"}
	c.ProviderChecks.TLS = &tls.Config{RootCAs: pool}
	c.ProviderChecks.Timeout = 5 * time.Second
}

func TestCheckSecret(t *testing.T) {
	t.Parallel()
	fakes := newFakeProviders(t)
	srv := testserver.Start(t, testserver.Options{Configure: fakes.configure})
	ctx := context.Background()
	addr := srv.GRPCAddr()
	put := func(key, value string) {
		t.Helper()
		if r := cli(t, ctx, addr, value+"\n", nil, "put", key); r.code != 0 {
			t.Fatalf("put %s: %+v", key, r)
		}
	}
	put("SLACK_BOT_TOKEN", "xoxb-slack-good")
	put("OPENAI_API_KEY", "sk-openai-bad")
	put("JIRA_API_TOKEN", "jira-good")
	put("CUSTOM_TOKEN", "custom-value")

	noValue := func(r result) {
		t.Helper()
		for _, v := range []string{"xoxb-slack-good", "sk-openai-bad", "jira-good", "bot@example.com"} {
			if strings.Contains(r.stdout+r.stderr, v) {
				t.Errorf("output shows %q: %+v", v, r)
			}
		}
	}
	r := cli(t, ctx, addr, "", nil, "check", "SLACK_BOT_TOKEN")
	noValue(r)
	if r.code != 0 || r.stdout != "SLACK_BOT_TOKEN (version 1): valid — slack: ok, HTTP 200\n" {
		t.Errorf("check SLACK_BOT_TOKEN: %+v", r)
	}
	r = cli(t, ctx, addr, "", nil, "check", "OPENAI_API_KEY", "-o", "json")
	noValue(r)
	var got map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || r.code != 1 ||
		got["result"] != "invalid" || got["httpStatus"] != float64(401) || got["provider"] != "openai" {
		t.Errorf("check OPENAI_API_KEY: %+v (%v)", r, err)
	}

	// JIRA needs its email and site; until then the check is refused.
	r = cli(t, ctx, addr, "", nil, "check", "JIRA_API_TOKEN")
	if r.code != 1 || !strings.Contains(r.stderr, "needs JIRA_EMAIL") {
		t.Errorf("check JIRA without email: %+v", r)
	}
	put("JIRA_EMAIL", "bot@example.com")
	put("JIRA_BASE_URL", fakes.jira.URL)
	r = cli(t, ctx, addr, "", nil, "check", "JIRA_API_TOKEN")
	noValue(r)
	if r.code != 0 || !strings.Contains(r.stdout, "valid — jira: ok, HTTP 200") {
		t.Errorf("check JIRA_API_TOKEN: %+v", r)
	}

	calls := fakes.calls.Load()
	for _, c := range []struct {
		key  string
		code codes.Code
	}{
		{"CUSTOM_TOKEN", codes.InvalidArgument},         // no provider check
		{"ANTHROPIC_API_KEY", codes.NotFound},           // not configured
		{"SLACK_SIGNING_SECRET", codes.InvalidArgument}, // no harmless call exists
		{"not-a-key", codes.InvalidArgument},
	} {
		_, err := srv.Secrets.CheckSecret(ctx, &pb.CheckSecretRequest{Key: c.key})
		if status.Code(err) != c.code {
			t.Errorf("CheckSecret(%s) = %v, want %v", c.key, err, c.code)
		}
	}
	// Readers may read values but not make the service use them.
	tok, err := srv.Tokens.CreateToken(ctx, &pb.CreateTokenRequest{Name: "reader-bot", Role: "reader"})
	if err != nil {
		t.Fatal(err)
	}
	readerConn := srv.Dial(t, tok.GetToken())
	if _, err := pb.NewSecretServiceClient(readerConn).CheckSecret(ctx, &pb.CheckSecretRequest{Key: "SLACK_BOT_TOKEN"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("reader CheckSecret = %v, want PERMISSION_DENIED", err)
	}
	if n := fakes.calls.Load(); n != calls {
		t.Errorf("refused checks reached a provider %d times", n-calls)
	}

	// REST: POST /v1/secrets/{key}:check.
	req, _ := http.NewRequest(http.MethodPost, srv.BaseURL+"/v1/secrets/SLACK_BOT_TOKEN:check", strings.NewReader("{}"))
	req.Header.Set("Authorization", "Bearer "+testserver.DefaultAdminToken)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || !strings.Contains(string(body), `"result":"valid"`) || !strings.Contains(string(body), `"httpStatus":200`) ||
		strings.Contains(string(body), "xoxb-slack-good") {
		t.Errorf("REST check: %d %s", res.StatusCode, body)
	}

	// Audited: the token checked, and the JIRA values it used.
	for key, detail := range map[string]string{"SLACK_BOT_TOKEN": "sent to slack", "JIRA_API_TOKEN": "sent to jira", "JIRA_EMAIL": "used to check JIRA_API_TOKEN"} {
		ev, err := srv.Audit.ListAuditEvents(ctx, &pb.ListAuditEventsRequest{Key: key, Action: "CheckSecret"})
		if err != nil {
			t.Fatal(err)
		}
		if len(ev.GetEvents()) == 0 {
			t.Errorf("%s: no CheckSecret audit event: %v", key, ev.GetEvents())
			continue
		}
		if d := ev.GetEvents()[0].GetDetail(); !strings.Contains(d, detail) {
			t.Errorf("%s: audit detail %q, want %q", key, d, detail)
		}
	}
}
