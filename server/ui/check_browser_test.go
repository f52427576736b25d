package ui_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/chromedp/chromedp"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testserver"
	"github.com/orient-bot/secrets/server/app"
)

// TestDashboardCheckButton: a configured catalog key has a Check button
// whose answer (from a local fake provider) appears under the key and is
// said in the page's one live region; a second press while the check runs
// is ignored (one provider call); custom keys and empty slots have none.
func TestDashboardCheckButton(t *testing.T) {
	t.Parallel()
	needBrowser(t)
	var slackCalls atomic.Int32
	provider := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/auth.test" {
			slackCalls.Add(1)
		}
		switch {
		case r.URL.Path == "/api/auth.test" && r.Header.Get("Authorization") == "Bearer "+slackGood:
			w.Write([]byte(`{"ok":true}`))
		case r.URL.Path == "/api/auth.test":
			w.Write([]byte(`{"ok":false,"error":"invalid_auth"}`))
		default:
			w.WriteHeader(http.StatusUnauthorized)
		}
	}))
	t.Cleanup(provider.Close)
	pool := x509.NewCertPool()
	pool.AddCert(provider.Certificate())
	srv := testserver.Start(t, testserver.Options{Configure: func(c *app.Config) {
		c.ProviderChecks.BaseURLs["slack"] = provider.URL
		c.ProviderChecks.BaseURLs["openai"] = provider.URL
		c.ProviderChecks.TLS = &tls.Config{RootCAs: pool}
	}})
	ctx := context.Background()
	for key, value := range map[string]string{"SLACK_BOT_TOKEN": slackGood, "OPENAI_API_KEY": "sk-not-accepted", "E2E_CUSTOM_CHECK": "custom"} {
		if _, err := srv.Secrets.PutSecret(ctx, &pb.PutSecretRequest{Key: key, Value: []byte(value)}); err != nil {
			t.Fatal(err)
		}
	}
	tb := newTab(t, srv)
	tb.open("/ui/")
	tb.signIn(srv.AdminToken)
	tb.waitFor("the Secrets tab", qs(row("SLACK_BOT_TOKEN")))

	// Pressed twice in a row.
	tb.do(chromedp.Evaluate[chromedp.Void](`(() => { const b = ` + qs(row("SLACK_BOT_TOKEN")+` button[data-action="check"]`) + `; b.click(); b.click(); })()`))
	tb.waitFor("the Slack check's answer", qs(row("SLACK_BOT_TOKEN")+` .check-result[data-check="valid"]`))
	if got := tb.text(row("SLACK_BOT_TOKEN") + " .check-result"); got != "Valid — slack: ok (HTTP 200)" {
		t.Errorf("Slack check shows %q", got)
	}
	// Still one live region: the answer under the key is not one.
	if got := tb.exposedLiveRegions(); !slices.Equal(got, []string{"announcer"}) {
		t.Errorf("live regions exposed after a check: %q, want only announcer", got)
	}
	evalAwait[bool](tb, `new Promise((r) => setTimeout(() => r(true), 400))`) // a second check would have come
	if n := slackCalls.Load(); n != 1 {
		t.Errorf("a double press of Check called the provider %d times, want once", n)
	}
	tb.waitFor("the answer said", `document.querySelector('#announcer').textContent === 'Check of SLACK_BOT_TOKEN: Valid — slack: ok (HTTP 200)'`)
	tb.click(row("OPENAI_API_KEY") + ` button[data-action="check"]`)
	tb.waitFor("the OpenAI check's answer", qs(row("OPENAI_API_KEY")+` .check-result[data-check="invalid"]`))
	if got := tb.text(row("OPENAI_API_KEY") + " .check-result"); got != "Invalid — openai: unauthorized (HTTP 401)" {
		t.Errorf("OpenAI check shows %q", got)
	}
	for _, key := range []string{"E2E_CUSTOM_CHECK", "ANTHROPIC_API_KEY"} {
		if eval[bool](tb, qs(row(key)+` button[data-action="check"]`)+` !== null`) {
			t.Errorf("%s has a Check button", key)
		}
	}
	if page := eval[string](tb, `document.body.innerText`); strings.Contains(page, slackGood) {
		t.Error("the page shows the checked value")
	}
}
