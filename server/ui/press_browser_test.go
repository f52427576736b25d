package ui_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/fetch"
	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/orient-bot/secrets/internal/testserver"
)

// wireTap sees every API request of a tab on its way out (DevTools Fetch
// domain, before it reaches the server). The requests a step counts are
// held until released, so that a second press surely lands while the
// first request is in flight; all others go on at once.
type wireTap struct {
	p     *tab
	mu    sync.Mutex
	match func(method, url string) bool
	sent  []string
	held  []fetch.RequestID
	wake  chan struct{}
}

func tapRequests(t *testing.T, p *tab) *wireTap {
	t.Helper()
	w := &wireTap{p: p, wake: make(chan struct{}, 64)}
	paused := chromedp.Events(p.ctx, fetch.RequestPaused)
	if _, err := chromedp.Call(p.ctx, fetch.Enable, fetch.EnableParams{Patterns: []*fetch.RequestPattern{{URLPattern: "*/v1/*"}}}); err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(p.ctx)
	go func() {
		for e, err := range paused {
			if err != nil || ctx.Err() != nil {
				return
			}
			w.mu.Lock()
			hold := w.match != nil && w.match(e.Request.Method, e.Request.URL)
			if hold {
				w.sent = append(w.sent, e.Request.Method+" "+e.Request.URL)
				w.held = append(w.held, e.RequestID)
			}
			w.mu.Unlock()
			if hold {
				select {
				case w.wake <- struct{}{}:
				default:
				}
				continue
			}
			_, _ = chromedp.Call(p.ctx, fetch.ContinueRequest, fetch.ContinueRequestParams{RequestID: e.RequestID})
		}
	}()
	t.Cleanup(func() {
		w.release()
		stop()
		_, _ = chromedp.Call(p.ctx, fetch.Disable, cdp.Empty{})
	})
	return w
}

// expect starts counting (and holding) the requests of method whose URL
// holds part.
func (w *wireTap) expect(method, part string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.sent = nil
	w.match = func(m, u string) bool { return m == method && strings.Contains(u, part) }
	for len(w.wake) > 0 {
		<-w.wake
	}
}

// first waits for the first request counted since expect.
func (w *wireTap) first(t *testing.T) {
	t.Helper()
	deadline := time.After(actionTimeout)
	for {
		w.mu.Lock()
		n := len(w.sent)
		w.mu.Unlock()
		if n > 0 {
			return
		}
		select {
		case <-w.wake:
		case <-deadline:
			t.Fatalf("no request sent in %v", actionTimeout)
		}
	}
}

func (w *wireTap) requests() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.sent...)
}

// release lets every held request go on and stops holding new ones.
func (w *wireTap) release() {
	w.mu.Lock()
	held := w.held
	w.held = nil
	w.match = nil
	w.mu.Unlock()
	for _, id := range held {
		_, _ = chromedp.Call(w.p.ctx, fetch.ContinueRequest, fetch.ContinueRequestParams{RequestID: id})
	}
}

// doubleClick double-clicks the middle of the element matching sel with
// the mouse, as a person does: two presses, the second with click count 2.
func (tb *tab) doubleClick(sel string) {
	tb.t.Helper()
	pt := eval[[]float64](tb, fmt.Sprintf(`(() => { const e = %s; e.scrollIntoView({block: 'center'});
		const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()`, qs(sel)))
	tb.do(chromedp.MouseClickXY(pt[0], pt[1]), chromedp.MouseClickXY(pt[0], pt[1], chromedp.ClickCount(2)))
}

// holdEnter focuses the element matching sel and holds Enter down long
// enough for the keyboard to repeat it once.
func (tb *tab) holdEnter(sel string) {
	tb.t.Helper()
	if !eval[bool](tb, fmt.Sprintf(`(() => { const e = %s; e.focus(); return document.activeElement === e; })()`, qs(sel))) {
		tb.t.Fatalf("%s cannot take the focus", sel)
	}
	keys := kb.Encode('\r') // keyDown, char, keyUp
	if len(keys) != 3 {
		tb.t.Fatalf("Enter encodes as %d events, want 3", len(keys))
	}
	down, char, up := *keys[0], *keys[1], *keys[2]
	repeat := true
	down2, char2 := down, char
	down2.AutoRepeat, char2.AutoRepeat = &repeat, &repeat
	tb.do(chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
		for _, k := range []input.DispatchKeyEventParams{down, char, down2, char2, up} {
			if _, err := chromedp.Call(ctx, input.DispatchKeyEvent, k); err != nil {
				return err
			}
		}
		return nil
	}))
}

// TestOnePressOneRequest: a control that starts a request which changes
// something sends one request per press. Pressed twice while its request is
// on its way (a double click, Enter held down, or, behind a confirmation,
// pressed and confirmed again), it sends nothing more; meanwhile it says it
// is busy (aria-disabled) and keeps the focus; once answered, it works
// again. The requests are counted on the wire and the first is held until
// the second press is done.
func TestOnePressOneRequest(t *testing.T) {
	t.Parallel()
	needBrowser(t)
	srv := testserver.Start(t, testserver.Options{})
	const (
		versKey    = "E2E_PRESS_VERSIONS"
		delKey     = "E2E_PRESS_DELETE"
		newKey     = "E2E_PRESS_NEW"
		restartKey = "E2E_PRESS_RESTART"
		service    = "orient-press"
	)
	for _, v := range []string{"one", "two", "three"} {
		putSecret(t, srv, versKey, v, map[string]any{"category": "payments"})
	}
	putSecret(t, srv, delKey, "gone-soon", map[string]any{"category": "payments"})
	putSecret(t, srv, restartKey, "one", map[string]any{"category": "payments", "restartRequired": true})
	reportConsumer(t, srv, service)
	putSecret(t, srv, restartKey, "two", nil)

	tb := newTab(t, srv)
	tb.viewport(1280, 900)
	w := tapRequests(t, tb)
	vrow := func(n int) string { return fmt.Sprintf(`#versions-rows tr[data-version="%d"]`, n) }
	confirmOpen := `document.querySelector('#confirm-dialog').open`
	idle := `!document.querySelector('[aria-disabled="true"]')`

	// pressTwice presses sel twice (how: "double click" or "Enter held")
	// while the request it starts is held; busy is the control that must
	// say it is busy meanwhile (sel when empty). With confirm, the first
	// press asks first: it is confirmed, then the control is pressed again,
	// and a confirmation that comes back (it should not) is confirmed too.
	// done is what shows the answer arrived.
	pressTwice := func(st *testing.T, q *tab, sel, busy, how, method, part string, confirm bool, done string) {
		st.Helper()
		if busy == "" {
			busy = sel
		}
		// A person presses a control that is not busy: the step before
		// may still be reloading the list after its answer.
		q.waitFor("no control busy", idle)
		w.expect(method, part)
		press := func() {
			if how == "Enter held" {
				q.holdEnter(sel)
			} else {
				q.doubleClick(sel)
			}
		}
		press()
		if confirm {
			q.waitFor("the confirmation", confirmOpen)
			q.click("#confirm-ok")
		}
		w.first(st)
		if confirm {
			q.waitFor("the confirmation closed", `!`+confirmOpen)
			if eval[bool](q, `!!`+qs(sel)) {
				press()
				evalAwait[bool](q, `new Promise((r) => setTimeout(() => r(true), 300))`)
				if eval[bool](q, confirmOpen) {
					st.Errorf("%s pressed again while its request is on its way asks again", sel)
					q.click("#confirm-ok")
				}
			}
		}
		evalAwait[bool](q, `new Promise((r) => setTimeout(() => r(true), 400))`) // a second request would have come
		if eval[bool](q, `!!`+qs(busy)) {
			if got := eval[string](q, qs(busy)+`.getAttribute('aria-disabled') || ''`); got != "true" {
				st.Errorf("while its request is on its way %s has aria-disabled=%q, want true", busy, got)
			}
			if eval[bool](q, qs(busy)+`.disabled`) {
				st.Errorf("%s is disabled while its request is on its way: that drops the focus", busy)
			}
		}
		if f := q.focus(); f.Body {
			st.Errorf("while its request is on its way the focus is on the page")
		}
		if got := w.requests(); len(got) != 1 {
			st.Errorf("%s on %s sent %d requests, want 1: %q", how, sel, len(got), got)
		}
		w.release()
		q.waitFor("the answer shown", done)
		// Answered: no control says it is busy any more.
		q.waitFor("the controls to work again", idle)
		if f := q.focus(); f.Body {
			st.Errorf("after the answer the focus is on the page")
		}
	}

	t.Run("SignIn", func(st *testing.T) {
		q := tb.sub(st)
		q.open("/ui/")
		q.waitFor("the sign-in form", `document.body.dataset.view === 'signin' && !document.querySelector('#signin').hidden`)
		q.fill("#signin-token", srv.AdminToken)
		pressTwice(st, q, "#signin-submit", "", "double click", "GET", "/v1/secrets?pageSize=1", false, `document.body.dataset.view === 'shell'`)
		q.waitFor("the rows", qs(row(versKey)))
	})

	t.Run("SaveNew", func(st *testing.T) {
		q := tb.sub(st)
		q.fill("#sf-key", newKey)
		q.fill("#sf-value", "new-value-1")
		pressTwice(st, q, "#secret-form-save", "", "double click", "PUT", "/v1/secrets/"+newKey, false, qs(row(newKey)))
	})

	t.Run("SaveEditEnterHeld", func(st *testing.T) {
		q := tb.sub(st)
		q.click(row(newKey) + ` [data-action="edit"]`)
		q.waitFor("the edit form", `document.querySelector('#secret-form').dataset.mode === 'edit'`)
		q.fill("#sf-value", "new-value-2")
		// Enter held in the value field submits the form twice.
		pressTwice(st, q, "#sf-value", "#secret-form-save", "Enter held", "PUT", "/v1/secrets/"+newKey, false, fmt.Sprintf(`%s?.textContent === 'v2'`, qs(row(newKey)+" td.col-narrow")))
	})

	t.Run("Delete", func(st *testing.T) {
		q := tb.sub(st)
		pressTwice(st, q, row(delKey)+` [data-action="delete"]`, "", "double click", "DELETE", "/v1/secrets/"+delKey, true, `!`+qs(row(delKey)))
		if code, _ := rest(st, srv, srv.AdminToken, "GET", "/v1/secrets/"+delKey, nil); code != 404 {
			st.Errorf("after the delete GET answers %d, want 404", code)
		}
	})

	t.Run("OpenVersions", func(st *testing.T) {
		q := tb.sub(st)
		q.click(row(versKey) + ` [data-action="versions"]`)
		q.waitFor("the versions", `document.querySelector('#versions-dialog').open && `+qs(vrow(1)))
	})

	state := func(n int, s string) string {
		return fmt.Sprintf(`%s?.dataset.state === %s`, qs(vrow(n)), js(s))
	}

	t.Run("Disable", func(st *testing.T) {
		q := tb.sub(st)
		pressTwice(st, q, vrow(1)+` [data-action="disable"]`, "", "double click", "POST", ":disable", false, state(1, "VERSION_STATE_DISABLED"))
		q.waitFor("the focus on Enable", `document.activeElement === `+qs(vrow(1)+` [data-action="enable"]`))
		if txt := q.text("#versions-error"); txt != "" {
			st.Errorf("versions error after a double press of Disable: %q", txt)
		}
	})

	t.Run("EnableEnterHeld", func(st *testing.T) {
		q := tb.sub(st)
		pressTwice(st, q, vrow(1)+` [data-action="enable"]`, "", "Enter held", "POST", ":enable", false, state(1, "VERSION_STATE_ENABLED"))
		if txt := q.text("#versions-error"); txt != "" {
			st.Errorf("versions error after Enter held on Enable: %q", txt)
		}
	})

	t.Run("EnableDoubleClick", func(st *testing.T) {
		q := tb.sub(st)
		// Works again after the answer: a single press disables.
		q.waitFor("no control busy", idle)
		w.expect("POST", ":disable")
		q.click(vrow(2) + ` [data-action="disable"]`)
		w.first(st)
		w.release()
		q.waitFor("v2 disabled", state(2, "VERSION_STATE_DISABLED"))
		pressTwice(st, q, vrow(2)+` [data-action="enable"]`, "", "double click", "POST", ":enable", false, state(2, "VERSION_STATE_ENABLED"))
	})

	t.Run("Restore", func(st *testing.T) {
		q := tb.sub(st)
		pressTwice(st, q, vrow(1)+` [data-action="restore"]`, "", "double click", "PUT", "/v1/secrets/"+versKey, true, qs(vrow(4)))
	})

	t.Run("Destroy", func(st *testing.T) {
		q := tb.sub(st)
		pressTwice(st, q, vrow(2)+` [data-action="destroy"]`, "", "double click", "POST", ":destroy", true,
			state(2, "VERSION_STATE_DESTROYED")+` && document.activeElement === document.querySelector('#versions-title')`)
		if txt := q.text("#versions-error"); txt != "" {
			st.Errorf("versions error after a double press of Destroy: %q", txt)
		}
		q.click("#versions-close")
		q.waitFor("the dialog closed", `!document.querySelector('#versions-dialog').open`)
	})

	t.Run("Dismiss", func(st *testing.T) {
		q := tb.sub(st)
		sel := `#restart-list li[data-service="` + service + `"] [data-action="dismiss"]`
		q.waitFor("the restart banner", qs(sel))
		pressTwice(st, q, sel, "", "double click", "POST", "/v1/consumers:dismiss", false, `!`+qs(sel))
	})

	t.Run("ProviderDefault", func(st *testing.T) {
		q := tb.sub(st)
		q.click(`.nav-item[data-tab="providers"]`)
		q.waitFor("the chat default", `document.querySelector('form[data-use-case="chat"]')`)
		q.choose(`#default-chat-provider`, "google")
		q.fill(`#default-chat-model`, "gemini-2.5-pro")
		pressTwice(st, q, `form[data-use-case="chat"] button[type="submit"]`, "", "double click", "PUT", "/v1/providers/defaults/chat", false,
			`document.querySelector('form[data-use-case="chat"] .status').textContent === 'Saved'`)
	})
}
