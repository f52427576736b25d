package ui_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/accessibility"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
)

// The accessibility checks use axe-core, installed from the npm registry
// by scripts/ensure-axe.sh at the version pinned in tools/axe (never
// committed). Like Chromium, a missing axe skips the checks, and fails them
// with REQUIRE_BROWSER_TESTS set.

// axeSource returns axe-core's browser build, checking that the installed
// version is the pinned one.
func axeSource(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(repoRoot(t), "tools", "axe")
	missing := func(format string, args ...any) string {
		msg := fmt.Sprintf(format, args...) + ": run scripts/ensure-axe.sh"
		if os.Getenv(requireEnv) != "" {
			t.Fatalf("%s (%s is set)", msg, requireEnv)
		}
		t.Skip("accessibility test skipped: " + msg)
		return ""
	}
	var pinned struct {
		Dependencies map[string]string `json:"dependencies"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "package.json"))
	if err != nil || json.Unmarshal(b, &pinned) != nil || pinned.Dependencies["axe-core"] == "" {
		t.Fatalf("tools/axe/package.json does not pin axe-core: %v", err)
	}
	var installed struct {
		Version string `json:"version"`
	}
	b, err = os.ReadFile(filepath.Join(dir, "node_modules", "axe-core", "package.json"))
	if err != nil || json.Unmarshal(b, &installed) != nil {
		return missing("axe-core is not installed in tools/axe/node_modules")
	}
	if installed.Version != pinned.Dependencies["axe-core"] {
		return missing("axe-core %s is installed, %s is pinned", installed.Version, pinned.Dependencies["axe-core"])
	}
	src, err := os.ReadFile(filepath.Join(dir, "node_modules", "axe-core", "axe.min.js"))
	if err != nil {
		return missing("reading axe.min.js: %v", err)
	}
	return string(src)
}

// evalAwait evaluates an expression that returns a promise, and decodes
// what it resolves to.
func evalAwait[T any](tb *tab, expr string) T {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, actionTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		tb.t.Fatalf("evaluating %.200s: %v", expr, err)
	}
	return v
}

type axeViolation struct {
	ID     string `json:"id"`
	Impact string `json:"impact"`
	Help   string `json:"help"`
	Nodes  []struct {
		Target  []any  `json:"target"`
		HTML    string `json:"html"`
		Summary string `json:"failureSummary"`
	} `json:"nodes"`
}

// axeTags are the rule sets run: WCAG 2.0-2.2 A and AA, and best practice.
const axeTags = `['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa', 'best-practice']`

// axe runs axe-core on the page as it is and fails the test on every
// serious or critical violation (others are logged).
func (tb *tab) axe(view, src string) {
	tb.t.Helper()
	if !eval[bool](tb, `typeof window.axe === 'object'`) {
		// Over DevTools, not through the page: the page's CSP does not apply.
		ctx, cancel := context.WithTimeout(tb.ctx, actionTimeout)
		_, err := chromedp.Run(ctx, chromedp.Evaluate[chromedp.Void](src+"\n;undefined"))
		cancel()
		if err != nil {
			tb.t.Fatalf("injecting axe-core: %v", err)
		}
	}
	vs := evalAwait[[]axeViolation](tb, `axe.run(document, {resultTypes: ['violations'], runOnly: {type: 'tag', values: `+axeTags+`}})
		.then((r) => r.violations.map((v) => ({id: v.id, impact: v.impact || '', help: v.help,
			nodes: v.nodes.slice(0, 6).map((n) => ({target: n.target, html: n.html.slice(0, 240), failureSummary: n.failureSummary || ''}))})))`)
	for _, v := range vs {
		var b strings.Builder
		fmt.Fprintf(&b, "%s: axe %s (%s): %s", view, v.ID, v.Impact, v.Help)
		for _, n := range v.Nodes {
			fmt.Fprintf(&b, "\n    %v %s\n      %s", n.Target, n.HTML, strings.ReplaceAll(n.Summary, "\n", "\n      "))
		}
		if v.Impact == "serious" || v.Impact == "critical" {
			tb.t.Error(b.String())
		} else {
			tb.t.Log(b.String())
		}
	}
}

// viewport sets the tab's window size in CSS pixels (what layout depends
// on: 200% zoom of a 1280 px window is a 640 px one).
func (tb *tab) viewport(width, height int64) {
	tb.t.Helper()
	tb.do(chromedp.EmulateViewport(width, height))
	tb.waitFor(fmt.Sprintf("a %d px wide window", width), fmt.Sprintf(`window.innerWidth === %d`, width))
}

// forcedColors turns the emulated forced-colours mode (Windows high
// contrast) on or off.
func (tb *tab) forcedColors(on bool) {
	tb.t.Helper()
	value := "none"
	if on {
		value = "active"
	}
	tb.do(chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
		_, err := chromedp.Call(ctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
			Features: []*emulation.MediaFeature{{Name: "forced-colors", Value: value}},
		})
		return err
	}))
	tb.waitFor("forced colours "+value, fmt.Sprintf(`matchMedia('(forced-colors: active)').matches === %v`, on))
}

// layoutJS finds what a narrow window can break in the tables on screen:
// a text cell narrower than its content's minimum (the widest word, or the
// whole text where it must not wrap), a cell whose content overflows it,
// cells of a row that overlap, a stacked cell without its column's name (or
// a table cell with one), and a page wider than the window.
const layoutJS = `(() => {
  const problems = [];
  const probe = document.createElement('span');
  probe.setAttribute('aria-hidden', 'true');
  Object.assign(probe.style, {position: 'absolute', left: '-10000px', top: '0', visibility: 'hidden', whiteSpace: 'pre'});
  document.body.append(probe);
  const name = (td) => {
    const tr = td.closest('tr');
    const id = tr.dataset.key || tr.dataset.sequence || tr.dataset.version || tr.dataset.revealFor || '?';
    return td.closest('table').className + ' row ' + id + ' cell ' + (td.dataset.label || td.className || td.cellIndex);
  };
  const measure = (text, el) => {
    const cs = getComputedStyle(el);
    Object.assign(probe.style, {font: cs.font, letterSpacing: cs.letterSpacing, textTransform: cs.textTransform, fontFeatureSettings: cs.fontFeatureSettings});
    probe.textContent = text;
    return probe.getBoundingClientRect().width;
  };
  // minContent is the widest piece of text in el that cannot wrap. Text
  // that may break inside a word (overflow-wrap: anywhere, or break-word
  // in a stacked cell, which has no min-content width of its own) needs
  // only 12 characters' room: narrower than that, it is squeezed.
  const minContent = (el, stacked) => {
    let widest = 0;
    const walk = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
    for (let n; (n = walk.nextNode()); ) {
      const p = n.parentElement;
      if (!p.getClientRects().length || p.closest('.visually-hidden, button')) continue;
      const cs = getComputedStyle(p);
      const ws = cs.whiteSpace;
      const nowrap = ws === 'nowrap' || ws === 'pre';
      const breaks = !nowrap && (cs.overflowWrap === 'anywhere' || cs.wordBreak === 'break-all' || (stacked && (cs.overflowWrap === 'break-word' || cs.wordBreak === 'break-word')));
      const floor = breaks ? measure('0'.repeat(12), p) : Infinity;
      const pieces = nowrap ? [n.textContent] : n.textContent.split(/\s+/);
      for (const w of pieces) if (w.trim()) widest = Math.max(widest, Math.min(floor, measure(w.trim(), p)));
    }
    return widest;
  };
  for (const table of document.querySelectorAll('table')) {
    if (!table.getClientRects().length) continue;
    for (const tr of table.querySelectorAll('tbody tr')) {
      const rects = [];
      for (const td of tr.children) {
        if (!td.getClientRects().length) continue;
        const cs = getComputedStyle(td);
        const inner = td.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
        const need = minContent(td, cs.display !== 'table-cell');
        if (need > inner + 0.5) problems.push(name(td) + ': ' + inner.toFixed(1) + ' px wide, its text needs ' + need.toFixed(1) + ' px');
        if (td.scrollWidth > td.clientWidth + 1) problems.push(name(td) + ': content ' + td.scrollWidth + ' px overflows ' + td.clientWidth + ' px');
        for (const b of td.querySelectorAll('button')) {
          const br = b.getBoundingClientRect(), cr = td.getBoundingClientRect();
          if (br.left < cr.left - 0.5 || br.right > cr.right + 0.5) problems.push(name(td) + ': button "' + b.textContent + '" sticks out of its cell');
        }
        // A stacked cell names its column; a table cell leaves that to the header.
        const label = getComputedStyle(td, '::before').content;
        const stacked = cs.display !== 'table-cell';
        if (td.dataset.label && stacked && (label === 'none' || label === 'normal')) problems.push(name(td) + ': stacked without its column name');
        if (!stacked && label !== 'none' && label !== 'normal') problems.push(name(td) + ': repeats its column name inside the table');
        rects.push([td, td.getBoundingClientRect()]);
      }
      for (let i = 0; i < rects.length; i++) for (let j = i + 1; j < rects.length; j++) {
        const a = rects[i][1], b = rects[j][1];
        const w = Math.min(a.right, b.right) - Math.max(a.left, b.left), h = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
        if (w > 1 && h > 1) problems.push(name(rects[i][0]) + ' overlaps ' + name(rects[j][0]));
      }
    }
  }
  probe.remove();
  const page = document.scrollingElement.scrollWidth;
  if (page > window.innerWidth) problems.push('the page is ' + page + ' px wide in a ' + window.innerWidth + ' px window');
  return problems;
})()`

// checkLayout fails the test on every problem layoutJS finds.
func (tb *tab) checkLayout(view string) {
	tb.t.Helper()
	for _, p := range eval[[]string](tb, layoutJS) {
		tb.t.Errorf("%s at %d px: %s", view, eval[int](tb, `window.innerWidth`), p)
	}
}

// focused describes the element that has the focus.
type focused struct {
	Tag    string `json:"tag"`
	ID     string `json:"id"`
	Name   string `json:"name"`
	Action string `json:"action"`
	Row    string `json:"row"`
	Body   bool   `json:"body"`
}

const focusedJS = `(() => { const a = document.activeElement || document.body; const tr = a.closest('tr');
  return {tag: a.tagName.toLowerCase(), id: a.id, name: (a.getAttribute('aria-label') || a.textContent || '').replace(/\s+/g, ' ').trim(),
    action: a.dataset?.action || '', row: tr ? (tr.dataset.key || tr.dataset.version || tr.dataset.revealFor || '') : '',
    body: a === document.body || a === document.documentElement}; })()`

func (tb *tab) focus() focused {
	tb.t.Helper()
	return eval[focused](tb, focusedJS)
}

// press sends one key (kb.Tab, kb.Enter, kb.Escape, ...) to the focused
// element, with Shift when shift is set.
func (tb *tab) press(key string, shift bool) {
	tb.t.Helper()
	var opts []chromedp.KeyOption
	if shift {
		opts = append(opts, chromedp.KeyModifiers(chromedp.ModifierShift))
	}
	tb.do(chromedp.KeyEvent(key, opts...))
}

// typeText types text into the focused element, key by key.
func (tb *tab) typeText(text string) {
	tb.t.Helper()
	tb.do(chromedp.KeyEvent(text))
}

// tabTo presses Tab (Shift+Tab when back) until the focus is on an element
// matching sel, checking at every stop that the focus is on an element, not
// the page, and that the element shows a focus ring. It fails after max
// presses.
func (tb *tab) tabTo(sel string, back bool, max int) focused {
	tb.t.Helper()
	for i := 0; i < max; i++ {
		tb.press(kb.Tab, back)
		f := tb.focus()
		if f.Body {
			tb.t.Fatalf("Tab %d toward %s: the focus fell to the page", i+1, sel)
		}
		tb.checkRing(fmt.Sprintf("Tab stop %s#%s %q", f.Tag, f.ID, f.Name))
		if eval[bool](tb, fmt.Sprintf(`document.activeElement.matches(%s)`, js(sel))) {
			return f
		}
	}
	tb.t.Fatalf("%s not reached in %d presses of Tab", sel, max)
	return focused{}
}

// ringJS measures the focused element's focus indicator: its outline, and
// the contrast of the outline's colour with the background around it.
const ringJS = `(() => {
  const a = document.activeElement;
  const cs = getComputedStyle(a);
  const rgb = (c) => { const m = c.match(/[\d.]+/g) || [0, 0, 0, 0]; return {r: +m[0], g: +m[1], b: +m[2], a: m[3] === undefined ? 1 : +m[3]}; };
  const lum = ({r, g, b}) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); }; return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
  // The outline is drawn outside the element (offset): the background is
  // the nearest ancestor's that is not transparent.
  let bg = {r: 255, g: 255, b: 255, a: 1};
  for (let n = a.parentElement; n; n = n.parentElement) { const c = rgb(getComputedStyle(n).backgroundColor); if (c.a > 0.5) { bg = c; break; } }
  const oc = rgb(cs.outlineColor);
  const l1 = lum(oc), l2 = lum(bg);
  return {focus: a.matches(":focus"), within: a.matches(":focus-within"), style: cs.outlineStyle, width: parseFloat(cs.outlineWidth) || 0, contrast: (Math.max(l1, l2) + 0.05) / (Math.min(l1, l2) + 0.05), color: cs.outlineColor, visible: a.matches(':focus-visible')};
})()`

type ring struct {
	Style    string  `json:"style"`
	Width    float64 `json:"width"`
	Contrast float64 `json:"contrast"`
	Color    string  `json:"color"`
	Visible  bool    `json:"visible"`
	Focus    bool    `json:"focus"`
	Within   bool    `json:"within"`
}

// checkRing fails unless the focused element shows a focus ring at least
// 2 px wide with 3:1 contrast against the background around it.
func (tb *tab) checkRing(what string) {
	tb.t.Helper()
	r := eval[ring](tb, ringJS)
	if r.Style == "none" || r.Width < 2 || r.Contrast < 3 {
		tb.t.Errorf("%s: focus ring %+v; want an outline of 2 px or more at 3:1 contrast", what, r)
	}
}

// borderContrastJS lists the controls on screen whose border has less than
// 3:1 contrast against the background around them (WCAG 1.4.11).
const borderContrastJS = `(() => {
  const rgb = (c) => { const m = c.match(/[\d.]+/g) || [0, 0, 0, 0]; return {r: +m[0], g: +m[1], b: +m[2], a: m[3] === undefined ? 1 : +m[3]}; };
  const lum = ({r, g, b}) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); }; return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
  const ratio = (x, y) => { const a = lum(x), b = lum(y); return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05); };
  const out = [];
  for (const c of document.querySelectorAll('input:not([type=checkbox]), select, textarea, .btn')) {
    if (!c.getClientRects().length || c.disabled) continue;
    const cs = getComputedStyle(c);
    let bg = {r: 255, g: 255, b: 255, a: 1};
    for (let n = c.parentElement; n; n = n.parentElement) { const x = rgb(getComputedStyle(n).backgroundColor); if (x.a > 0.5) { bg = x; break; } }
    const own = rgb(cs.backgroundColor);
    // A control whose fill already stands out (a black button) needs no border.
    if (own.a > 0.5 && ratio(own, bg) >= 3) continue;
    const r = ratio(rgb(cs.borderTopColor), bg);
    if (r < 3 || parseFloat(cs.borderTopWidth) < 1) out.push((c.id || c.className) + ' "' + (c.textContent || c.getAttribute('aria-label') || '').trim().slice(0, 40) + '": border ' + cs.borderTopColor + ' on ' + JSON.stringify(bg) + ' = ' + r.toFixed(2) + ':1');
  }
  return out;
})()`

func (tb *tab) checkControlBorders(view string) {
	tb.t.Helper()
	for _, p := range eval[[]string](tb, borderContrastJS) {
		tb.t.Errorf("%s: control border below 3:1: %s", view, p)
	}
}

// axInfo is what the browser's accessibility tree says of an element.
type axInfo struct {
	Role, Name, Description string
}

// ax reads the accessibility tree's role, name and description of the
// element matching sel: the browser's own computation, not a re-creation.
func (tb *tab) ax(sel string) axInfo {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, 10*time.Second)
	defer cancel()
	nodes, err := chromedp.Run(ctx, chromedp.Nodes(chromedp.CSS(sel), chromedp.AtLeast(0)))
	if err != nil || len(nodes) == 0 {
		tb.t.Fatalf("no element %s: %v", sel, err)
	}
	res, err := chromedp.Call(ctx, accessibility.GetPartialAXTree, accessibility.GetPartialAXTreeParams{BackendNodeID: nodes[0].BackendNodeID, FetchRelatives: new(bool)})
	if err != nil || len(res.Nodes) == 0 {
		tb.t.Fatalf("accessibility node of %s: %v", sel, err)
	}
	str := func(v *accessibility.Value) string {
		if v == nil || len(v.Value) == 0 {
			return ""
		}
		var s string
		_ = json.Unmarshal(v.Value, &s)
		return strings.TrimSpace(spaces.ReplaceAllString(s, " "))
	}
	n := res.Nodes[0]
	return axInfo{Role: str(n.Role), Name: str(n.Name), Description: str(n.Description)}
}

var spaces = regexp.MustCompile(`\s+`)

// exposedLiveRegions lists (by id) the live regions in the page that the
// accessibility tree exposes, which are the ones a screen reader can hear:
// not those in a closed dialog (not rendered), nor those outside an open
// modal dialog (inert, so ignored).
func (tb *tab) exposedLiveRegions() []string {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, 10*time.Second)
	defer cancel()
	nodes, err := chromedp.Run(ctx, chromedp.Nodes(chromedp.CSSAll(`[aria-live], [role=status], [role=log]`), chromedp.AtLeast(0)))
	if err != nil {
		tb.t.Fatalf("live regions: %v", err)
	}
	out := []string{}
	for _, n := range nodes {
		res, err := chromedp.Call(ctx, accessibility.GetPartialAXTree, accessibility.GetPartialAXTreeParams{BackendNodeID: n.BackendNodeID, FetchRelatives: new(bool)})
		if err != nil {
			tb.t.Fatalf("accessibility node of a live region: %v", err)
		}
		if len(res.Nodes) > 0 && !res.Nodes[0].Ignored {
			id := n.AttributeValue("id")
			if id == "" {
				id = n.LocalName + "." + n.AttributeValue("class")
			}
			out = append(out, id)
		}
	}
	return out
}
