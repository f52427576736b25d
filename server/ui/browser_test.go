package ui_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/fetch"
	"github.com/chromedp/chromedp"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testdb"
	"github.com/orient-bot/secrets/internal/testserver"
)

func TestMain(m *testing.M) {
	// Start the browser while the first test database is being made.
	if path := findChromium(); path != "" {
		go browserOnce.Do(func() { startBrowser(path) })
	}
	code := testdb.Main(m)
	browserOnce.Do(func() {}) // waits for a start still in progress
	browserCancel()
	os.Exit(code)
}

// docsScreenshotEnv, when set, makes TestDashboard also write the Secrets
// tab's screenshot to docs/secrets-tab.png (committed, for the README).
const docsScreenshotEnv = "UPDATE_DOCS_SCREENSHOT"

const (
	apiKey      = "E2E_DASH_API_KEY"
	apiValue    = "sk_live_dashboard_value_4f2a"
	apiValue2   = "sk_live_second_value_91bc"
	apiCategory = "payments"
	xssKey      = "E2E_XSS_PROBE"
	xssDesc     = `<img src=x onerror=alert(1)>`
	slackGood   = "xoxb-1111-2222-dashboardtest"
	slackBad    = "not-a-slack-token"
)

// row is the selector of a secret's row in the Secrets tab.
func row(key string) string { return fmt.Sprintf(`#secrets-list tr[data-key=%q]`, key) }

// qs is document.querySelector(sel) in JavaScript.
func qs(sel string) string { return "document.querySelector(" + js(sel) + ")" }

// TestDashboard walks through the dashboard as an admin, in one tab against
// one server: each step is a subtest with its own screenshot, and the last
// one finds all the earlier steps in the audit log.
func TestDashboard(t *testing.T) {
	t.Parallel()
	needBrowser(t)
	srv := testserver.Start(t, testserver.Options{})
	tb := newTab(t, srv)
	defer func() {
		csp := eval[[]string](tb, `window.__csp || []`)
		if len(csp) > 0 {
			t.Errorf("Content-Security-Policy violations: %v", csp)
		}
	}()
	start := time.Now()
	// The steps build on each other: stop at the first failure.
	failed := false
	step := func(name string, f func(*testing.T)) {
		if failed {
			return
		}
		failed = !t.Run(name, f)
	}

	step("SignInAddReveal", func(st *testing.T) {
		p := tb.sub(st)
		p.open("/ui/")
		p.signIn(srv.AdminToken)
		p.waitFor("the Secrets tab", `!document.querySelector('#tab-secrets').hidden && document.querySelector('#secrets-list section')`)

		// The token is in sessionStorage only: not in localStorage, a
		// cookie or the URL.
		type storage struct {
			Session string `json:"session"`
			Local   int    `json:"local"`
			Cookie  string `json:"cookie"`
			URL     string `json:"url"`
			Named   int    `json:"named"`
		}
		stored := eval[storage](p, `({session: sessionStorage.getItem('orientSecrets.token'), local: localStorage.length, cookie: document.cookie,
			url: location.href, named: document.querySelectorAll('input[name]').length})`)
		if stored.Session != srv.AdminToken || stored.Local != 0 || stored.Cookie != "" || strings.Contains(stored.URL, srv.AdminToken) || stored.Named != 0 {
			st.Errorf("token storage: %+v", stored)
		}

		p.fill("#sf-key", apiKey)
		p.fill("#sf-category", apiCategory)
		p.fill("#sf-description", "Payments API key used by the dashboard test")
		p.fill("#sf-value", apiValue)
		attrs := eval[[]string](p, `[document.querySelector('#sf-value').type, document.querySelector('#sf-value').autocomplete]`)
		if !slices.Equal(attrs, []string{"password", "off"}) {
			st.Errorf("value field: type, autocomplete = %v; want masked, autocomplete off", attrs)
		}
		p.click("#secret-form-save")

		sel := fmt.Sprintf(`#secrets-list section[data-category=%q] tr[data-key=%q]`, apiCategory, apiKey)
		p.waitFor("the new secret in its category", qs(sel))
		if got := p.text(sel + " td.col-narrow"); got != "v1" {
			st.Errorf("version cell = %q, want v1", got)
		}
		if got := p.text(sel + " td.col-updated"); !strings.Contains(got, "by admin") {
			st.Errorf("updated cell = %q, want it to name the actor", got)
		}
		if body := p.text("body"); strings.Contains(body, apiValue) {
			st.Errorf("the value is on the page before it was revealed")
		}
		if v := p.text("#secret-form-status"); !strings.Contains(v, "version 1") {
			st.Errorf("form status = %q", v)
		}

		p.click(sel + ` button[data-action="reveal"]`)
		p.waitFor("the revealed value", fmt.Sprintf(`%s?.textContent === %s`, qs(fmt.Sprintf(`pre[data-value=%q]`, apiKey)), js(apiValue)))
	})

	step("EmptySlotWrongShape", func(st *testing.T) {
		p := tb.sub(st)
		slot := `#secrets-list section[data-category="slack"] tr[data-key="SLACK_BOT_TOKEN"]`
		p.waitFor("the SLACK_BOT_TOKEN empty slot", qs(slot))
		text := p.text(slot)
		for _, want := range []string{"Empty slot", "Slack bot token", "Expected shape: starts with xoxb-"} {
			if !strings.Contains(text, want) {
				st.Errorf("empty slot row %q lacks %q", text, want)
			}
		}
		p.click(slot + ` button[data-action="set"]`)
		p.waitFor("the form set to the slot", `document.querySelector('#sf-key').value === 'SLACK_BOT_TOKEN' && document.querySelector('#sf-key').readOnly`)
		p.fill("#sf-value", slackBad)
		p.click("#secret-form-save")
		// The API's message, next to the value field.
		p.waitFor("the API's field error next to the value field",
			`document.querySelector('#sf-value').closest('.field').querySelector('[data-error-for="value"]:not([hidden])')?.textContent === 'SLACK_BOT_TOKEN must start with xoxb-'`)
		invalid := eval[string](p, `document.querySelector('#sf-value').getAttribute('aria-invalid') || ''`)
		if invalid != "true" {
			st.Errorf("value field aria-invalid = %q", invalid)
		}
		// The API's error is tied to the field, which takes the focus.
		if a := p.ax("#sf-value"); !strings.Contains(a.Description, "SLACK_BOT_TOKEN must start with xoxb-") {
			st.Errorf("value field's description = %q, want the API's error", a.Description)
		}
		if id := eval[string](p, `document.activeElement.id`); id != "sf-value" {
			st.Errorf("focus after the API's field error on %q, want sf-value", id)
		}
	})

	step("RestartBanner", func(st *testing.T) {
		p := tb.sub(st)
		// A consumer of every key, up to date with the current revision.
		rev := mustREST(st, srv, "GET", "/v1/consumers", nil)["revision"]
		mustREST(st, srv, "POST", "/v1/consumers:report", map[string]any{
			"consumer": map[string]any{"service": "orient-slack-bot", "instance": "pod-1"}, "loadedRevision": rev})
		p.waitFor("the change stream", `document.querySelector('#live-status').dataset.state === 'live'`)
		if !p.bannerHidden() {
			st.Fatalf("banner shown before any change: %q", p.text("#restart-banner"))
		}

		// Change a restart-required secret through the form (still set to
		// SLACK_BOT_TOKEN from the previous step).
		p.fill("#sf-value", slackGood)
		p.click("#secret-form-save")
		p.waitFor("SLACK_BOT_TOKEN configured", qs(`#secrets-list tr[data-key="SLACK_BOT_TOKEN"][data-configured="true"]`))
		p.waitFor("the restart banner", `!document.querySelector('#restart-banner').hidden &&
			document.querySelector('#restart-list li[data-service="orient-slack-bot"][data-instance="pod-1"]')?.textContent.includes('SLACK_BOT_TOKEN')`)
		p.screenshot(st.Name() + "-banner")
		if os.Getenv(docsScreenshotEnv) != "" {
			p.docsScreenshot()
		}

		// The service restarts and reports the new revision: the banner
		// clears (on the next periodic refresh).
		rev = mustREST(st, srv, "GET", "/v1/consumers", nil)["revision"]
		mustREST(st, srv, "POST", "/v1/consumers:report", map[string]any{
			"consumer": map[string]any{"service": "orient-slack-bot", "instance": "pod-1"}, "loadedRevision": rev})
		p.waitFor("the banner to clear", `document.querySelector('#restart-banner').hidden`)
	})

	step("ProviderDefaultPersists", func(st *testing.T) {
		p := tb.sub(st)
		p.click(`.nav-item[data-tab="providers"]`)
		p.waitFor("three provider cards", `document.querySelectorAll('#providers-list section.provider').length === 3 && document.querySelector('form[data-use-case="chat"]')`)
		for _, prov := range []string{"anthropic", "openai", "google"} {
			if got := p.text(fmt.Sprintf(`section.provider[data-provider=%q]`, prov)); !strings.Contains(got, "Not set") {
				st.Errorf("provider %s card = %q, want a Not set badge", prov, got)
			}
		}
		p.choose(`#default-chat-provider`, "google")
		p.fill(`#default-chat-model`, "gemini-2.5-pro")
		p.click(`form[data-use-case="chat"] button[type="submit"]`)
		p.waitFor("the saved default", `document.querySelector('form[data-use-case="chat"] .status').textContent === 'Saved'`)

		p.do(chromedp.Reload())
		p.waitFor("the Providers tab after reload (still signed in)", `document.body.dataset.view === 'shell' && document.querySelector('#default-chat-provider')`)
		got := eval[[]string](p, `[document.querySelector('#default-chat-provider').value, document.querySelector('#default-chat-model').value,
			document.querySelector('form[data-use-case="chat"] .meta').textContent]`)
		if got[0] != "google" || got[1] != "gemini-2.5-pro" || !strings.Contains(got[2], "Set by admin") {
			st.Errorf("chat default after reload = %q", got)
		}
		d := mustREST(st, srv, "GET", "/v1/providers/defaults", nil)
		if !strings.Contains(fmt.Sprint(d["defaults"]), "useCase:chat") || !strings.Contains(fmt.Sprint(d["defaults"]), "model:gemini-2.5-pro") {
			st.Errorf("API defaults = %v", d["defaults"])
		}
	})

	step("DescriptionIsText", func(st *testing.T) {
		p := tb.sub(st)
		p.click(`.nav-item[data-tab="secrets"]`)
		p.waitFor("the Secrets tab", `!document.querySelector('#tab-secrets').hidden && document.querySelector('#secrets-list section')`)
		p.fill("#sf-key", xssKey)
		p.fill("#sf-description", xssDesc)
		p.fill("#sf-value", "harmless")
		p.click("#secret-form-save")
		p.waitFor("the probe's row", qs(row(xssKey)))
		// Deterministic instead of a sleep: an injected <img onerror> can only
		// run once its image has failed to load. Wait until every image in the
		// page has fired load or error, then one more task, so any handler
		// that was going to run has run (an alert() it opened is counted by
		// the tab's listener before this evaluation can finish).
		evalAwait[bool](p, `Promise.all([...document.images].map((i) => i.complete ? null :
			new Promise((r) => { i.addEventListener('load', r, {once: true}); i.addEventListener('error', r, {once: true}); })))
			.then(() => new Promise((r) => setTimeout(() => r(true), 0)))`)
		type rendered struct {
			Desc   string `json:"desc"`
			Images int    `json:"images"`
		}
		res := eval[rendered](p, fmt.Sprintf(`({desc: %s.textContent, images: document.querySelectorAll('#secrets-list img, #tab-secrets img').length})`,
			qs(row(xssKey)+" .desc-text")))
		if res.Desc != xssDesc || res.Images != 0 {
			st.Errorf("description rendered as %+v, want the literal text and no <img>", res)
		}
		if n := p.dialogs.Load(); n != 0 {
			st.Errorf("%d JavaScript dialog(s) opened", n)
		}
	})

	step("EditMetadata", func(st *testing.T) {
		p := tb.sub(st)
		// No value: only the metadata changes (PATCH), no new version.
		p.click(row(apiKey) + ` button[data-action="edit"]`)
		p.waitFor("the edit form", `document.querySelector('#secret-form').dataset.mode === 'edit' && document.querySelector('#sf-key').readOnly`)
		if got := eval[string](p, `document.querySelector('#sf-description').value`); got != "Payments API key used by the dashboard test" {
			st.Errorf("edit form description = %q", got)
		}
		p.fill("#sf-description", "Payments API key (edited)")
		p.click("#sf-restart")
		p.click("#secret-form-save")
		p.waitFor("the new description", fmt.Sprintf(`%s?.textContent === 'Payments API key (edited)'`, qs(row(apiKey)+" .desc-text")))
		if got := p.text(row(apiKey) + " td.col-narrow"); got != "v1" {
			st.Errorf("version after a metadata edit = %q, want v1", got)
		}
		if got := p.text(row(apiKey)); !strings.Contains(got, "Restart on change") {
			st.Errorf("row after setting the restart flag = %q", got)
		}
		sec := mustREST(st, srv, "GET", "/v1/secrets/"+apiKey, nil)["secret"].(map[string]any)
		if sec["description"] != "Payments API key (edited)" || sec["restartRequired"] != true || sec["currentVersion"] != "1" {
			st.Errorf("secret after the edit = %v", sec)
		}
	})

	step("VersionHistory", func(st *testing.T) {
		p := tb.sub(st)
		// Edit: a new value becomes version 2.
		p.click(row(apiKey) + ` button[data-action="edit"]`)
		p.waitFor("the edit form", `document.querySelector('#secret-form').dataset.mode === 'edit'`)
		p.fill("#sf-value", apiValue2)
		p.click("#secret-form-save")
		p.waitFor("version 2", fmt.Sprintf(`%s?.textContent === 'v2'`, qs(row(apiKey)+" td.col-narrow")))

		p.click(row(apiKey) + ` button[data-action="versions"]`)
		dlg := `#versions-dialog`
		p.waitFor("two versions", `document.querySelector('#versions-dialog').open && document.querySelectorAll('#versions-rows tr[data-version]').length === 2`)
		// Restore version 1 as version 3.
		p.click(dlg + ` tr[data-version="1"] button[data-action="restore"]`)
		p.confirm("Restore version 1")
		p.waitFor("version 3", `document.querySelectorAll('#versions-rows tr[data-version]').length === 3 && document.querySelector('#versions-rows tr').dataset.version === '3'`)
		// Disable, enable and destroy version 2.
		p.click(dlg + ` tr[data-version="2"] button[data-action="disable"]`)
		p.waitFor("v2 disabled", `document.querySelector('#versions-rows tr[data-version="2"]').dataset.state === 'VERSION_STATE_DISABLED'`)
		p.click(dlg + ` tr[data-version="2"] button[data-action="enable"]`)
		p.waitFor("v2 enabled", `document.querySelector('#versions-rows tr[data-version="2"]').dataset.state === 'VERSION_STATE_ENABLED'`)
		p.click(dlg + ` tr[data-version="2"] button[data-action="destroy"]`)
		p.confirm("Destroy version 2")
		p.waitFor("v2 destroyed", `document.querySelector('#versions-rows tr[data-version="2"]').dataset.state === 'VERSION_STATE_DESTROYED'`)
		p.screenshot(st.Name() + "-dialog")
		p.click("#versions-close")

		// The latest value is version 1's again.
		p.waitFor("v3 in the list", fmt.Sprintf(`%s?.textContent === 'v3'`, qs(row(apiKey)+" td.col-narrow")))
		p.click(row(apiKey) + ` button[data-action="reveal"]`)
		p.waitFor("the restored value", fmt.Sprintf(`%s?.textContent === %s`, qs(fmt.Sprintf(`pre[data-value=%q]`, apiKey)), js(apiValue)))
	})

	step("DeleteWithConfirmation", func(st *testing.T) {
		p := tb.sub(st)
		p.click(row(xssKey) + ` button[data-action="delete"]`)
		p.waitFor("the confirmation", `document.querySelector('#confirm-dialog').open`)
		if got := p.text("#confirm-title"); got != "Delete "+xssKey+"?" {
			st.Errorf("confirmation title = %q", got)
		}
		p.click("#confirm-cancel")
		p.waitFor("the dialog to close", `!document.querySelector('#confirm-dialog').open`)
		if st := mustREST(st, srv, "GET", "/v1/secrets/"+xssKey, nil); st["secret"] == nil {
			t.Errorf("cancelled delete deleted the secret")
		}
		p.click(row(xssKey) + ` button[data-action="delete"]`)
		p.confirm("Delete " + xssKey)
		p.waitFor("the row to go", `!`+qs(row(xssKey)))
		if code, _ := rest(st, srv, srv.AdminToken, "GET", "/v1/secrets/"+xssKey, nil); code != http.StatusNotFound {
			st.Errorf("GET after delete: HTTP %d, want 404", code)
		}
	})

	step("AuditLog", func(st *testing.T) {
		p := tb.sub(st)
		// The actor the server records for the admin token.
		ev := mustREST(st, srv, "GET", "/v1/audit/events?key="+apiKey+"&action=PutSecret&pageSize=1", nil)
		actor := fmt.Sprint(ev["events"].([]any)[0].(map[string]any)["actor"])
		if actor != "admin" {
			st.Errorf("audit actor of the admin token = %q, want admin", actor)
		}

		p.click(`.nav-item[data-tab="audit"]`)
		p.waitFor("audit events", `document.querySelectorAll('#audit-rows tr[data-sequence]').length > 0`)
		seqs := p.auditSequences()
		if !slices.IsSortedFunc(seqs, func(a, b int) int { return b - a }) {
			st.Errorf("events not newest first: %v", seqs)
		}

		// Each step above, found by filter, with the right actor.
		type want struct{ key, action string }
		for _, w := range []want{
			{apiKey, "PutSecret"},
			{apiKey, "UpdateSecret"},
			{apiKey, "AccessSecretVersion"},
			{apiKey, "DisableSecretVersion"},
			{apiKey, "EnableSecretVersion"},
			{apiKey, "DestroySecretVersion"},
			{"SLACK_BOT_TOKEN", "PutSecret"},
			{xssKey, "PutSecret"},
			{xssKey, "DeleteSecret"},
			{"", "UpdateProviderDefault"},
		} {
			p.filterAudit(w.key, "", w.action, "", "")
			rows := p.auditRows()
			if len(rows) == 0 {
				st.Errorf("no %s events for key %q", w.action, w.key)
				continue
			}
			ok := false
			for _, r := range rows {
				if r.Actor != actor || r.Action != w.action || r.Key != w.key {
					st.Errorf("filter key=%q action=%q: row %+v, want actor %q", w.key, w.action, r, actor)
				}
				ok = ok || r.Outcome == "OK"
			}
			if !ok {
				st.Errorf("no successful %s event for key %q: %+v", w.action, w.key, rows)
			}
		}
		// The refused value of the wrong shape is audited as a failure.
		p.filterAudit("SLACK_BOT_TOKEN", "", "PutSecret", "", "")
		var outcomes []string
		for _, r := range p.auditRows() {
			outcomes = append(outcomes, r.Outcome)
		}
		if !slices.Equal(outcomes, []string{"OK", "INVALID_ARGUMENT"}) {
			st.Errorf("SLACK_BOT_TOKEN PutSecret outcomes, newest first = %v, want [OK INVALID_ARGUMENT]", outcomes)
		}
		// Value reads: the first reveal (v1), the restore reading v1, the
		// second reveal (v3); newest first.
		p.filterAudit(apiKey, "", "AccessSecretVersion", "", "")
		var versions []string
		for _, r := range p.auditRows() {
			versions = append(versions, r.Version)
		}
		if !slices.Equal(versions, []string{"v3", "v1", "v1"}) {
			st.Errorf("%s reads: versions %v, want [v3 v1 v1]", apiKey, versions)
		}
		p.filterAudit("", actor, "", "", "")
		for _, r := range p.auditRows() {
			if r.Actor != actor {
				st.Errorf("actor filter: row %+v", r)
			}
		}
		// Time range: everything since the test started; nothing in the future.
		// The start is a whole minute, so the input's normalised form
		// (no seconds) is always exercised.
		p.filterAudit("", "", "", start.Add(-time.Minute).Truncate(time.Minute).Format("2006-01-02T15:04:05"), "")
		if len(p.auditRows()) == 0 {
			st.Errorf("no events since the test started")
		}
		p.filterAudit("", "", "", time.Now().Add(time.Hour).Format("2006-01-02T15:04:05"), "")
		if len(p.auditRows()) != 0 || !strings.Contains(p.text("#audit-rows"), "No events match") {
			st.Errorf("future start time: %q", p.text("#audit-rows"))
		}

		// Paging: 10 per page, "Older" then "Newer"; what is shown is said.
		p.filterAudit("", "", "", "", "")
		p.choose("#af-size", "10")
		p.click("#audit-apply")
		p.waitFor("page 1", `document.querySelectorAll('#audit-rows tr[data-sequence]').length === 10 && !document.querySelector('#audit-older').disabled`)
		first := p.auditSequences()
		// Older pressed twice before its page arrives: the second press is
		// ignored (both answers would be page 2, labelled page 3).
		p.do(chromedp.Evaluate[chromedp.Void](`(() => { const b = document.querySelector('#audit-older'); b.click(); b.click(); })()`))
		p.waitFor("page 2", `document.querySelector('#audit-page').textContent !== 'Page 1' && document.querySelector('#audit-rows tr[data-sequence]')`)
		evalAwait[bool](p, `new Promise((r) => setTimeout(() => r(true), 500))`) // any second answer has come
		if got := p.text("#audit-page"); got != "Page 2" {
			st.Errorf("after a double press of Older the pager says %q, want Page 2", got)
		}
		p.waitFor("page 2 announced", `(() => { const n = document.querySelectorAll('#audit-rows tr[data-sequence]').length;
			return document.querySelector('#announcer').textContent === 'Showing ' + n + (n === 1 ? ' event' : ' events') + ', page 2.'; })()`)
		second := p.auditSequences()
		if len(second) == 0 || second[0] >= first[len(first)-1] {
			st.Errorf("page 2 %v does not follow page 1 %v", second, first)
		}
		p.click("#audit-newer")
		p.waitFor("page 1 again", `document.querySelector('#audit-page').textContent === 'Page 1'`)
		p.waitFor("page 1 announced", `document.querySelector('#announcer').textContent === 'Showing 10 events, page 1.'`)
		if again := p.auditSequences(); !slices.Equal(again, first) {
			st.Errorf("page 1 again = %v, want %v", again, first)
		}

		// Never a value.
		p.filterAudit("", "", "", "", "")
		body := p.text("body")
		for _, v := range []string{apiValue, apiValue2, slackGood, slackBad, "harmless"} {
			if strings.Contains(body, v) {
				st.Errorf("the audit tab shows a value (%q)", v)
			}
		}
	})
}

func (tb *tab) bannerHidden() bool {
	return eval[bool](tb, `document.querySelector('#restart-banner').hidden`)
}

// confirm accepts the page's confirmation dialog, checking its title.
func (tb *tab) confirm(titlePrefix string) {
	tb.t.Helper()
	tb.waitFor("the confirmation dialog", `document.querySelector('#confirm-dialog').open`)
	if got := tb.text("#confirm-title"); !strings.HasPrefix(got, titlePrefix) {
		tb.t.Errorf("confirmation title = %q, want %q…", got, titlePrefix)
	}
	tb.click("#confirm-ok")
	tb.waitFor("the dialog to close", `!document.querySelector('#confirm-dialog').open`)
}

type auditRow struct {
	Seq                                  int
	Actor, Action, Key, Outcome, Version string
}

func (tb *tab) auditRows() []auditRow {
	tb.t.Helper()
	raw := eval[[][]string](tb, `[...document.querySelectorAll('#audit-rows tr[data-sequence]')].map((r) =>
		[r.dataset.sequence, r.querySelector('.actor').textContent, r.querySelector('.action').textContent,
		 r.querySelector('.key').textContent, r.querySelector('.outcome').textContent, r.querySelector('.version').textContent])`)
	out := make([]auditRow, 0, len(raw))
	for _, r := range raw {
		n, _ := strconv.Atoi(r[0])
		out = append(out, auditRow{Seq: n, Actor: r[1], Action: r[2], Key: r[3], Outcome: r[4], Version: r[5]})
	}
	return out
}

func (tb *tab) auditSequences() []int {
	var out []int
	for _, r := range tb.auditRows() {
		out = append(out, r.Seq)
	}
	return out
}

// filterAudit applies the audit filters and waits for the answer.
func (tb *tab) filterAudit(key, actor, action, from, until string) {
	tb.t.Helper()
	vals := map[string]string{"#af-key": key, "#af-actor": actor, "#af-action": action, "#af-start": from, "#af-end": until}
	b, _ := json.Marshal(vals)
	got := eval[map[string]string](tb, fmt.Sprintf(`(() => { const out = {};
		for (const [sel, v] of Object.entries(%s)) { const e = document.querySelector(sel); e.value = v; out[sel] = e.value; }
		document.querySelector('#audit-rows').replaceChildren();
		return out; })()`, b))
	if !maps.EqualFunc(got, vals, sameFieldValue) {
		tb.t.Fatalf("audit filter fields = %v, want %v", got, vals)
	}
	tb.click("#audit-apply")
	tb.waitFor("the filtered audit events", `document.querySelector('#audit-rows').children.length > 0 || document.querySelector('#audit-form-error').textContent`)
	if msg := tb.text("#audit-form-error"); msg != "" {
		tb.t.Fatalf("audit filter error: %s", msg)
	}
}

// sameFieldValue compares what an input holds with what was typed into it.
// A datetime-local input normalises its value: Chromium drops ":00"
// seconds, so "13:50:00" reads back as "13:50". Both must name the same
// instant; any other field must read back exactly.
func sameFieldValue(got, want string) bool {
	if got == want {
		return true
	}
	parse := func(v string) (time.Time, bool) {
		for _, layout := range []string{"2006-01-02T15:04:05", "2006-01-02T15:04"} {
			if t, err := time.Parse(layout, v); err == nil {
				return t, true
			}
		}
		return time.Time{}, false
	}
	g, okG := parse(got)
	w, okW := parse(want)
	return okG && okW && g.Equal(w)
}

// docsScreenshot writes the top of the Secrets tab (with the restart
// banner) to docs/secrets-tab.png.
func (tb *tab) docsScreenshot() {
	tb.t.Helper()
	tb.do(chromedp.EmulateViewport(1360, 1560), chromedp.Evaluate[chromedp.Void](`window.scrollTo(0, 0)`))
	ctx, cancel := context.WithTimeout(tb.ctx, 10*time.Second)
	defer cancel()
	buf, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		tb.t.Fatal(err)
	}
	tb.do(chromedp.ResetViewport())
	file := filepath.Join(repoRoot(tb.t), "docs", "secrets-tab.png")
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		tb.t.Fatal(err)
	}
	if err := os.WriteFile(file, buf, 0o644); err != nil {
		tb.t.Fatal(err)
	}
	tb.t.Logf("wrote %s", file)
}

// TestAuthErrors: a wrong token, and a token without the rights the
// dashboard needs, get "ensure you are authenticated as admin"; an expired
// session (401 later on) returns to the sign-in screen.
func TestAuthErrors(t *testing.T) {
	t.Parallel()
	needBrowser(t)
	srv := testserver.Start(t, testserver.Options{})
	tb := newTab(t, srv)

	t.Run("WrongToken", func(st *testing.T) {
		p := tb.sub(st)
		p.open("/ui/")
		p.signIn("osk_not-a-real-token-000000000000")
		p.waitFor("the 401 message", `document.querySelector('#signin-error').textContent.includes('ensure you are authenticated as admin')`)
		if got := p.text("#signin-error"); !strings.Contains(got, "401") {
			st.Errorf("sign-in error = %q, want it to say 401", got)
		}
		stored := eval[string](p, `sessionStorage.getItem('orientSecrets.token') || ''`)
		if stored != "" {
			st.Errorf("a refused token stayed in sessionStorage")
		}
	})

	t.Run("AuditorToken403", func(st *testing.T) {
		p := tb.sub(st)
		res, err := srv.Tokens.CreateToken(context.Background(), &pb.CreateTokenRequest{Name: "ui-auditor", Role: "auditor"})
		if err != nil {
			st.Fatal(err)
		}
		p.open("/ui/")
		p.signIn(res.GetToken())
		p.waitFor("the 403 message", `document.querySelector('#signin-error').textContent.includes('ensure you are authenticated as admin')`)
		if got := p.text("#signin-error"); !strings.Contains(got, "403") {
			st.Errorf("sign-in error = %q, want it to say 403", got)
		}
	})

	t.Run("ReaderToken403OnWrite", func(st *testing.T) {
		p := tb.sub(st)
		res, err := srv.Tokens.CreateToken(context.Background(), &pb.CreateTokenRequest{Name: "ui-reader", Role: "reader"})
		if err != nil {
			st.Fatal(err)
		}
		p.open("/ui/")
		p.signIn(res.GetToken())
		p.waitFor("the Secrets tab", `document.body.dataset.view === 'shell' && document.querySelector('#secrets-list section')`)
		p.fill("#sf-key", "E2E_READER_WRITE")
		p.fill("#sf-value", "value")
		p.click("#secret-form-save")
		p.waitFor("the 403 message", `document.querySelector('#secret-form-error').textContent.includes('ensure you are authenticated as admin')`)
		p.waitFor("the page-wide 403 message", `document.querySelector('#global-error').textContent.includes('ensure you are authenticated as admin')`)
	})

	t.Run("SessionExpires401", func(st *testing.T) {
		p := tb.sub(st)
		p.open("/ui/")
		p.do(chromedp.Evaluate[chromedp.Void](`sessionStorage.clear()`), chromedp.Reload())
		p.signIn(srv.AdminToken)
		p.waitFor("the Secrets tab", `document.body.dataset.view === 'shell' && document.querySelector('#secrets-list section')`)
		// From now on the server answers 401 to every API call (the token
		// was revoked, say): intercept the requests in the browser.
		paused := chromedp.Events(p.ctx, fetch.RequestPaused)
		if _, err := chromedp.Call(p.ctx, fetch.Enable, fetch.EnableParams{Patterns: []*fetch.RequestPattern{{URLPattern: "*/v1/*"}}}); err != nil {
			st.Fatal(err)
		}
		go func() {
			for e, err := range paused {
				if err != nil {
					return
				}
				_, _ = chromedp.Call(p.ctx, fetch.FulfillRequest, fetch.FulfillRequestParams{
					RequestID:       e.RequestID,
					ResponseCode:    http.StatusUnauthorized,
					ResponseHeaders: []*fetch.HeaderEntry{{Name: "Content-Type", Value: "application/json"}},
					Body:            []byte(`{"code":16,"message":"token revoked","details":[]}`),
				})
			}
		}()
		p.click("#secrets-refresh")
		p.waitFor("the sign-in screen with the 401 message", `document.body.dataset.view === 'signin' &&
			document.querySelector('#signin-error').textContent.includes('ensure you are authenticated as admin')`)
		stored := eval[string](p, `sessionStorage.getItem('orientSecrets.token') || ''`)
		if stored != "" {
			st.Errorf("token kept after a 401")
		}
		if _, err := chromedp.Call(p.ctx, fetch.Disable, cdp.Empty{}); err != nil {
			st.Error(err)
		}
	})

	t.Run("SessionExpiresWithDialogOpen", func(st *testing.T) {
		p := tb.sub(st)
		const key = "E2E_AUTH_DIALOG"
		putSecret(st, srv, key, "v", nil)
		p.signIn(srv.AdminToken)
		p.waitFor("the Secrets tab", qs(row(key)))
		p.click(row(key) + ` button[data-action="versions"]`)
		p.waitFor("the versions", `document.querySelector('#versions-rows tr[data-version="1"] [data-action="disable"]')`)
		release := answer401(st, p)
		p.click(`#versions-rows tr[data-version="1"] [data-action="disable"]`)
		p.waitFor("the sign-in screen", `document.body.dataset.view === 'signin'`)
		release()
		// No dialog left over the sign-in form (which it would make
		// inert), nothing of it kept, and the focus in the token field.
		type state struct {
			Open  []string
			Title string
			Rows  int
			Focus string
		}
		got := eval[state](p, `({Open: [...document.querySelectorAll('dialog[open]')].map((d) => d.id), Title: document.querySelector('#versions-title').textContent,
			Rows: document.querySelectorAll('#versions-rows tr').length, Focus: document.activeElement.id})`)
		if len(got.Open) != 0 || got.Title != "Versions" || got.Rows != 0 || got.Focus != "signin-token" {
			st.Errorf("after a 401 with the versions dialog open: %+v; want no dialog open, emptied, the focus on signin-token", got)
		}
		p.signIn(srv.AdminToken)
		p.waitFor("the Secrets tab again", `document.body.dataset.view === 'shell' && `+qs(row(key)))
		p.click("#signout")
		p.waitFor("signed out", `document.body.dataset.view === 'signin'`)
	})

	t.Run("TokenWithInvalidCharacters", func(st *testing.T) {
		p := tb.sub(st)
		// A curly quote pasted with the token: a header cannot hold it.
		p.open("/ui/")
		p.do(chromedp.Evaluate[chromedp.Void](`sessionStorage.clear()`), chromedp.Reload())
		p.waitFor("the sign-in form", `document.body.dataset.view === 'signin' && !document.querySelector('#signin').hidden && document.querySelector('#signin-error').hidden`)
		p.do(chromedp.Evaluate[chromedp.Void](`document.querySelector('#signin-token').value = 'osk_abc\u2019def'`))
		p.click("#signin-submit")
		p.waitFor("the sign-in error", `!document.querySelector('#signin-error').hidden`)
		if got := p.text("#signin-error"); !strings.Contains(got, "invalid characters") {
			st.Errorf("sign-in error for a token with U+2019 = %q, want it to say the token has invalid characters", got)
		}
		if id := eval[string](p, `document.activeElement.id`); id != "signin-token" {
			st.Errorf("focus on %q, want signin-token", id)
		}
	})
}

// answer401 answers every API call of the tab with 401 (a revoked token)
// until the returned function is called.
func answer401(t *testing.T, p *tab) func() {
	t.Helper()
	paused := chromedp.Events(p.ctx, fetch.RequestPaused)
	if _, err := chromedp.Call(p.ctx, fetch.Enable, fetch.EnableParams{Patterns: []*fetch.RequestPattern{{URLPattern: "*/v1/*"}}}); err != nil {
		t.Fatal(err)
	}
	go func() {
		for e, err := range paused {
			if err != nil {
				return
			}
			_, _ = chromedp.Call(p.ctx, fetch.FulfillRequest, fetch.FulfillRequestParams{
				RequestID:       e.RequestID,
				ResponseCode:    http.StatusUnauthorized,
				ResponseHeaders: []*fetch.HeaderEntry{{Name: "Content-Type", Value: "application/json"}},
				Body:            []byte(`{"code":16,"message":"token revoked","details":[]}`),
			})
		}
	}()
	return func() {
		if _, err := chromedp.Call(p.ctx, fetch.Disable, cdp.Empty{}); err != nil {
			t.Error(err)
		}
	}
}

// holdRequests holds the tab's requests whose URL matches pattern (a
// DevTools pattern, * for any text) until release is called with their id;
// next waits for the next one held.
func holdRequests(t *testing.T, p *tab, pattern string) (next func() fetch.RequestID, release func(fetch.RequestID)) {
	t.Helper()
	ids := make(chan fetch.RequestID, 16)
	paused := chromedp.Events(p.ctx, fetch.RequestPaused)
	if _, err := chromedp.Call(p.ctx, fetch.Enable, fetch.EnableParams{Patterns: []*fetch.RequestPattern{{URLPattern: pattern}}}); err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(p.ctx)
	go func() {
		for e, err := range paused {
			if err != nil || ctx.Err() != nil {
				return
			}
			select {
			case ids <- e.RequestID:
			case <-ctx.Done():
				return
			}
		}
	}()
	t.Cleanup(func() {
		stop()
		_, _ = chromedp.Call(p.ctx, fetch.Disable, cdp.Empty{})
	})
	next = func() fetch.RequestID {
		t.Helper()
		select {
		case id := <-ids:
			return id
		case <-time.After(actionTimeout):
			t.Fatalf("no request to %s in %v", pattern, actionTimeout)
			return ""
		}
	}
	return next, func(id fetch.RequestID) {
		if _, err := chromedp.Call(p.ctx, fetch.ContinueRequest, fetch.ContinueRequestParams{RequestID: id}); err != nil {
			t.Errorf("releasing a held request: %v", err)
		}
	}
}

// answered waits until n requests whose URL holds part have been answered,
// and the page's scripts have run on the answer.
func (tb *tab) answered(part string, n int) {
	tb.t.Helper()
	tb.waitFor(fmt.Sprintf("%d answers to %s", n, part), fmt.Sprintf(`performance.getEntriesByType('resource').filter((e) => e.name.includes(%s) && e.responseEnd > 0).length >= %d`, js(part), n))
	evalAwait[bool](tb, `new Promise((r) => setTimeout(() => r(true), 100))`)
}

// TestRequestsInFlight: a second press of Reveal while its value is on the
// way reads it once (one audited read); a value answered after a sign-out
// is never shown, to the next person to sign in least of all; nor one
// answered after the tab was left.
func TestRequestsInFlight(t *testing.T) {
	t.Parallel()
	needBrowser(t)
	srv := testserver.Start(t, testserver.Options{})
	const key, value = "E2E_INFLIGHT_KEY", "inflight-admin-only-value"
	putSecret(t, srv, key, value, map[string]any{"category": "payments"})
	tb := newTab(t, srv)
	tb.viewport(1280, 900)
	tb.open("/ui/")
	tb.signIn(srv.AdminToken)
	tb.waitFor("the row", qs(row(key)))
	valueShown := fmt.Sprintf(`document.body.textContent.includes(%s)`, js(value))
	reads := func(st *testing.T) int {
		out := mustREST(st, srv, "GET", "/v1/audit/events?action=AccessSecretVersion&key="+key, nil)
		evs, _ := out["events"].([]any)
		return len(evs)
	}

	t.Run("DoubleReveal", func(st *testing.T) {
		p := tb.sub(st)
		p.do(chromedp.Evaluate[chromedp.Void](`(() => { const b = ` + qs(row(key)+` [data-action="reveal"]`) + `; b.click(); b.click(); })()`))
		p.waitFor("the value", fmt.Sprintf(`%s?.textContent === %s`, qs(fmt.Sprintf(`pre[data-value=%q]`, key)), js(value)))
		p.answered(":access", 1)
		evalAwait[bool](p, `new Promise((r) => setTimeout(() => r(true), 400))`) // a second read would have come
		if n := reads(st); n != 1 {
			st.Errorf("a double press of Reveal read the value %d times, want once", n)
		}
		if got := p.ax(row(key) + ` [data-action="reveal"]`).Name; got != "Hide "+key {
			st.Errorf("toggle after a double press of Reveal: %q, want Hide %s", got, key)
		}
		p.click(row(key) + ` [data-action="reveal"]`)
		p.waitFor("the value hidden", `!`+valueShown)
	})

	t.Run("RevealThenLeaveTab", func(st *testing.T) {
		p := tb.sub(st)
		before := eval[int](p, `performance.getEntriesByType('resource').filter((e) => e.name.includes(':access')).length`)
		held, release := holdRequests(st, p, "*:access*")
		p.click(row(key) + ` [data-action="reveal"]`)
		id := held()
		p.click(`.nav-item[data-tab="audit"]`)
		p.waitFor("the Audit tab", `!document.querySelector('#tab-audit').hidden`)
		release(id)
		p.answered(":access", before+1)
		if eval[bool](p, valueShown) {
			st.Error("a value answered after the tab was left is in the page")
		}
		p.click(`.nav-item[data-tab="secrets"]`)
		p.waitFor("the row", qs(row(key)))
		evalAwait[bool](p, `new Promise((r) => setTimeout(() => r(true), 300))`)
		if eval[bool](p, valueShown) {
			st.Error("back on the Secrets tab, a value answered after it was left is shown")
		}
	})

	t.Run("RevealThenSignOut", func(st *testing.T) {
		p := tb.sub(st)
		if eval[bool](p, qs(row(key)+` [data-action="reveal"]`)+`.getAttribute('aria-expanded') === 'true'`) {
			p.click(row(key) + ` [data-action="reveal"]`) // hide what the step before left shown
			p.waitFor("the value hidden", `!`+valueShown)
		}
		before := eval[int](p, `performance.getEntriesByType('resource').filter((e) => e.name.includes(':access')).length`)
		held, release := holdRequests(st, p, "*:access*")
		p.click(row(key) + ` [data-action="reveal"]`)
		id := held()
		p.click("#signout")
		p.waitFor("signed out", `document.body.dataset.view === 'signin'`)
		release(id)
		p.answered(":access", before+1)
		if eval[bool](p, valueShown) {
			st.Error("a value answered after sign-out is in the page")
		}
		res, err := srv.Tokens.CreateToken(context.Background(), &pb.CreateTokenRequest{Name: "ui-inflight-reader", Role: "reader"})
		if err != nil {
			st.Fatal(err)
		}
		p.signIn(res.GetToken())
		p.waitFor("the row", qs(row(key)))
		evalAwait[bool](p, `new Promise((r) => setTimeout(() => r(true), 300))`)
		if eval[bool](p, valueShown) {
			st.Error("the next person to sign in sees the value the previous one revealed")
		}
	})
}
