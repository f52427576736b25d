// Package providercheck asks a provider whether a stored credential works,
// with one harmless read-only call: list models (Anthropic, OpenAI, Google
// AI), auth.test (Slack), GET /user (GitHub), myself (JIRA). It owns which
// keys can be checked, where each is sent and how the answer is read.
//
// A credential is only ever sent to its own provider: each provider has one
// base URL (configurable for proxies and tests), JIRA's comes from the
// JIRA_BASE_URL secret and must be HTTPS on an allowed host, and redirects
// to another host (or scheme) are never followed. Calls time out quickly.
// Nothing here logs, returns or formats a credential.
package providercheck

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Result is a check's answer.
type Result string

// The four answers.
const (
	Valid                   Result = "valid"
	Invalid                 Result = "invalid"
	InsufficientPermissions Result = "insufficient_permissions"
	Unreachable             Result = "unreachable"
)

// Outcome is what a check found. Reason is short, fixed text or a
// provider's error code; never a credential.
type Outcome struct {
	Provider   string
	Result     Result
	HTTPStatus int
	Reason     string
}

// Provider ids.
const (
	Anthropic = "anthropic"
	OpenAI    = "openai"
	Google    = "google"
	Slack     = "slack"
	GitHub    = "github"
	JIRA      = "jira"
)

// DefaultBaseURLs are the providers' public API roots. JIRA has none: its
// site is the JIRA_BASE_URL secret.
var DefaultBaseURLs = map[string]string{
	Anthropic: "https://api.anthropic.com",
	OpenAI:    "https://api.openai.com",
	Google:    "https://generativelanguage.googleapis.com",
	Slack:     "https://slack.com",
	GitHub:    "https://api.github.com",
}

// plan says how a key is checked: by which provider, needing which other
// secrets.
type plan struct {
	provider string
	needs    []string
}

var plans = map[string]plan{
	"ANTHROPIC_API_KEY": {provider: Anthropic},
	"OPENAI_API_KEY":    {provider: OpenAI},
	"GOOGLE_AI_API_KEY": {provider: Google},
	"SLACK_BOT_TOKEN":   {provider: Slack},
	"SLACK_USER_TOKEN":  {provider: Slack},
	"GITHUB_TOKEN":      {provider: GitHub},
	"JIRA_API_TOKEN":    {provider: JIRA, needs: []string{"JIRA_EMAIL", "JIRA_BASE_URL"}},
}

// Keys lists the keys that can be checked, sorted.
func Keys() []string {
	keys := make([]string, 0, len(plans))
	for k := range plans {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// Plan returns the provider that checks key and the other secrets the
// check needs (JIRA_EMAIL and JIRA_BASE_URL for JIRA_API_TOKEN).
func Plan(key string) (provider string, needs []string, ok bool) {
	p, ok := plans[key]
	return p.provider, p.needs, ok
}

// Config configures a Checker.
type Config struct {
	// BaseURLs override DefaultBaseURLs by provider id (proxies, tests).
	BaseURLs map[string]string
	// JIRAHosts are the host names JIRA_BASE_URL may name; "*.example.com"
	// matches subdomains. Default: *.atlassian.net.
	JIRAHosts []string
	// Timeout bounds one check (default 5 s).
	Timeout time.Duration
	// TLS, if set, is the client TLS configuration (tests trust their own
	// CA with it).
	TLS *tls.Config
}

// Checker runs checks. It is safe for concurrent use.
type Checker struct {
	base      map[string]*url.URL
	jiraHosts []string
	client    *http.Client
	// inflight bounds concurrent checks: each may hold a connection for
	// the whole timeout.
	inflight chan struct{}
}

// MaxInFlight bounds the checks a server runs at once; more are answered
// "unreachable" at once.
const MaxInFlight = 16

// New validates cfg and returns a Checker.
func New(cfg Config) (*Checker, error) {
	c := &Checker{base: map[string]*url.URL{}, jiraHosts: cfg.JIRAHosts, inflight: make(chan struct{}, MaxInFlight)}
	if len(c.jiraHosts) == 0 {
		c.jiraHosts = []string{"*.atlassian.net"}
	}
	for id, raw := range DefaultBaseURLs {
		if o, ok := cfg.BaseURLs[id]; ok {
			raw = o
		}
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil || u.RawQuery != "" {
			return nil, fmt.Errorf("provider check base URL for %s: want http(s)://host[/path], got %q", id, raw)
		}
		u.Path = strings.TrimSuffix(u.Path, "/")
		c.base[id] = u
	}
	for id := range cfg.BaseURLs {
		if _, ok := DefaultBaseURLs[id]; !ok {
			return nil, fmt.Errorf("provider check base URL: unknown provider %q (want one of anthropic, openai, google, slack, github; JIRA's site is the JIRA_BASE_URL secret)", id)
		}
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = guardedDial(operatorHosts(cfg))
	tr.TLSClientConfig = cfg.TLS
	tr.ResponseHeaderTimeout = timeout
	tr.MaxIdleConnsPerHost = 2
	c.client = &http.Client{Transport: tr, Timeout: timeout, CheckRedirect: sameOrigin}
	return c, nil
}

// operatorHosts are the hosts the operator named: the overridden base URLs
// (--provider-check-urls), the exact (not wildcard) JIRA hosts and the
// environment's HTTP(S) proxy. Only these may resolve to an internal
// address.
func operatorHosts(cfg Config) map[string]bool {
	hosts := map[string]bool{}
	for _, raw := range cfg.BaseURLs {
		if u, err := url.Parse(raw); err == nil {
			hosts[strings.ToLower(u.Hostname())] = true
		}
	}
	for _, h := range cfg.JIRAHosts {
		if !strings.HasPrefix(h, "*.") {
			hosts[strings.ToLower(h)] = true
		}
	}
	for _, v := range []string{"HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"} {
		if u, err := url.Parse(os.Getenv(v)); err == nil && u.Hostname() != "" {
			hosts[strings.ToLower(u.Hostname())] = true
		}
	}
	return hosts
}

// guardedDial dials the operator's hosts as named, and any other host (a
// provider's public API, a JIRA site matched by a wildcard) only at a
// public address: the check is made on the address actually dialled,
// after DNS resolution, so neither a stored URL nor a DNS answer can aim
// a credential check at the loopback, link-local (cloud metadata), private
// or otherwise internal addresses.
func guardedDial(trusted map[string]bool) func(ctx context.Context, network, addr string) (net.Conn, error) {
	plain := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	guarded := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second, Control: refuseInternal}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, _, err := net.SplitHostPort(addr)
		if err == nil && trusted[strings.ToLower(host)] {
			return plain.DialContext(ctx, network, addr)
		}
		return guarded.DialContext(ctx, network, addr)
	}
}

// errInternalAddress refuses a dial to an address that is not public.
var errInternalAddress = errors.New("refusing to connect to an internal address")

// refuseInternal is a net.Dialer Control: it sees the resolved address.
func refuseInternal(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return errInternalAddress
	}
	ip := ap.Addr().Unmap()
	if ip.IsLoopback() || ip.IsPrivate() || ip.IsUnspecified() || ip.IsLinkLocalUnicast() ||
		ip.IsLinkLocalMulticast() || ip.IsInterfaceLocalMulticast() || ip.IsMulticast() ||
		cgnat.Contains(ip) {
		return errInternalAddress
	}
	return nil
}

// cgnat is the shared address space (RFC 6598), internal like the private
// ranges.
var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// sameOrigin follows a few redirects within the same scheme and host (the
// credential headers go along) and no others.
func sameOrigin(req *http.Request, via []*http.Request) error {
	first := via[0].URL
	if req.URL.Scheme != first.Scheme || req.URL.Host != first.Host {
		return http.ErrUseLastResponse
	}
	if len(via) >= 3 {
		return http.ErrUseLastResponse
	}
	return nil
}

// Check checks the credential of key; values holds it and the other
// secrets its plan needs. It never fails: problems are outcomes.
func (c *Checker) Check(ctx context.Context, key string, values map[string][]byte) Outcome {
	p, ok := plans[key]
	if !ok {
		return Outcome{Result: Invalid, Reason: "no check for this key"}
	}
	out := Outcome{Provider: p.provider}
	select {
	case c.inflight <- struct{}{}:
		defer func() { <-c.inflight }()
	default:
		out.Result, out.Reason = Unreachable, "too many checks in progress; retry"
		return out
	}
	cred := values[key]
	if !tokenLike(cred) {
		out.Result, out.Reason = Invalid, "not a well-formed credential (spaces or control characters)"
		return out
	}
	req, err := c.request(ctx, p.provider, key, cred, values)
	if err != nil {
		out.Result, out.Reason = Invalid, err.Error()
		return out
	}
	res, err := c.client.Do(req)
	if err != nil {
		out.Result, out.Reason = Unreachable, transportReason(err)
		return out
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(res.Body, 64<<10))
	out.HTTPStatus = res.StatusCode
	out.Result, out.Reason = classify(p.provider, res, body)
	return out
}

// request builds the provider's read-only call carrying the credential.
func (c *Checker) request(ctx context.Context, provider, key string, cred []byte, values map[string][]byte) (*http.Request, error) {
	var target *url.URL
	method, rel := http.MethodGet, ""
	switch provider {
	case Anthropic, OpenAI:
		rel = "/v1/models"
	case Google:
		rel = "/v1beta/models"
	case Slack:
		method, rel = http.MethodPost, "/api/auth.test"
	case GitHub:
		rel = "/user"
		if strings.HasPrefix(string(cred), "ghs_") { // an app installation token has no user
			rel = "/installation/repositories"
		}
	case JIRA:
		u, err := c.jiraSite(values["JIRA_BASE_URL"])
		if err != nil {
			return nil, err
		}
		if !tokenLike(values["JIRA_EMAIL"]) {
			return nil, errors.New("JIRA_EMAIL is not a well-formed email")
		}
		target, rel = u, "/rest/api/3/myself"
	}
	if target == nil {
		target = c.base[provider]
	}
	u := *target
	u.Path = path.Join("/", u.Path, rel)
	switch provider {
	case Anthropic, Google:
		u.RawQuery = "limit=1"
		if provider == Google {
			u.RawQuery = "pageSize=1"
		}
	case GitHub:
		if strings.HasSuffix(u.Path, "/repositories") {
			u.RawQuery = "per_page=1"
		}
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return nil, errors.New("could not build the request")
	}
	req.Header.Set("User-Agent", "orient-secrets-check/1")
	req.Header.Set("Accept", "application/json")
	switch provider {
	case Anthropic:
		req.Header.Set("x-api-key", string(cred))
		req.Header.Set("anthropic-version", "2023-06-01")
	case Google:
		req.Header.Set("x-goog-api-key", string(cred)) // a header, not the URL: URLs end up in logs
	case OpenAI, Slack, GitHub:
		req.Header.Set("Authorization", "Bearer "+string(cred))
		if provider == GitHub {
			req.Header.Set("Accept", "application/vnd.github+json")
			req.Header.Set("X-GitHub-Api-Version", "2022-11-28")
		}
	case JIRA:
		req.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(string(values["JIRA_EMAIL"])+":"+string(cred))))
	}
	return req, nil
}

// jiraSite parses JIRA_BASE_URL: HTTPS, an allowed host, no credentials or
// query in it.
func (c *Checker) jiraSite(raw []byte) (*url.URL, error) {
	u, err := url.Parse(strings.TrimSpace(string(raw)))
	if err != nil || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, errors.New("JIRA_BASE_URL is not a URL like https://example.atlassian.net")
	}
	if u.Scheme != "https" {
		return nil, errors.New("JIRA_BASE_URL must use https (the token is not sent in clear)")
	}
	host := strings.ToLower(u.Hostname())
	// An IP literal (or anything with an IPv6 zone or brackets: u.Hostname
	// keeps "%25.atlassian.net" of "[::1%25.atlassian.net]") is a site only
	// when the operator listed that very address.
	if strings.ContainsAny(host, "%:[]") {
		return nil, errors.New("JIRA_BASE_URL's host must be a DNS name (no IP address or zone)")
	}
	if _, err := netip.ParseAddr(host); err == nil && !slices.ContainsFunc(c.jiraHosts, func(h string) bool { return strings.EqualFold(h, host) }) {
		return nil, fmt.Errorf("JIRA_BASE_URL's host %s is not an allowed JIRA host (an IP address is allowed only when --provider-check-jira-hosts lists it)", host)
	}
	for _, pat := range c.jiraHosts {
		pat = strings.ToLower(pat)
		if suffix, ok := strings.CutPrefix(pat, "*."); ok && strings.HasSuffix(host, "."+suffix) || host == pat {
			u.Path = strings.TrimSuffix(u.Path, "/")
			return u, nil
		}
	}
	return nil, fmt.Errorf("JIRA_BASE_URL's host %s is not an allowed JIRA host (%s; see --provider-check-jira-hosts)", host, strings.Join(c.jiraHosts, ", "))
}

// tokenLike: 1 to 8 KiB of printable ASCII without spaces — anything else
// cannot be a header value, and is not sent.
func tokenLike(b []byte) bool {
	if len(b) == 0 || len(b) > 8<<10 {
		return false
	}
	for _, c := range b {
		if c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}

// classify reads a provider's answer.
func classify(provider string, res *http.Response, body []byte) (Result, string) {
	st := res.StatusCode
	switch {
	case st >= 300 && st < 400:
		return Unreachable, "redirect not followed (another host, or too many)"
	case st == http.StatusTooManyRequests:
		return Unreachable, "rate limited"
	case st >= 500:
		return Unreachable, "provider error " + strconv.Itoa(st)
	}
	if provider == Slack && st == http.StatusOK {
		return slackAnswer(body)
	}
	switch {
	case st >= 200 && st < 300:
		return Valid, "ok"
	case st == http.StatusUnauthorized:
		return Invalid, "unauthorized"
	case st == http.StatusForbidden:
		if provider == GitHub && res.Header.Get("X-RateLimit-Remaining") == "0" {
			return Unreachable, "rate limited"
		}
		if provider == Google && strings.Contains(string(body), "API_KEY_INVALID") {
			return Invalid, "API_KEY_INVALID"
		}
		return InsufficientPermissions, "forbidden"
	case st == http.StatusNotFound:
		return Unreachable, "not found (check the base URL)"
	case st == http.StatusBadRequest && provider == Google && strings.Contains(string(body), "API_KEY_INVALID"):
		return Invalid, "API_KEY_INVALID"
	}
	return Invalid, "HTTP " + strconv.Itoa(st)
}

// slackAnswer reads auth.test's {"ok": …, "error": "…"}.
func slackAnswer(body []byte) (Result, string) {
	var a struct {
		OK    bool   `json:"ok"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(body, &a); err != nil {
		return Unreachable, "unreadable answer"
	}
	if a.OK {
		return Valid, "ok"
	}
	code := errorCode(a.Error)
	switch code {
	case "missing_scope", "not_allowed_token_type", "no_permission", "ekm_access_denied":
		return InsufficientPermissions, code
	case "ratelimited", "fatal_error", "internal_error", "service_unavailable", "request_timeout":
		return Unreachable, code
	}
	return Invalid, code
}

// errorCode keeps a provider's error code only if it looks like one.
func errorCode(s string) string {
	if s == "" || len(s) > 64 {
		return "refused"
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.') {
			return "refused"
		}
	}
	return s
}

// transportReason names a failed call without its URL.
func transportReason(err error) string {
	var dnsErr *net.DNSError
	var certErr *tls.CertificateVerificationError
	var netErr net.Error
	switch {
	case errors.Is(err, errInternalAddress):
		return "internal address refused"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return "timeout"
	case errors.As(err, &dnsErr):
		return "host not found"
	case errors.As(err, &certErr):
		return "TLS certificate not trusted"
	case strings.Contains(err.Error(), "tls:"):
		return "TLS handshake failed"
	case strings.Contains(err.Error(), "connection refused"):
		return "connection refused"
	}
	return "connection failed"
}
