// Package ui serves the dashboard: plain HTML, CSS and JavaScript embedded in
// the binary and served under /ui/ on the HTTP listener. The dashboard talks
// only to the public REST gateway (/v1/...), with the bearer token the user
// signs in with; these files are public and hold nothing secret.
package ui

import (
	"bytes"
	"embed"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"time"
)

//go:embed static
var static embed.FS

// Prefix is the path the dashboard is served under.
const Prefix = "/ui/"

// ContentSecurityPolicy allows only this origin's own files: no inline script
// or style, no eval, no framing, no plugins, and fetch() only to the same
// origin (the REST gateway).
const ContentSecurityPolicy = "default-src 'self'; script-src 'self'; style-src 'self'; " +
	"img-src 'self'; connect-src 'self'; font-src 'self'; object-src 'none'; " +
	"base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

var contentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".svg":  "image/svg+xml",
	".png":  "image/png",
}

// startTime stands in for the files' modification time (embed.FS has none),
// so conditional requests work within one process.
var startTime = time.Now()

// Handler serves the embedded dashboard under Prefix: index.html for the
// prefix itself, the files by name, 404 for anything else (no directory
// listings), GET and HEAD only, every answer with the security headers.
// Its 404 and 405 are plain text; HandlerWith takes the server's writers.
func Handler() http.Handler {
	return HandlerWith(http.NotFound, func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	})
}

// HandlerWith is Handler answering 404 with notFound and 405 (after
// setting Allow) with notAllowed: the server passes its JSON error
// writers, so the dashboard's errors have the API's shape.
func HandlerWith(notFound, notAllowed func(http.ResponseWriter, *http.Request)) http.Handler {
	files, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embed pattern guarantees the folder
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		setSecurityHeaders(w.Header())
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			notAllowed(w, r)
			return
		}
		name, ok := strings.CutPrefix(r.URL.Path, Prefix)
		if !ok {
			notFound(w, r)
			return
		}
		if name == "" {
			name = "index.html"
		}
		ctype, known := contentTypes[path.Ext(name)]
		if !known || !fs.ValidPath(name) || strings.Contains(name, "/") {
			notFound(w, r)
			return
		}
		b, err := fs.ReadFile(files, name)
		if err != nil {
			notFound(w, r)
			return
		}
		w.Header().Set("Content-Type", ctype)
		// Revalidate on every load so a new binary's files are picked up.
		w.Header().Set("Cache-Control", "no-cache")
		http.ServeContent(w, r, name, startTime, bytes.NewReader(b))
	})
}

func setSecurityHeaders(h http.Header) {
	h.Set("Content-Security-Policy", ContentSecurityPolicy)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	h.Set("Permissions-Policy", "camera=(), microphone=(), geolocation=(), payment=()")
}
