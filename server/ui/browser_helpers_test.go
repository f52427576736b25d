package ui_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/orient-bot/secrets/internal/testserver"
)

// The browser tests drive a real headless Chromium over the DevTools
// protocol (chromedp) against a real secretsd (testserver) and PostgreSQL.
// One browser per test binary; every test gets its own browser context
// (like a fresh incognito profile) and tab.

// chromiumEnv names a Chromium/Chrome binary to use instead of searching.
const chromiumEnv = "CHROMIUM_PATH"

// requireEnv, when set (CI sets it), turns the skip without Chromium into a
// failure, so the browser tests cannot silently stop running.
const requireEnv = "REQUIRE_BROWSER_TESTS"

var (
	browserOnce   sync.Once
	browserCtx    context.Context
	browserErr    error
	browserCancel = func() {}
)

func findChromium() string {
	if p := os.Getenv(chromiumEnv); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome-stable", "google-chrome", "chrome", "headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// startBrowser launches the shared browser once.
func startBrowser(path string) {
	dir, err := os.MkdirTemp("", "secrets-ui-chromium-")
	if err != nil {
		browserErr = err
		return
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(dir),
		chromedp.WindowSize(1360, 900),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-background-timer-throttling", true),
		chromedp.Flag("disable-renderer-backgrounding", true),
		chromedp.Flag("disable-backgrounding-occluded-windows", true),
		chromedp.Flag("mute-audio", true),
		chromedp.Flag("hide-scrollbars", true),
	}
	allocCtx, allocCancel := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	// No timeout on this first call: it would stop the browser with it.
	done := make(chan error, 1)
	go func() { done <- chromedp.Do(ctx) }()
	select {
	case err = <-done:
	case <-time.After(90 * time.Second):
		err = fmt.Errorf("no answer in 90s")
	}
	if err != nil {
		cancel()
		allocCancel()
		os.RemoveAll(dir)
		browserErr = fmt.Errorf("starting %s: %w", path, err)
		return
	}
	browserCtx = ctx
	browserCancel = func() {
		cancel()
		allocCancel()
		os.RemoveAll(dir)
	}
}

// actionTimeout bounds one browser action or wait. Generous: on a loaded
// 2-core machine running many test binaries, a navigation can take tens of
// seconds; the bound only catches a browser that hangs.
const actionTimeout = 60 * time.Second

// tab is one browser tab on a test server.
type tab struct {
	t       *testing.T
	ctx     context.Context
	srv     *testserver.Server
	token   string
	dialogs *atomic.Int32
	mu      *sync.Mutex
	errs    *[]string
}

// needBrowser skips the test when no Chromium is installed (fails with
// REQUIRE_BROWSER_TESTS set), and returns the binary.
func needBrowser(t *testing.T) string {
	t.Helper()
	path := findChromium()
	if path == "" && os.Getenv(requireEnv) != "" {
		t.Fatalf("no Chromium found and %s is set: run scripts/ensure-chromium.sh (or set %s)", requireEnv, chromiumEnv)
	}
	if path == "" {
		t.Skipf("browser test skipped: no Chromium found (looked for chromium, chromium-browser, google-chrome in PATH; or set %s). "+
			"Install it with scripts/ensure-chromium.sh (apt-get install -y chromium).", chromiumEnv)
	}
	return path
}

// newTab opens a tab in a fresh browser context (skipping the test when no
// Chromium is installed).
func newTab(t *testing.T, srv *testserver.Server) *tab {
	t.Helper()
	path := needBrowser(t)
	browserOnce.Do(func() { startBrowser(path) })
	if browserErr != nil {
		t.Fatalf("browser: %v", browserErr)
	}
	tb := &tab{t: t, srv: srv, token: srv.AdminToken, dialogs: new(atomic.Int32), mu: new(sync.Mutex), errs: new([]string)}
	// The listener sees the tab's events from its start. It must not run
	// commands itself: dialogs are dismissed from another goroutine.
	dialogs := make(chan struct{}, 16)
	listener := func(ev any) {
		switch e := ev.(type) {
		case *page.EventJavascriptDialogOpening:
			tb.dialogs.Add(1)
			select {
			case dialogs <- struct{}{}:
			default:
			}
		case *runtime.EventExceptionThrown:
			msg := e.ExceptionDetails.Text
			if e.ExceptionDetails.Exception != nil {
				msg += " " + e.ExceptionDetails.Exception.Description
			}
			tb.mu.Lock()
			*tb.errs = append(*tb.errs, msg)
			tb.mu.Unlock()
		}
	}
	ctx, cancel := chromedp.NewContext(browserCtx, chromedp.WithNewBrowserContext(), chromedp.WithListener(listener))
	t.Cleanup(cancel)
	tb.ctx = ctx
	// The tab lives as long as the context of its first call: no timeout
	// on that one.
	opened := make(chan error, 1)
	go func() { opened <- chromedp.Do(ctx) }()
	select {
	case err := <-opened:
		if err != nil {
			t.Fatalf("opening a tab: %v", err)
		}
	case <-time.After(actionTimeout):
		t.Fatalf("opening a tab: no answer in %v", actionTimeout)
	}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-dialogs:
				_, _ = chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: false})
			}
		}
	}()
	// Record CSP violations from the very start of every document (scripts
	// added over DevTools are not subject to the page's CSP).
	tb.do(chromedp.Func(func(ctx context.Context, target *chromedp.Target) error {
		_, err := chromedp.Call(ctx, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: `window.__csp = [];
document.addEventListener('securitypolicyviolation', (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));`})
		return err
	}))
	t.Cleanup(func() {
		tb.mu.Lock()
		defer tb.mu.Unlock()
		if len(*tb.errs) > 0 {
			t.Errorf("JavaScript exceptions in the page:\n%s", strings.Join(*tb.errs, "\n"))
		}
	})
	return tb
}

// sub is the same tab for a subtest (failures go to st); it saves a
// screenshot when the subtest ends, passed or failed.
func (tb *tab) sub(st *testing.T) *tab {
	c := *tb
	c.t = st
	st.Cleanup(func() { c.screenshot(st.Name()) })
	return &c
}

// do runs actions with a deadline.
func (tb *tab) do(actions ...chromedp.Action[chromedp.Void]) {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, actionTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		tb.t.Fatalf("browser: %v", err)
	}
}

// eval evaluates a JavaScript expression.
func eval[T any](tb *tab, expr string) T {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, actionTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		tb.t.Fatalf("evaluating %s: %v", expr, err)
	}
	return v
}

// js quotes s as a JavaScript string literal.
func js(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// waitFor polls a JavaScript expression until it is truthy.
func (tb *tab) waitFor(what, expr string) {
	tb.t.Helper()
	deadline := time.Now().Add(actionTimeout)
	for {
		ctx, cancel := context.WithTimeout(tb.ctx, 5*time.Second)
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool]("!!("+expr+")"))
		cancel()
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			tb.t.Fatalf("timed out waiting for %s\n  expression: %s\n  last error: %v\n  page text: %.1500s", what, expr, err, tb.text("body"))
		}
		time.Sleep(40 * time.Millisecond)
	}
}

// text returns the textContent of the first element matching sel.
func (tb *tab) text(sel string) string {
	ctx, cancel := context.WithTimeout(tb.ctx, 5*time.Second)
	defer cancel()
	s, _ := chromedp.Run(ctx, chromedp.Evaluate[string](fmt.Sprintf("(document.querySelector(%s)?.innerText ?? '')", js(sel))))
	return s
}

func (tb *tab) click(sel string) {
	tb.t.Helper()
	tb.do(chromedp.Click(chromedp.CSS(sel), chromedp.NodeVisible))
}

// fill replaces an input's value by typing.
func (tb *tab) fill(sel, value string) {
	tb.t.Helper()
	tb.do(chromedp.WaitVisible(chromedp.CSS(sel)))
	if !eval[bool](tb, fmt.Sprintf(`(() => { const e = document.querySelector(%s); if (!e) return false; e.value = ''; e.focus(); return true; })()`, js(sel))) {
		tb.t.Fatalf("no field %s", sel)
	}
	tb.do(chromedp.SendKeys(chromedp.CSS(sel), value))
	if got := eval[string](tb, fmt.Sprintf(`document.querySelector(%s).value`, js(sel))); got != value {
		tb.t.Fatalf("field %s = %q after typing %q", sel, got, value)
	}
}

// choose sets a <select> and fires its change event.
func (tb *tab) choose(sel, value string) {
	tb.t.Helper()
	ok := eval[bool](tb, fmt.Sprintf(`(() => { const s = document.querySelector(%s); s.value = %s;
s.dispatchEvent(new Event('change', {bubbles: true})); return s.value === %s; })()`, js(sel), js(value), js(value)))
	if !ok {
		tb.t.Fatalf("select %s has no option %q", sel, value)
	}
}

func (tb *tab) open(path string) {
	tb.t.Helper()
	tb.do(chromedp.Navigate(tb.srv.BaseURL + path))
}

// signIn signs in with token from the sign-in screen.
func (tb *tab) signIn(token string) {
	tb.t.Helper()
	tb.waitFor("the sign-in form", `document.body.dataset.view === 'signin' && !document.querySelector('#signin').hidden`)
	tb.fill("#signin-token", token)
	tb.click("#signin-submit")
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// screenshot saves the page under test-artifacts/ui/.
func (tb *tab) screenshot(name string) {
	ctx, cancel := context.WithTimeout(tb.ctx, 10*time.Second)
	defer cancel()
	buf, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		tb.t.Logf("screenshot %s: %v", name, err)
		return
	}
	file := filepath.Join(artifactDir(tb.t), unsafeName.ReplaceAllString(name, "_")+".png")
	if err := os.WriteFile(file, buf, 0o644); err != nil {
		tb.t.Logf("screenshot: %v", err)
		return
	}
	tb.t.Logf("screenshot: %s", file)
}

// repoRoot is the module root (the folder holding go.mod).
func repoRoot(t testing.TB) string {
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the test's folder")
		}
		dir = parent
	}
}

func artifactDir(t testing.TB) string {
	dir := filepath.Join(repoRoot(t), "test-artifacts", "ui")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// rest calls the REST gateway with token ("" for none) and decodes the
// JSON answer.
func rest(t testing.TB, srv *testserver.Server, token, method, path string, body any) (int, map[string]any) {
	t.Helper()
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, srv.BaseURL+path, r)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := (&http.Client{Timeout: 20 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	out := map[string]any{}
	_ = json.Unmarshal(raw, &out)
	return res.StatusCode, out
}

// mustREST is rest as the admin, failing the test on a non-200 answer.
func mustREST(t testing.TB, srv *testserver.Server, method, path string, body any) map[string]any {
	t.Helper()
	code, out := rest(t, srv, srv.AdminToken, method, path, body)
	if code != http.StatusOK {
		t.Fatalf("%s %s: HTTP %d: %v", method, path, code, out)
	}
	return out
}
