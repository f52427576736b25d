// dom.js: building elements safely. Every value from the API becomes a text
// node (textContent); nothing here ever parses a string as HTML.

// el(tag, props, ...children): props may hold className, text, title,
// dataset (object), attrs (object of plain attributes), on (object of event
// handlers) and any boolean/property like disabled, hidden, type, value.
// Children are nodes or strings (strings become text nodes); null, false and
// undefined are skipped.
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null) continue;
    switch (k) {
      case 'className':
        node.className = v;
        break;
      case 'text':
        node.textContent = String(v);
        break;
      case 'dataset':
        for (const [dk, dv] of Object.entries(v)) node.dataset[dk] = String(dv);
        break;
      case 'attrs':
        for (const [ak, av] of Object.entries(v)) {
          if (/^on/i.test(ak)) throw new Error('event handler attributes are not allowed');
          node.setAttribute(ak, String(av));
        }
        break;
      case 'on':
        for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
        break;
      case 'innerHTML':
      case 'outerHTML':
        throw new Error('HTML strings are not allowed');
      default:
        node[k] = v;
    }
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

// clear removes all children.
export function clear(node) {
  node.replaceChildren();
  return node;
}

// show / hide with the hidden attribute (inline styles are blocked by CSP).
export function show(node, on = true) {
  node.hidden = !on;
  return node;
}

// setText shows text in node, hiding the node when the text is empty.
export function setText(node, text) {
  node.textContent = text || '';
  node.hidden = !text;
}

// ---- one request per press -------------------------------------------------
//
// A control that starts a request which changes something or costs
// something (a write, an audited read, a provider call) runs its work as a
// job through guard(): while the job runs, pressing the control again (a
// double click, Enter held down, a press on its rebuilt successor) does
// nothing. Every control of the job (data-job) says it is busy with
// aria-disabled="true", never the disabled property: a disabled button
// drops the keyboard focus to the page. When the job ends (answered,
// failed, or the question it asked was cancelled) the controls work again.

// job name -> token of the run in progress.
const running = new Map();

// jobName makes a job's name from its parts (a key, a version): parts are
// kept apart, whatever characters they hold.
export const jobName = (...parts) => JSON.stringify(parts);

function markJob(job, on) {
  for (const c of $$('[data-job]')) {
    if (c.dataset.job !== job) continue;
    if (on) c.setAttribute('aria-disabled', 'true');
    else c.removeAttribute('aria-disabled');
  }
}

// guard runs fn() as job unless that job is already running (then it
// returns undefined at once). The controls of the job show it is busy
// until fn settles.
export async function guard(job, fn) {
  if (running.has(job)) return undefined;
  const token = {};
  running.set(job, token);
  markJob(job, true);
  try {
    return await fn();
  } finally {
    // Not when forgetJobs (sign-out) let a new run of the job start.
    if (running.get(job) === token) {
      running.delete(job);
      markJob(job, false);
    }
  }
}

// forgetJobs (on sign-out): the next session's presses are not held back
// by requests of the last one still on their way (their answers are
// dropped by the tabs).
export function forgetJobs() {
  for (const job of running.keys()) markJob(job, false);
  running.clear();
}

// button is a button showing label. A context (e.g. the row's key) is added
// for screen readers only, after the label, so "Edit" is announced as "Edit
// SLACK_BOT_TOKEN" and the visible label stays the start of the name
// (WCAG 2.5.3), as GOV.UK's summary list does. With extra.job (a jobName),
// a press runs onClick as that job (guard): one request per press, and a
// button built while its job runs (its row rebuilt) is shown busy.
export function button(label, onClick, className = 'btn btn-small', extra = {}, context = '') {
  const { job, ...props } = extra;
  const click = job ? (e) => guard(job, () => onClick(e)) : onClick;
  const b = el('button', { type: 'button', className, on: { click }, ...props });
  if (job) {
    b.dataset.job = job;
    if (running.has(job)) b.setAttribute('aria-disabled', 'true');
  }
  setLabel(b, label, context);
  return b;
}

// setLabel changes a button's visible label, keeping its hidden context.
export function setLabel(b, label, context = b.dataset.context || '') {
  b.dataset.context = context;
  b.replaceChildren(label);
  if (context) b.append(el('span', { className: 'visually-hidden' }, ' ', shown(context)));
}

export function badge(text, kind = '') {
  return el('span', { className: 'badge' + (kind ? ' badge-' + kind : ''), text });
}

const pad = (n) => String(n).padStart(2, '0');

// fmtTime renders an RFC 3339 timestamp as local "YYYY-MM-DD HH:MM:SS".
export function fmtTime(ts) {
  if (!ts) return '';
  const d = new Date(ts);
  if (Number.isNaN(d.getTime())) return String(ts);
  return (
    `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`
  );
}

// timeEl is a <time> element with the local time shown and the exact
// timestamp in its title.
export function timeEl(ts) {
  if (!ts) return el('span', { className: 'muted', text: '—' });
  return el('time', { className: 'mono time', text: fmtTime(ts), title: String(ts), attrs: { datetime: String(ts) } });
}

// confirmDialog asks a question in the page's own dialog (no window.confirm)
// and resolves to true when confirmed.
export function confirmDialog({ title, text, ok = 'Confirm', danger = true }) {
  const dlg = $('#confirm-dialog');
  $('#confirm-title').textContent = title;
  $('#confirm-text').textContent = text;
  const okBtn = $('#confirm-ok');
  okBtn.textContent = ok;
  okBtn.className = danger ? 'btn btn-danger' : 'btn btn-primary';
  return new Promise((resolve) => {
    const done = (v) => {
      okBtn.removeEventListener('click', onOk);
      $('#confirm-cancel').removeEventListener('click', onCancel);
      dlg.removeEventListener('cancel', onCancel);
      dlg.removeEventListener('close', onClose);
      if (dlg.open) dlg.close();
      resolve(v);
    };
    const onOk = () => done(true);
    const onCancel = (e) => {
      if (e) e.preventDefault();
      done(false);
    };
    // Closed from elsewhere (sign-out): the question was not answered.
    const onClose = () => done(false);
    okBtn.addEventListener('click', onOk);
    $('#confirm-cancel').addEventListener('click', onCancel);
    dlg.addEventListener('cancel', onCancel);
    dlg.addEventListener('close', onClose);
    dlg.showModal();
    // The safe choice takes focus (GOV.UK's warning pattern).
    $('#confirm-cancel').focus();
  });
}

// Characters that change how text reads without being seen: C0 and C1
// controls, DEL, bidirectional overrides and isolates, zero-width and other
// invisible format characters, line and paragraph separators.
const INVISIBLE = /[\u0000-\u001f\u007f-\u009f\u00ad\u061c\u115f\u1160\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\u3164\ufeff\ufff9-\ufffb]/gu;
const NAMED = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };

function escapeOne(ch) {
  return NAMED[ch] || '\\u' + ch.codePointAt(0).toString(16).toUpperCase().padStart(4, '0');
}

// escapeControls is s with every invisible character written out as an
// escape (\n, \u202E): for attributes such as title and aria-label.
export function escapeControls(s) {
  return String(s ?? '').replace(INVISIBLE, escapeOne);
}

// shown renders caller-supplied text (keys, actors, descriptions, details,
// request ids) as nodes to append: text nodes for the text, and each
// invisible character as its escape in a marked span, so a right-to-left
// override or a bell cannot disguise what an entry says. Never HTML.
export function shown(s) {
  const str = String(s ?? '');
  const out = [];
  let last = 0;
  for (const m of str.matchAll(INVISIBLE)) {
    if (m.index > last) out.push(document.createTextNode(str.slice(last, m.index)));
    out.push(el('span', { className: 'ctrl', title: 'invisible character', text: escapeOne(m[0]) }));
    last = m.index + m[0].length;
  }
  if (last < str.length || out.length === 0) out.push(document.createTextNode(str.slice(last)));
  return out;
}

// liveRegion is the one polite live region screen readers can hear now:
// the page's (#announcer), or, while a modal dialog is open, the top
// dialog's own. showModal() makes everything outside the dialog inert, the
// page's region with it, and an inert region is never read; a closed
// dialog's region is not rendered. So exactly one is exposed at a time.
function liveRegion() {
  const modals = $$('dialog[open]').filter((d) => d.matches(':modal'));
  const top = modals[modals.length - 1];
  return (top && $('.dialog-announcer', top)) || $('#announcer');
}

// announce says text in the live region exposed now. The region is emptied
// first so the same words said twice are announced twice.
let announceTimer = 0;
export function announce(text) {
  const region = liveRegion();
  if (!region) return;
  region.textContent = '';
  clearTimeout(announceTimer);
  announceTimer = setTimeout(() => {
    region.textContent = text;
  }, 50);
}

// closeDialogs closes every open dialog and empties the confirmation's
// text (on sign-out: nothing of the last session stays over the sign-in
// form, whose field a modal dialog would make inert).
export function closeDialogs() {
  for (const d of $$('dialog')) if (d.open) d.close();
  $('#confirm-title').textContent = '';
  $('#confirm-text').textContent = '';
  for (const r of $$('.dialog-announcer')) r.textContent = '';
}

// describedBy adds (on) or removes an id from a field's aria-describedby.
export function describedBy(field, id, on) {
  const ids = new Set((field.getAttribute('aria-describedby') || '').split(/\s+/).filter(Boolean));
  if (on) ids.add(id);
  else ids.delete(id);
  if (ids.size) field.setAttribute('aria-describedby', [...ids].join(' '));
  else field.removeAttribute('aria-describedby');
}

// focus moves focus to the first of the candidates (elements or selectors)
// that is in the page and can take it. Returns the element focused.
export function focusFirst(...candidates) {
  for (const c of candidates) {
    const node = typeof c === 'string' ? $(c) : c;
    if (!node || !node.isConnected || node.closest('[hidden]')) continue;
    node.focus();
    if (document.activeElement === node) return node;
  }
  return null;
}

// tableRoles restates a table's roles on its parts: narrow screens show rows
// as stacked cards (CSS display: block), which drops the implicit table
// semantics in some browsers.
export function tableRoles(root) {
  const roles = { TABLE: 'table', THEAD: 'rowgroup', TBODY: 'rowgroup', TR: 'row', TH: 'columnheader', TD: 'cell' };
  const nodes = root.tagName in roles ? [root, ...root.querySelectorAll('thead, tbody, tr, th, td')] : root.querySelectorAll('thead, tbody, tr, th, td');
  for (const n of nodes) if (!n.hasAttribute('role')) n.setAttribute('role', roles[n.tagName]);
  return root;
}
