package providercheck

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// fake is a local provider: it answers by the credential it receives and
// records every credential it saw.
type fake struct {
	*httptest.Server
	mu   sync.Mutex
	seen []string
}

func (f *fake) saw() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.seen...)
}

// credential extracts whatever credential a request carries.
func credential(r *http.Request) string {
	for _, h := range []string{"x-api-key", "x-goog-api-key"} {
		if v := r.Header.Get(h); v != "" {
			return v
		}
	}
	a := r.Header.Get("Authorization")
	if b, ok := strings.CutPrefix(a, "Basic "); ok {
		d, _ := base64.StdEncoding.DecodeString(b)
		return string(d)
	}
	return strings.TrimPrefix(a, "Bearer ")
}

func newFake(t *testing.T, provider string) *fake {
	f := &fake{}
	f.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cred := credential(r)
		f.mu.Lock()
		f.seen = append(f.seen, cred)
		f.mu.Unlock()
		want := map[string]string{Anthropic: "GET /v1/models", OpenAI: "GET /v1/models", Google: "GET /v1beta/models",
			Slack: "POST /api/auth.test", GitHub: "GET /user", JIRA: "GET /rest/api/3/myself"}[provider]
		if strings.HasPrefix(cred, "ghs_") {
			want = "GET /installation/repositories"
		}
		if got := r.Method + " " + r.URL.Path; got != want {
			t.Errorf("%s: request %s, want %s", provider, got, want)
		}
		if provider == Slack {
			switch {
			case strings.HasSuffix(cred, "-good"):
				w.Write([]byte(`{"ok":true,"user":"bot"}`))
			case strings.HasSuffix(cred, "-noscope"):
				w.Write([]byte(`{"ok":false,"error":"missing_scope"}`))
			default:
				w.Write([]byte(`{"ok":false,"error":"invalid_auth"}`))
			}
			return
		}
		switch {
		case strings.HasSuffix(cred, "-good"), strings.HasPrefix(cred, "ghs_"):
			w.Write([]byte(`{}`))
		case strings.HasSuffix(cred, "-noscope"):
			w.WriteHeader(http.StatusForbidden)
		case strings.HasSuffix(cred, "-limited"):
			w.WriteHeader(http.StatusTooManyRequests)
		case provider == Google:
			w.WriteHeader(http.StatusBadRequest)
			w.Write([]byte(`{"error":{"status":"INVALID_ARGUMENT","details":[{"reason":"API_KEY_INVALID"}]}}`))
		default:
			w.WriteHeader(http.StatusUnauthorized)
		}
	}))
	t.Cleanup(f.Close)
	return f
}

// trustAll trusts every fake's certificate (httptest's shared test CA).
func trustAll(fakes ...*fake) *tls.Config {
	pool := x509.NewCertPool()
	for _, f := range fakes {
		pool.AddCert(f.Certificate())
	}
	return &tls.Config{RootCAs: pool}
}

func TestCheckProviders(t *testing.T) {
	t.Parallel()
	fakes := map[string]*fake{}
	var all []*fake
	for _, p := range []string{Anthropic, OpenAI, Google, Slack, GitHub, JIRA} {
		fakes[p] = newFake(t, p)
		all = append(all, fakes[p])
	}
	base := map[string]string{}
	for p, f := range fakes {
		if p != JIRA {
			base[p] = f.URL
		}
	}
	c, err := New(Config{BaseURLs: base, JIRAHosts: []string{"127.0.0.1"}, TLS: trustAll(all...), Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	jira := map[string][]byte{"JIRA_EMAIL": []byte("me@example.com"), "JIRA_BASE_URL": []byte(fakes[JIRA].URL + "/")}
	cases := []struct {
		key, cred string
		want      Result
		status    int
		reason    string
	}{
		{"ANTHROPIC_API_KEY", "sk-ant-good", Valid, 200, "ok"},
		{"ANTHROPIC_API_KEY", "sk-ant-bad", Invalid, 401, "unauthorized"},
		{"ANTHROPIC_API_KEY", "sk-ant-limited", Unreachable, 429, "rate limited"},
		{"OPENAI_API_KEY", "sk-good", Valid, 200, "ok"},
		{"OPENAI_API_KEY", "sk-noscope", InsufficientPermissions, 403, "forbidden"},
		{"GOOGLE_AI_API_KEY", "AIza-good", Valid, 200, "ok"},
		{"GOOGLE_AI_API_KEY", "AIza-bad", Invalid, 400, "API_KEY_INVALID"},
		{"SLACK_BOT_TOKEN", "xoxb-good", Valid, 200, "ok"},
		{"SLACK_BOT_TOKEN", "xoxb-bad", Invalid, 200, "invalid_auth"},
		{"SLACK_USER_TOKEN", "xoxp-noscope", InsufficientPermissions, 200, "missing_scope"},
		{"GITHUB_TOKEN", "ghp_good", Invalid, 401, "unauthorized"},
		{"GITHUB_TOKEN", "ghp-good", Valid, 200, "ok"},
		{"GITHUB_TOKEN", "ghs_installation", Valid, 200, "ok"},
		{"JIRA_API_TOKEN", "jira-good", Valid, 200, "ok"},
		{"JIRA_API_TOKEN", "jira-bad", Invalid, 401, "unauthorized"},
	}
	for _, tc := range cases {
		values := map[string][]byte{tc.key: []byte(tc.cred)}
		for k, v := range jira {
			values[k] = v
		}
		got := c.Check(context.Background(), tc.key, values)
		provider, _, _ := Plan(tc.key)
		want := Outcome{Provider: provider, Result: tc.want, HTTPStatus: tc.status, Reason: tc.reason}
		if got != want {
			t.Errorf("%s %s: got %+v, want %+v", tc.key, tc.cred, got, want)
		}
	}
	// Each credential reached its own provider only.
	for p, f := range fakes {
		for _, cred := range f.saw() {
			var owner string
			for _, tc := range cases {
				if cred == tc.cred || cred == "me@example.com:"+tc.cred {
					owner, _, _ = Plan(tc.key)
				}
			}
			if owner != p {
				t.Errorf("%s received a credential of %q", p, owner)
			}
		}
	}
	if got := fakes[JIRA].saw(); len(got) != 2 || got[0] != "me@example.com:jira-good" {
		t.Errorf("JIRA saw %q, want basic auth of JIRA_EMAIL:token", got)
	}
}

func TestCheckNeverFollowsRedirectsToAnotherHost(t *testing.T) {
	t.Parallel()
	other := newFake(t, OpenAI)
	redirector := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/models" {
			http.Redirect(w, r, "/moved/v1/models", http.StatusFound) // same host: followed
			return
		}
		http.Redirect(w, r, other.URL+"/v1/models", http.StatusTemporaryRedirect)
	}))
	t.Cleanup(redirector.Close)
	pool := x509.NewCertPool()
	pool.AddCert(redirector.Certificate())
	pool.AddCert(other.Certificate())
	c, err := New(Config{BaseURLs: map[string]string{OpenAI: redirector.URL}, TLS: &tls.Config{RootCAs: pool}})
	if err != nil {
		t.Fatal(err)
	}
	got := c.Check(context.Background(), "OPENAI_API_KEY", map[string][]byte{"OPENAI_API_KEY": []byte("sk-good")})
	if got.Result != Unreachable || got.HTTPStatus != http.StatusTemporaryRedirect {
		t.Errorf("got %+v, want unreachable 307", got)
	}
	if s := other.saw(); len(s) != 0 {
		t.Errorf("the other host received %d requests", len(s))
	}
}

func TestCheckTimeoutsAndNetworkErrors(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	slow := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(release); slow.Close() })
	closed := httptest.NewTLSServer(http.NotFoundHandler())
	closedURL := closed.URL
	closed.Close()
	pool := x509.NewCertPool()
	pool.AddCert(slow.Certificate())
	c, err := New(Config{BaseURLs: map[string]string{Anthropic: slow.URL, OpenAI: closedURL},
		TLS: &tls.Config{RootCAs: pool}, Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	got := c.Check(context.Background(), "ANTHROPIC_API_KEY", map[string][]byte{"ANTHROPIC_API_KEY": []byte("sk-ant-x")})
	if got.Result != Unreachable || got.Reason != "timeout" || got.HTTPStatus != 0 {
		t.Errorf("slow provider: %+v", got)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("timeout took %v", d)
	}
	got = c.Check(context.Background(), "OPENAI_API_KEY", map[string][]byte{"OPENAI_API_KEY": []byte("sk-x")})
	if got.Result != Unreachable || got.Reason != "connection refused" {
		t.Errorf("closed provider: %+v", got)
	}
}

func TestCheckRefusesBeforeSending(t *testing.T) {
	t.Parallel()
	f := newFake(t, JIRA)
	c, err := New(Config{JIRAHosts: []string{"*.atlassian.net"}, TLS: trustAll(f)})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		values map[string][]byte
		reason string
	}{
		{"host not allowed", map[string][]byte{"JIRA_BASE_URL": []byte(f.URL), "JIRA_EMAIL": []byte("a@b.c")}, "not an allowed JIRA host"},
		{"plain http", map[string][]byte{"JIRA_BASE_URL": []byte("http://x.atlassian.net"), "JIRA_EMAIL": []byte("a@b.c")}, "must use https"},
		{"credentials in the URL", map[string][]byte{"JIRA_BASE_URL": []byte("https://u:p@x.atlassian.net"), "JIRA_EMAIL": []byte("a@b.c")}, "not a URL"},
		{"no email", map[string][]byte{"JIRA_BASE_URL": []byte("https://x.atlassian.net")}, "JIRA_EMAIL"},
	} {
		tc.values["JIRA_API_TOKEN"] = []byte("jira-good")
		got := c.Check(context.Background(), "JIRA_API_TOKEN", tc.values)
		if got.Result != Invalid || !strings.Contains(got.Reason, tc.reason) || got.HTTPStatus != 0 {
			t.Errorf("%s: %+v, want invalid with %q", tc.name, got, tc.reason)
		}
	}
	got := c.Check(context.Background(), "OPENAI_API_KEY", map[string][]byte{"OPENAI_API_KEY": []byte("sk-a\r\nX-Injected: 1")})
	if got.Result != Invalid || strings.Contains(got.Reason, "sk-a") {
		t.Errorf("malformed credential: %+v", got)
	}
	if s := f.saw(); len(s) != 0 {
		t.Errorf("sent %d requests", len(s))
	}
}

func TestNewRejectsBadBaseURLs(t *testing.T) {
	for _, base := range []map[string]string{
		{OpenAI: "ftp://x"}, {OpenAI: "https://u:p@x"}, {OpenAI: "https://x/?q=1"}, {"jira": "https://x"}, {"nope": "https://x"},
	} {
		if _, err := New(Config{BaseURLs: base}); err == nil {
			t.Errorf("New(%v) accepted", base)
		}
	}
}

func TestCheckBoundsConcurrentChecks(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	arrived := make(chan struct{}, MaxInFlight+1)
	slow := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
	}))
	t.Cleanup(slow.Close)
	pool := x509.NewCertPool()
	pool.AddCert(slow.Certificate())
	c, err := New(Config{BaseURLs: map[string]string{OpenAI: slow.URL}, TLS: &tls.Config{RootCAs: pool}, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	values := map[string][]byte{"OPENAI_API_KEY": []byte("sk-x")}
	var wg sync.WaitGroup
	for range MaxInFlight {
		wg.Go(func() { c.Check(context.Background(), "OPENAI_API_KEY", values) })
	}
	for range MaxInFlight {
		<-arrived
	}
	got := c.Check(context.Background(), "OPENAI_API_KEY", values)
	close(release)
	wg.Wait()
	if got.Result != Unreachable || !strings.Contains(got.Reason, "too many checks") {
		t.Errorf("check beyond the bound: %+v", got)
	}
	// Once the slow checks are done, checks run again (the fake answers 200).
	if got := c.Check(context.Background(), "OPENAI_API_KEY", values); got.Result != Valid {
		t.Errorf("check after the others finished: %+v", got)
	}
}
