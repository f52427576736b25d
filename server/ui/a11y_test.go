package ui_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/fetch"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	pb "github.com/orient-bot/secrets/gen/orient/secrets/v1"
	"github.com/orient-bot/secrets/internal/testserver"
)

const (
	a11yKey     = "E2E_A11Y_PAYMENTS_KEY"
	a11yRestart = "E2E_A11Y_RESTART_KEY"
	a11yService = "orient-a11y"
)

// putSecret writes a secret through the REST gateway as the admin.
func putSecret(t testing.TB, srv *testserver.Server, key, value string, meta map[string]any) map[string]any {
	t.Helper()
	body := map[string]any{"value": base64.StdEncoding.EncodeToString([]byte(value))}
	for k, v := range meta {
		body[k] = v
	}
	return mustREST(t, srv, "PUT", "/v1/secrets/"+key, body)
}

// reportConsumer tells the server a service now runs the current revision.
func reportConsumer(t testing.TB, srv *testserver.Server, service string) {
	t.Helper()
	rev := mustREST(t, srv, "GET", "/v1/consumers", nil)["revision"]
	mustREST(t, srv, "POST", "/v1/consumers:report", map[string]any{
		"consumer": map[string]any{"service": service, "instance": "pod-1"}, "loadedRevision": rev})
}

// a11yServer is a server with a configured secret of two versions, and a
// service that must restart to pick up a change (so the banner shows).
func a11yServer(t *testing.T) *testserver.Server {
	t.Helper()
	srv := testserver.Start(t, testserver.Options{})
	putSecret(t, srv, a11yKey, "first", map[string]any{"category": "payments", "description": "Payments gateway key, used by the checkout service"})
	putSecret(t, srv, a11yKey, "second", nil)
	putSecret(t, srv, a11yRestart, "one", map[string]any{"category": "payments", "restartRequired": true})
	reportConsumer(t, srv, a11yService)
	putSecret(t, srv, a11yRestart, "two", nil)
	return srv
}

// signedIn opens the dashboard in a new tab and signs in, waiting for the
// Secrets list and the restart banner.
func signedIn(t *testing.T, srv *testserver.Server, width, height int64) *tab {
	t.Helper()
	p := newTab(t, srv)
	p.viewport(width, height)
	p.open("/ui/")
	p.signIn(srv.AdminToken)
	p.waitFor("the Secrets list and the restart banner", qs(row(a11yKey))+` && !document.querySelector('#restart-banner').hidden`)
	return p
}

// TestAccessibility runs axe-core on every view of the dashboard, at a
// desktop and a phone width, and fails on any serious or critical
// violation; it also checks the controls' borders (WCAG 1.4.11, which axe
// does not), document titles, and (Layout) that tables fit at narrow
// widths.
func TestAccessibility(t *testing.T) {
	t.Parallel()
	needBrowser(t)
	src := axeSource(t)
	srv := a11yServer(t)

	for _, w := range []struct {
		name          string
		width, height int64
	}{{"Desktop1280", 1280, 900}, {"Phone375", 375, 812}} {
		t.Run(w.name, func(st *testing.T) {
			st.Parallel()
			p := newTab(st, srv).sub(st)
			p.viewport(w.width, w.height)
			title := func(want string) {
				if got := eval[string](p, `document.title`); got != want+" – Orient Secrets" {
					st.Errorf("title = %q, want %q", got, want+" – Orient Secrets")
				}
			}

			p.open("/ui/")
			p.waitFor("the sign-in form", `document.body.dataset.view === 'signin'`)
			title("Sign in")
			p.axe("signed out", src)
			p.checkControlBorders("signed out")

			p.signIn(srv.AdminToken)
			p.waitFor("the Secrets list and the restart banner", qs(row(a11yKey))+` && !document.querySelector('#restart-banner').hidden`)
			title("Secrets")
			// Every button of the list has a name of its own ("Edit KEY").
			dup := eval[[]string](p, `(() => { const seen = new Map();
				for (const b of document.querySelectorAll('#secrets-list button')) { const n = b.textContent.replace(/\s+/g, ' ').trim(); seen.set(n, (seen.get(n) || 0) + 1); }
				return [...seen].filter(([, c]) => c > 1).map(([n, c]) => n + ' ×' + c); })()`)
			if len(dup) > 0 {
				st.Errorf("buttons sharing a name in the Secrets list: %q", dup)
			}
			if n := p.ax(row("SLACK_BOT_TOKEN") + ` [data-action="set"]`).Name; n != "Set value SLACK_BOT_TOKEN" {
				st.Errorf("empty slot's button is named %q, want %q", n, "Set value SLACK_BOT_TOKEN")
			}
			p.axe("Secrets with the restart banner", src)
			p.checkControlBorders("Secrets")

			// The form with errors: nothing typed.
			p.click("#secret-form-save")
			p.waitFor("the key's error", `!document.querySelector('#sf-key-error').hidden`)
			p.axe("the form with an error", src)

			p.click(row(a11yKey) + ` button[data-action="versions"]`)
			p.waitFor("the versions", `document.querySelectorAll('#versions-rows tr[data-version]').length === 2`)
			p.axe("the versions dialog", src)
			p.checkLayout("the versions dialog")
			p.click("#versions-close")

			p.click(row(a11yKey) + ` button[data-action="delete"]`)
			p.waitFor("the confirmation", `document.querySelector('#confirm-dialog').open`)
			p.axe("the confirmation dialog", src)
			p.click("#confirm-cancel")

			p.click(`.nav-item[data-tab="providers"]`)
			p.waitFor("the providers", `document.querySelectorAll('#providers-list section.provider').length === 3 && document.querySelector('form[data-use-case="chat"]')`)
			title("AI Providers")
			p.axe("Providers", src)
			p.checkControlBorders("Providers")

			p.click(`.nav-item[data-tab="audit"]`)
			p.waitFor("audit events", `document.querySelectorAll('#audit-rows tr[data-sequence]').length > 0`)
			title("Audit log")
			p.axe("Audit", src)
			p.checkControlBorders("Audit")
		})
	}
	t.Run("Layout", func(st *testing.T) {
		st.Parallel()
		testLayout(st, srv)
	})
}

// testLayout: at a phone's 375 px, at 200% zoom of a 1280 px laptop (640
// CSS px) and at 1024 px, no table text cell is narrower than its content's
// minimum, nothing overlaps or sticks out, and the page never scrolls
// sideways. The audit table keeps its keys on one line and scrolls in a
// region a keyboard can reach. (A part of TestAccessibility, on its server.)
func testLayout(t *testing.T, srv *testserver.Server) {
	p := signedIn(t, srv, 1280, 900)
	// A revealed value adds a row that spans the table.
	p.click(row(a11yKey) + ` button[data-action="reveal"]`)
	p.waitFor("the value", qs(fmt.Sprintf(`pre[data-value=%q]`, a11yKey)))
	p.checkLayout("Secrets")

	for _, w := range []struct {
		name  string
		width int64
	}{{"Phone375", 375}, {"Zoom200", 640}, {"Laptop1024", 1024}} {
		t.Run(w.name, func(st *testing.T) {
			q := p.sub(st)
			q.viewport(w.width, 800)
			q.click(`.nav-item[data-tab="secrets"]`)
			q.waitFor("the Secrets list", qs(row(a11yKey)))
			q.checkLayout("Secrets")
			q.click(`.nav-item[data-tab="audit"]`)
			q.waitFor("audit events", `document.querySelectorAll('#audit-rows tr[data-sequence]').length > 0`)
			q.checkLayout("Audit")
		})
	}

	t.Run("AuditScrollRegion", func(st *testing.T) {
		q := p.sub(st)
		q.viewport(1280, 900)
		q.click(`.nav-item[data-tab="audit"]`)
		q.waitFor("audit events", `document.querySelectorAll('#audit-rows tr[data-sequence]').length > 0`)
		region := q.ax("#audit-scroll")
		if region.Role != "region" || region.Name != "Audit events, newest first" {
			st.Errorf("audit scroll region: %+v, want a region named by the table's caption", region)
		}
		if got := eval[int](q, `document.querySelector('#audit-scroll').tabIndex`); got != 0 {
			st.Errorf("audit scroll region tabIndex = %d, want 0 (reachable by Tab)", got)
		}
		// Keys are never broken across lines in the table layout.
		broken := eval[[]string](q, `[...document.querySelectorAll('#audit-rows td.key')].filter((td) => {
			const r = document.createRange(); r.selectNodeContents(td); return r.getClientRects().length > 1; }).map((td) => td.textContent)`)
		if len(broken) > 0 {
			st.Errorf("audit keys broken over lines at 1280 px: %q", broken)
		}
	})
}

// TestKeyboard walks add, reveal, edit, versions and delete with the
// keyboard alone, and checks where the focus is after every step; at every
// Tab stop the focus is on an element (never the page) and shows a ring of
// 3:1 contrast, also in forced-colours mode.
func TestKeyboard(t *testing.T) {
	t.Parallel()
	needBrowser(t)
	srv := testserver.Start(t, testserver.Options{})
	p := newTab(t, srv)
	p.viewport(1280, 900)
	const key = "E2E_KEYBOARD_KEY"
	want := func(st *testing.T, step string, f focused, check func(focused) bool) {
		st.Helper()
		if f.Body || !check(f) {
			st.Fatalf("after %s the focus is on %+v", step, f)
		}
	}
	isRow := func(action string) func(focused) bool {
		return func(f focused) bool { return f.Row == key && f.Action == action }
	}

	t.Run("SignIn", func(st *testing.T) {
		q := p.sub(st)
		q.open("/ui/")
		q.waitFor("the sign-in form", `document.body.dataset.view === 'signin' && document.activeElement.id === 'signin-token'`)
		// An empty token: the error is tied to the field, which keeps the focus.
		q.press(kb.Enter, false)
		q.waitFor("the sign-in error", `!document.querySelector('#signin-error').hidden`)
		want(st, "an empty sign-in", q.focus(), func(f focused) bool { return f.ID == "signin-token" })
		if d := q.ax("#signin-token").Description; !strings.Contains(d, "Enter a token") {
			st.Errorf("token field description = %q, want the error", d)
		}
		q.typeText(srv.AdminToken)
		q.press(kb.Enter, false)
		q.waitFor("the Secrets heading focused", `document.activeElement === document.querySelector('#tab-secrets h1')`)
		q.waitFor("the Secrets list", `document.querySelector('#secrets-list section')`)
	})

	t.Run("AddWithError", func(st *testing.T) {
		q := p.sub(st)
		q.tabTo("#sf-key", false, 20)
		// Save with nothing typed: the first invalid field takes the focus,
		// its error is its description.
		q.tabTo("#secret-form-save", false, 20)
		q.press(kb.Enter, false)
		q.waitFor("the key's error", `!document.querySelector('#sf-key-error').hidden`)
		want(st, "saving an empty form", q.focus(), func(f focused) bool { return f.ID == "sf-key" })
		if a := q.ax("#sf-key"); !strings.Contains(a.Description, "Enter a key") {
			st.Errorf("key field after the error: %+v, want the error as its description", a)
		}
		if got := eval[string](q, `document.querySelector('#sf-value').getAttribute('aria-invalid')`); got != "true" {
			st.Errorf("value field aria-invalid = %q", got)
		}
		q.typeText(key)
		q.tabTo("#sf-value", false, 5)
		q.typeText("keyboard-value-1")
		q.press(kb.Enter, false)
		// Saved: the new row's Edit button has the focus.
		q.waitFor("the new row", qs(row(key)))
		q.waitFor("the focus on the new row", `document.activeElement.closest('tr')?.dataset.key === `+js(key))
		want(st, "saving", q.focus(), isRow("edit"))
		if n := q.ax(row(key) + ` [data-action="edit"]`).Name; n != "Edit "+key {
			st.Errorf("Edit button name = %q, want %q", n, "Edit "+key)
		}
	})

	t.Run("RevealHide", func(st *testing.T) {
		q := p.sub(st)
		q.press(kb.Tab, true) // back to Reveal
		want(st, "Shift+Tab from Edit", q.focus(), isRow("reveal"))
		q.press(kb.Enter, false)
		q.waitFor("the value", fmt.Sprintf(`%s?.textContent === 'keyboard-value-1'`, qs(fmt.Sprintf(`pre[data-value=%q]`, key))))
		want(st, "Reveal", q.focus(), isRow("reveal"))
		if a := q.ax(row(key) + ` [data-action="reveal"]`); a.Name != "Hide "+key {
			st.Errorf("toggle after reveal: %+v", a)
		}
		// The Hide button of the value row returns the focus to the toggle.
		q.tabTo(fmt.Sprintf(`tr[data-reveal-for=%q] [data-action="hide"]`, key), false, 10)
		q.press(kb.Enter, false)
		q.waitFor("the value hidden", `!`+qs(fmt.Sprintf(`pre[data-value=%q]`, key)))
		want(st, "Hide", q.focus(), isRow("reveal"))
	})

	t.Run("EditCancelAndSave", func(st *testing.T) {
		q := p.sub(st)
		q.tabTo(row(key)+` [data-action="edit"]`, false, 3)
		q.press(kb.Enter, false)
		want(st, "Edit", q.focus(), func(f focused) bool { return f.ID == "sf-description" })
		q.tabTo("#secret-form-cancel", true, 6)
		q.press(kb.Enter, false)
		want(st, "Cancel", q.focus(), isRow("edit"))
		q.press(kb.Enter, false)
		q.typeText("Edited by keyboard")
		q.press(kb.Enter, false)
		q.waitFor("the new description", fmt.Sprintf(`%s?.textContent === 'Edited by keyboard'`, qs(row(key)+" .desc-text")))
		q.waitFor("the focus back on the row", `document.activeElement.closest('tr')?.dataset.key === `+js(key))
		want(st, "saving the edit", q.focus(), isRow("edit"))
	})

	t.Run("Versions", func(st *testing.T) {
		q := p.sub(st)
		q.tabTo(row(key)+` [data-action="versions"]`, false, 3)
		q.press(kb.Enter, false)
		q.waitFor("the versions", `document.querySelector('#versions-dialog').open && document.querySelector('#versions-rows tr[data-version="1"]')`)
		want(st, "opening Versions", q.focus(), func(f focused) bool { return f.ID == "versions-close" })
		if a := q.ax("#versions-dialog"); a.Name != "Versions of "+key {
			st.Errorf("versions dialog: %+v, want it named by its title", a)
		}
		q.tabTo(`#versions-rows tr[data-version="1"] [data-action="disable"]`, false, 5)
		q.press(kb.Enter, false)
		q.waitFor("v1 disabled", `document.querySelector('#versions-rows tr[data-version="1"]').dataset.state === 'VERSION_STATE_DISABLED'`)
		q.waitFor("the focus on Enable", `document.activeElement.dataset.action === 'enable'`)
		want(st, "Disable", q.focus(), func(f focused) bool { return f.Row == "1" && f.Name == "Enable version 1" })
		q.press(kb.Enter, false)
		q.waitFor("v1 enabled", `document.querySelector('#versions-rows tr[data-version="1"]').dataset.state === 'VERSION_STATE_ENABLED'`)
		q.waitFor("the focus on Disable", `document.activeElement.dataset.action === 'disable'`)
		q.press(kb.Escape, false)
		q.waitFor("the dialog closed", `!document.querySelector('#versions-dialog').open`)
		want(st, "closing Versions", q.focus(), isRow("versions"))
	})

	t.Run("Delete", func(st *testing.T) {
		q := p.sub(st)
		// The next row, which takes the focus once this one is gone.
		next := eval[string](q, `(() => { let n = `+qs(row(key))+`.nextElementSibling; while (n && !n.dataset.key) n = n.nextElementSibling;
			if (n) return n.dataset.key; n = `+qs(row(key))+`.previousElementSibling; while (n && !n.dataset.key) n = n.previousElementSibling; return n ? n.dataset.key : ''; })()`)
		q.tabTo(row(key)+` [data-action="delete"]`, false, 3)
		q.press(kb.Enter, false)
		q.waitFor("the confirmation", `document.querySelector('#confirm-dialog').open`)
		want(st, "Delete", q.focus(), func(f focused) bool { return f.ID == "confirm-cancel" })
		if a := q.ax("#confirm-dialog"); a.Name != "Delete "+key+"?" || !strings.Contains(a.Description, "removes "+key) {
			st.Errorf("confirmation dialog: %+v, want it named by its title and described by its text", a)
		}
		q.press(kb.Escape, false)
		q.waitFor("the dialog closed", `!document.querySelector('#confirm-dialog').open`)
		want(st, "cancelling the delete", q.focus(), isRow("delete"))
		q.press(kb.Enter, false)
		q.waitFor("the confirmation", `document.querySelector('#confirm-dialog').open`)
		q.tabTo("#confirm-ok", false, 2)
		q.press(kb.Enter, false)
		q.waitFor("the row to go", `!`+qs(row(key)))
		q.waitFor("the focus settled", `document.activeElement !== document.body`)
		f := q.focus()
		if next != "" {
			want(st, "a confirmed delete", f, func(f focused) bool { return f.Row == next && f.Tag == "button" })
		} else {
			want(st, "a confirmed delete", f, func(f focused) bool { return f.Tag == "h1" })
		}
	})

	t.Run("TabChange", func(st *testing.T) {
		q := p.sub(st)
		q.tabTo(`.nav-item[data-tab="audit"]`, true, 80)
		q.press(kb.Enter, false)
		q.waitFor("the Audit heading focused", `document.activeElement === document.querySelector('#tab-audit h1')`)
		if got := eval[string](q, `document.title`); got != "Audit log – Orient Secrets" {
			st.Errorf("title = %q", got)
		}
		// Every stop of the Audit view, to the pager, shows its ring.
		q.waitFor("audit events", `document.querySelectorAll('#audit-rows tr[data-sequence]').length > 0`)
		q.tabTo("#audit-scroll", false, 60)
	})

	t.Run("SkipLink", func(st *testing.T) {
		q := p.sub(st)
		// The first Tab of the page reaches the skip link, which moves the
		// focus to the view's heading without changing the view.
		// Start from the top of the document, as after a page load.
		q.do(chromedp.Evaluate[chromedp.Void](`(() => { const b = document.body; b.tabIndex = -1; b.focus(); b.removeAttribute('tabindex'); })()`))
		f := q.tabTo("#skip-link", false, 1)
		if f.Name != "Skip to main content" {
			st.Errorf("first Tab stop = %+v, want the skip link", f)
		}
		q.press(kb.Enter, false)
		q.waitFor("the Audit heading focused", `document.activeElement === document.querySelector('#tab-audit h1') && location.hash === '#audit'`)
	})

	t.Run("ForcedColours", func(st *testing.T) {
		q := p.sub(st)
		q.forcedColors(true)
		defer q.forcedColors(false)
		q.tabTo("#audit-apply", false, 40)
		q.tabTo(`.nav-item[data-tab="secrets"]`, true, 60)
		q.press(kb.Enter, false)
		q.waitFor("the Secrets heading focused", `document.activeElement === document.querySelector('#tab-secrets h1')`)
		q.tabTo("#sf-key", false, 20)
		q.tabTo("#secret-form-save", false, 20)
	})
}

// TestAnnouncements: one polite live region, always in the page, says when
// the set of services needing a restart changes and not on every refresh;
// a change arriving on the stream updates the rows in place and leaves the
// focus where it was; caller-supplied text is shown as text with invisible
// characters written out.
func TestAnnouncements(t *testing.T) {
	t.Parallel()
	needBrowser(t)
	srv := testserver.Start(t, testserver.Options{})
	putSecret(t, srv, a11yKey, "first", map[string]any{"category": "payments"})
	putSecret(t, srv, a11yRestart, "one", map[string]any{"category": "payments", "restartRequired": true})
	putSecret(t, srv, "E2E_A11Y_OTHER_RESTART", "one", map[string]any{"category": "payments", "restartRequired": true})
	p := newTab(t, srv)
	p.viewport(1280, 900)
	p.open("/ui/")
	p.waitFor("the sign-in form", `document.body.dataset.view === 'signin'`)
	// Record every announcement from now on (the region must exist before
	// sign-in: screen readers only follow regions present from the start).
	if !eval[bool](p, `(() => { const r = document.querySelector('#announcer'); if (!r) return false;
		window.__said = []; new MutationObserver(() => { if (r.textContent) window.__said.push(r.textContent); })
			.observe(r, {childList: true, characterData: true, subtree: true}); return true; })()`) {
		t.Fatal("no #announcer live region on the sign-in screen")
	}
	said := func() []string { return eval[[]string](p, `window.__said`) }

	t.Run("LiveRegion", func(st *testing.T) {
		q := p.sub(st)
		if a := q.ax("#announcer"); a.Role != "status" {
			st.Errorf("announcer role = %q, want status", a.Role)
		}
		attrs := eval[[]string](q, `['aria-live', 'aria-atomic'].map((a) => document.querySelector('#announcer').getAttribute(a))`)
		if attrs[0] != "polite" || attrs[1] != "true" {
			st.Errorf("announcer aria-live, aria-atomic = %v", attrs)
		}
		q.signIn(srv.AdminToken)
		q.waitFor("the Secrets list", qs(row(a11yKey))+` && document.querySelector('#live-status').dataset.state === 'live'`)
		// Exactly one live region exposed, the page's, and the banner is not
		// one (the dialogs' own are not rendered while they are closed).
		if got := q.exposedLiveRegions(); !slices.Equal(got, []string{"announcer"}) {
			st.Errorf("live regions exposed: %q, want only announcer", got)
		}
		reportConsumer(st, srv, a11yService)
		putSecret(st, srv, a11yRestart, "two", nil)
		q.waitFor("the restart banner", `!document.querySelector('#restart-banner').hidden`)
		q.waitFor("the announcement", `window.__said.some((s) => s.includes('Restart needed') && s.includes('orient-a11y/pod-1'))`)
		// Another key of the same service: the banner changes, the set of
		// services does not, so nothing new is said. The service's item is
		// rebuilt: the focus on its Dismiss button moves to the new one.
		before := len(said())
		dismissSel := `#restart-list li[data-service="` + a11yService + `"] [data-action="dismiss"]`
		q.do(chromedp.Evaluate[chromedp.Void](`window.__dismiss = ` + qs(dismissSel) + `; window.__dismiss.focus()`))
		putSecret(st, srv, "E2E_A11Y_OTHER_RESTART", "two", nil)
		q.waitFor("the banner naming the second key", `document.querySelector('#restart-list').textContent.includes('E2E_A11Y_OTHER_RESTART')`)
		if got := said()[before:]; len(got) != 0 {
			st.Errorf("said %q when only the keys of a service already listed changed", got)
		}
		if f := q.focus(); f.Body || !eval[bool](q, `document.activeElement === `+qs(dismissSel)) {
			st.Errorf("after the banner's item changed the focus is on %+v, want its Dismiss button", f)
		}
		// The service restarts: the set becomes empty, said once.
		reportConsumer(st, srv, a11yService)
		q.waitFor("the banner to clear", `document.querySelector('#restart-banner').hidden`)
		q.waitFor("the all-clear", `window.__said.some((s) => s.includes('No service needs a restart'))`)
		n := 0
		for _, s := range said() {
			if strings.Contains(s, "Restart needed") {
				n++
			}
		}
		if n != 1 {
			st.Errorf("'Restart needed' said %d times, want once: %q", n, said())
		}
	})

	t.Run("DismissConsumer", func(st *testing.T) {
		q := p.sub(st)
		// A consumer that will never report again: an admin dismisses it
		// from the banner; it leaves at once and focus stays in the page.
		const gone = "orient-a11y-gone"
		reportConsumer(st, srv, gone)
		putSecret(st, srv, a11yRestart, "three", nil)
		q.waitFor("the banner naming the gone service", `document.querySelector('#restart-list').textContent.includes('`+gone+`/pod-1')`)
		q.click(`#restart-list li[data-service="` + gone + `"] [data-action="dismiss"]`)
		q.waitFor("the dismissed service to leave the banner", `!document.querySelector('#restart-list').textContent.includes('`+gone+`/pod-1')`)
		q.waitFor("the dismissal announced", `window.__said.some((s) => s.includes('Dismissed `+gone+`/pod-1'))`)
		if tag := eval[string](q, `document.activeElement.tagName`); tag == "BODY" {
			st.Error("focus fell to the page after Dismiss")
		}
		// Restore the page for the next steps: the a11y service reports.
		reportConsumer(st, srv, a11yService)
	})

	t.Run("RowsUpdateInPlace", func(st *testing.T) {
		q := p.sub(st)
		q.do(chromedp.Evaluate[chromedp.Void](`(() => { window.__row = ` + qs(row(a11yKey)) + `; window.__button = ` + qs(row(a11yKey)+` [data-action="edit"]`) + `;
			window.__button.focus(); })()`))
		// A change to another secret arrives on the stream.
		putSecret(st, srv, a11yRestart, "three", nil)
		q.waitFor("the other row updated", fmt.Sprintf(`%s?.textContent === 'v3'`, qs(row(a11yRestart)+" td.col-narrow")))
		kept := eval[[]bool](q, `[window.__row === `+qs(row(a11yKey))+`, document.activeElement === window.__button]`)
		if !kept[0] || !kept[1] {
			st.Errorf("after a change to another secret: same row %v, same focused button %v; want both", kept[0], kept[1])
		}
		// A change to the focused row's own secret: the row is rebuilt and
		// the focus moves to the same control in it.
		putSecret(st, srv, a11yKey, "second", nil)
		q.waitFor("the row updated", fmt.Sprintf(`%s?.textContent === 'v2'`, qs(row(a11yKey)+" td.col-narrow")))
		q.waitFor("the focus on the rebuilt row's Edit", `document.activeElement !== window.__button && document.activeElement === `+qs(row(a11yKey)+` [data-action="edit"]`))
	})

	t.Run("CallerTextEscaped", func(st *testing.T) {
		q := p.sub(st)
		// A description the API accepts, with a right-to-left override and a
		// tab: shown with both written out.
		desc := "Invoice \u202efdp.exe\tfinal"
		putSecret(st, srv, a11yKey, "third", map[string]any{"description": desc})
		q.waitFor("the new description", qs(row(a11yKey)+" .desc-text .ctrl"))
		if got := q.text(row(a11yKey) + " .desc-text"); got != `Invoice \u202Efdp.exe\tfinal` {
			st.Errorf("description shown as %q", got)
		}
		// Audit events from a hostile server or an old record: every field a
		// caller chose is text, invisible characters written out.
		hostile, err := json.Marshal(map[string]any{"events": []map[string]any{{
			"sequence": "7", "time": "2026-12-01T10:00:00Z", "actor": "admin\u202egnp.exe", "action": "PutSecret",
			"key": "<img src=x onerror=alert(1)>", "version": "1", "outcome": "OK", "requestId": "req\u200b-1\u0007",
			"detail": "line one\nline two <b>bold</b>", "peer": "10.0.0.1\u202e"}}})
		if err != nil {
			st.Fatal(err)
		}
		paused := chromedp.Events(q.ctx, fetch.RequestPaused)
		if _, err := chromedp.Call(q.ctx, fetch.Enable, fetch.EnableParams{Patterns: []*fetch.RequestPattern{{URLPattern: "*/v1/audit/events*"}}}); err != nil {
			st.Fatal(err)
		}
		defer func() { _, _ = chromedp.Call(q.ctx, fetch.Disable, cdp.Empty{}) }()
		go func() {
			for e, err := range paused {
				if err != nil {
					return
				}
				_, _ = chromedp.Call(q.ctx, fetch.FulfillRequest, fetch.FulfillRequestParams{
					RequestID: e.RequestID, ResponseCode: http.StatusOK,
					ResponseHeaders: []*fetch.HeaderEntry{{Name: "Content-Type", Value: "application/json"}},
					Body:            hostile,
				})
			}
		}()
		q.click(`.nav-item[data-tab="audit"]`)
		q.waitFor("the event", `document.querySelector('#audit-rows tr[data-sequence="7"]')`)
		type cells struct {
			Actor, Key, Detail, Title string
			Images, Bold, Ctrl        int
		}
		got := eval[cells](q, `(() => { const r = document.querySelector('#audit-rows tr[data-sequence="7"]');
			return {Actor: r.querySelector('.actor').textContent, Key: r.querySelector('.key').textContent, Detail: r.querySelector('.detail').textContent,
				Title: r.querySelector('.detail').title, Images: document.querySelectorAll('#audit-rows img').length,
				Bold: document.querySelectorAll('#audit-rows b').length, Ctrl: r.querySelectorAll('.ctrl').length}; })()`)
		want := cells{Actor: `admin\u202Egnp.exe`, Key: `<img src=x onerror=alert(1)>`, Detail: `line one\nline two <b>bold</b>Request req\u200B-1\u0007`,
			Title: `from 10.0.0.1\u202E`, Images: 0, Bold: 0, Ctrl: 4}
		if got != want {
			st.Errorf("audit row shown as\n  %+v\nwant\n  %+v", got, want)
		}
		if n := q.dialogs.Load(); n != 0 {
			st.Errorf("%d JavaScript dialog(s) opened", n)
		}
	})

	t.Run("InDialogs", func(st *testing.T) {
		q := p.sub(st)
		// A modal dialog makes the rest of the page inert, the page's live
		// region with it: what an action in the dialog did is said in the
		// dialog's own region, the only one exposed while it is open.
		q.click(`.nav-item[data-tab="secrets"]`)
		q.waitFor("the Secrets list", qs(row(a11yKey)))
		q.click(row(a11yKey) + ` button[data-action="versions"]`)
		q.waitFor("the versions", `document.querySelector('#versions-rows tr[data-version="1"] [data-action="disable"]')`)
		if got := q.exposedLiveRegions(); len(got) != 1 || !eval[bool](q, `!!document.querySelector('#versions-dialog #'+CSS.escape(`+js(got[0])+`))`) {
			st.Errorf("live regions exposed with the versions dialog open: %q, want only the dialog's own", got)
		}
		q.click(`#versions-rows tr[data-version="1"] [data-action="disable"]`)
		q.waitFor("the announcement in the dialog", `[...document.querySelectorAll('#versions-dialog [role=status]')].some((r) => r.textContent === `+js("Disabled version 1 of "+a11yKey+".")+`)`)
		// The confirmation on top of it: its own region alone.
		q.click(`#versions-rows tr[data-version="1"] [data-action="destroy"]`)
		q.waitFor("the confirmation", `document.querySelector('#confirm-dialog').open`)
		if got := q.exposedLiveRegions(); len(got) != 1 || !eval[bool](q, `!!document.querySelector('#confirm-dialog #'+CSS.escape(`+js(got[0])+`))`) {
			st.Errorf("live regions exposed with the confirmation open: %q, want only its own", got)
		}
		q.click("#confirm-cancel")
		q.waitFor("the confirmation closed", `!document.querySelector('#confirm-dialog').open`)
		q.click("#versions-close")
		q.waitFor("the versions closed", `!document.querySelector('#versions-dialog').open`)
		if got := q.exposedLiveRegions(); !slices.Equal(got, []string{"announcer"}) {
			st.Errorf("live regions exposed after the dialogs closed: %q, want only announcer", got)
		}
	})
}

// The longest text callers may choose, none of it with a space to break at.
var (
	longKey     = "E" + strings.Repeat("K", 127)                                                                                                      // the key maximum
	longService = strings.Repeat("s", 128)                                                                                                            // consumer names: 128 of [A-Za-z0-9._:/-]
	longInst    = strings.Repeat("i", 128)                                                                                                            // (any reader token may report them)
	longChip    = "R" + strings.Repeat("Y", 127)                                                                                                      // a key in the banner
	longActor   = "a" + strings.Repeat("b", 63)                                                                                                       // a 64-character token name
	urlDesc     = "Console: https://console.cloud.google.com/apis/credentials/key/0123456789abcdef0123456789abcdef?project=orient-production-eu-west" // a plain URL
)

// bannerJS lists what sticks out of the restart banner or its items.
const bannerJS = `(() => { const out = []; const banner = document.querySelector('#restart-banner').getBoundingClientRect();
  for (const e of document.querySelectorAll('#restart-list li, #restart-list li *')) {
    const r = e.getBoundingClientRect();
    if (!r.width) continue;
    if (e.scrollWidth > e.clientWidth + 1 && getComputedStyle(e).overflowX === 'visible') out.push(e.className + ': content ' + e.scrollWidth + ' px in ' + e.clientWidth + ' px');
    if (r.right > banner.right + 0.5) out.push(e.className + ': right edge ' + Math.round(r.right) + ' past the banner at ' + Math.round(banner.right));
  }
  return out; })()`

// TestLayoutLongText: keys, descriptions, actors, consumer names and audit
// details as long as the API accepts, with nothing to break them at, at
// 320 px (400% zoom of a 1280 px window, WCAG 1.4.10) and at 1280 px: the
// page never scrolls sideways, no text sticks out of its cell or of the
// restart banner, and no hidden label escapes its table's scroll region.
func TestLayoutLongText(t *testing.T) {
	t.Parallel()
	needBrowser(t)
	srv := testserver.Start(t, testserver.Options{})
	res, err := srv.Tokens.CreateToken(context.Background(), &pb.CreateTokenRequest{Name: longActor, Role: "writer"})
	if err != nil {
		t.Fatal(err)
	}
	writer := res.GetToken()
	putSecret(t, srv, "E2E_SHORT", "v", map[string]any{"category": "payments", "description": "short one"})
	putSecret(t, srv, "E2E_URL_DESC", "v", map[string]any{"category": "payments", "description": urlDesc})
	// Written by the 64-character token: its name is the row's and the
	// version's actor.
	if code, out := rest(t, srv, writer, "PUT", "/v1/secrets/"+longKey, map[string]any{"value": "dg==", "category": "payments"}); code != http.StatusOK {
		t.Fatalf("PUT %s: HTTP %d: %v", longKey, code, out)
	}
	putSecret(t, srv, longChip, "one", map[string]any{"category": "payments", "restartRequired": true})
	rev := mustREST(t, srv, "GET", "/v1/consumers", nil)["revision"]
	if code, out := rest(t, srv, writer, "POST", "/v1/consumers:report", map[string]any{
		"consumer": map[string]any{"service": longService, "instance": longInst}, "loadedRevision": rev}); code != http.StatusOK {
		t.Fatalf("report: HTTP %d: %v", code, out)
	}
	putSecret(t, srv, longChip, "two", nil)

	p := newTab(t, srv)
	p.viewport(1280, 900)
	p.open("/ui/")
	p.signIn(srv.AdminToken)
	p.waitFor("the list and the restart banner", qs(row("E2E_URL_DESC"))+` && `+qs(row(longKey))+` && !document.querySelector('#restart-banner').hidden`)
	for _, w := range []int64{1280, 320} {
		t.Run(fmt.Sprintf("Secrets%d", w), func(st *testing.T) {
			q := p.sub(st)
			q.viewport(w, 800)
			q.checkLayout("Secrets")
			for _, pr := range eval[[]string](q, bannerJS) {
				st.Errorf("restart banner at %d px: %s", w, pr)
			}
		})
	}
	t.Run("Versions320", func(st *testing.T) {
		q := p.sub(st)
		q.click(row(longKey) + ` button[data-action="versions"]`)
		q.waitFor("the versions", `document.querySelector('#versions-rows tr[data-version="1"]')`)
		q.checkLayout("the versions dialog")
		q.click("#versions-close")
	})
	t.Run("Audit320", func(st *testing.T) {
		q := p.sub(st)
		// Dismissing the consumer audits its name in the event's detail.
		q.click(`#restart-list [data-action="dismiss"]`)
		q.waitFor("the banner to clear", `document.querySelector('#restart-banner').hidden`)
		q.click(`.nav-item[data-tab="audit"]`)
		q.waitFor("the dismissal in the audit log", `[...document.querySelectorAll('#audit-rows .detail-text')].some((d) => d.textContent.includes(`+js(longService)+`))`)
		q.checkLayout("Audit")
	})
}
