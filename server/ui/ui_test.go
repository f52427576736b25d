package ui_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/orient-bot/secrets/internal/testserver"
	"github.com/orient-bot/secrets/server/ui"
)

// TestHandler: the files, their types, the security headers, and nothing
// else (no listings, no other methods).
func TestHandler(t *testing.T) {
	t.Parallel()
	h := ui.Handler()
	get := func(method, path string) *http.Response {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
		return rec.Result()
	}
	for path, ctype := range map[string]string{
		"/ui/":            "text/html; charset=utf-8",
		"/ui/index.html":  "text/html; charset=utf-8",
		"/ui/app.js":      "text/javascript; charset=utf-8",
		"/ui/api.js":      "text/javascript; charset=utf-8",
		"/ui/style.css":   "text/css; charset=utf-8",
		"/ui/favicon.svg": "image/svg+xml",
	} {
		res := get("GET", path)
		if res.StatusCode != 200 || res.Header.Get("Content-Type") != ctype {
			t.Errorf("GET %s: %d %q, want 200 %q", path, res.StatusCode, res.Header.Get("Content-Type"), ctype)
		}
		checkHeaders(t, path, res.Header)
	}
	for _, path := range []string{"/ui/nope.js", "/ui/static/app.js", "/ui/../ui.go", "/ui/ui.go", "/ui/.", "/ui/x/app.js"} {
		if res := get("GET", path); res.StatusCode != 404 {
			t.Errorf("GET %s: %d, want 404", path, res.StatusCode)
		}
	}
	if res := get("POST", "/ui/"); res.StatusCode != 405 {
		t.Errorf("POST /ui/: %d, want 405", res.StatusCode)
	}
}

func checkHeaders(t *testing.T, path string, h http.Header) {
	t.Helper()
	csp := h.Get("Content-Security-Policy")
	for _, d := range []string{"default-src 'self'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'", "object-src 'none'"} {
		if !strings.Contains(csp, d+";") && !strings.HasSuffix(csp, d) {
			t.Errorf("%s: CSP %q lacks %q", path, csp, d)
		}
	}
	if strings.Contains(csp, "unsafe-") || strings.Contains(csp, "data:") || strings.Contains(csp, "*") {
		t.Errorf("%s: CSP %q is not strict", path, csp)
	}
	if got := h.Get("X-Content-Type-Options"); got != "nosniff" {
		t.Errorf("%s: X-Content-Type-Options = %q", path, got)
	}
	if got := h.Get("X-Frame-Options"); got != "DENY" {
		t.Errorf("%s: X-Frame-Options = %q", path, got)
	}
}

// TestServedBySecretsd: secretsd serves the dashboard at /ui/ without a
// token, with the headers.
func TestServedBySecretsd(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{})
	for _, path := range []string{"/ui/", "/ui/app.js"} {
		res, err := http.Get(srv.BaseURL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || len(body) == 0 {
			t.Fatalf("GET %s: %d", path, res.StatusCode)
		}
		checkHeaders(t, path, res.Header)
	}
	res, err := http.Get(srv.BaseURL + "/ui")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.Request.URL.Path != "/ui/" || res.StatusCode != 200 {
		t.Errorf("GET /ui ended at %s with %d", res.Request.URL.Path, res.StatusCode)
	}
}

var (
	inlineScript  = regexp.MustCompile(`(?i)<script(?:\s[^>]*)?>`)
	inlineHandler = regexp.MustCompile(`(?i)\son[a-z]+\s*=`)
	styleAttr     = regexp.MustCompile(`(?i)\sstyle\s*=|<style`)
	remoteURL     = regexp.MustCompile(`(?i)(?:src|href)\s*=\s*"(?:https?:)?//`)
	htmlSinks     = regexp.MustCompile(`innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|setTimeout\(\s*['"]|\.style\.|localStorage`)
)

// TestStaticFilesAreCSPClean: no inline script or style, no handler
// attributes, nothing from another origin, and no HTML sinks or
// localStorage in the JavaScript. (The browser test checks the same at run
// time through CSP violation reports.)
func TestStaticFilesAreCSPClean(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("static/*")
	if err != nil || len(files) == 0 {
		t.Fatalf("static files: %v", err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		switch filepath.Ext(f) {
		case ".html":
			for _, tag := range inlineScript.FindAllString(s, -1) {
				if !strings.Contains(tag, "src=") {
					t.Errorf("%s: inline script %q", f, tag)
				}
			}
			for _, re := range []*regexp.Regexp{inlineHandler, styleAttr, remoteURL} {
				if m := re.FindString(s); m != "" {
					t.Errorf("%s: %q", f, m)
				}
			}
		case ".js":
			lines := strings.Split(s, "\n")
			for i, line := range lines {
				code, _, _ := strings.Cut(line, "//")
				if m := htmlSinks.FindString(code); m != "" && !strings.Contains(line, "case '") && !strings.Contains(line, "allowed") {
					t.Errorf("%s:%d: %q", f, i+1, m)
				}
			}
			if n := len(lines); n > 600 {
				t.Errorf("%s: %d lines; keep each file under 600", f, n)
			}
		}
	}
}
