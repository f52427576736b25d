// secrets.js: the Secrets tab's list. Secrets grouped by category
// (configured ones and the catalog's empty slots), reveal on click and
// delete. The form is secret-form.js, the history versions.js.
//
// The list is updated in place: a row is rebuilt only when its secret
// changed, and rows stay where they are otherwise, so a change arriving on
// the change stream never moves the keyboard focus or the reading position.

import { secrets as api, decodeText, request } from './api.js';
import { el, $, clear, setText, button, setLabel, badge, timeEl, confirmDialog, shown, tableRoles, focusFirst, announce, jobName } from './dom.js';
import * as form from './secret-form.js';
import { openVersions, init as initVersions, reset as resetVersions } from './versions.js';

export const CATEGORY_NAMES = {
  ai: 'AI Providers',
  slack: 'Slack',
  whatsapp: 'WhatsApp',
  google: 'Google',
  github: 'GitHub',
  jira: 'JIRA',
  webhooks: 'Webhooks',
  database: 'Database',
  custom: 'Custom',
};
const CATEGORY_ORDER = ['ai', 'slack', 'whatsapp', 'google', 'github', 'jira', 'webhooks', 'database'];

const state = {
  items: [],
  // The revision the list reflects: a reveal is at least this new.
  revision: '0',
  loaded: false,
  visible: false,
  // key -> {version, value}: values the user chose to reveal. Dropped when
  // the secret gets a new version, and when the tab is left.
  revealed: new Map(),
  // key -> {sig, tr}: the rows on screen and what they were built from.
  rows: new Map(),
  // key -> {sig, tr}: the reveal rows on screen.
  reveals: new Map(),
  // Bumped on sign-out and when the tab is left: an answer to a request
  // sent before (a reveal, above all) is dropped, never shown to whoever
  // signs in next or kept after the tab was left. session counts sign-outs
  // only.
  epoch: 0,
  session: 0,
};

// ---- list ----------------------------------------------------------------

export async function load() {
  const errBox = $('#secrets-error');
  const epoch = state.epoch;
  try {
    const { items, revision } = await api.list();
    if (epoch !== state.epoch) return;
    state.items = items;
    state.revision = revision;
    state.loaded = true;
    setText(errBox, '');
    for (const [key, r] of state.revealed) {
      const s = items.find((x) => x.key === key);
      if (!s || String(s.currentVersion) !== String(r.version) || !s.configured) state.revealed.delete(key);
    }
    render();
    form.fillCategoryList();
  } catch (e) {
    if (epoch === state.epoch) setText(errBox, 'Could not load secrets: ' + e.userMessage);
  }
}

function categoryRank(c) {
  const i = CATEGORY_ORDER.indexOf(c);
  if (i >= 0) return [0, i, c];
  return c === 'custom' ? [2, 0, c] : [1, 0, c];
}

export function compareCategories(a, b) {
  const ra = categoryRank(a);
  const rb = categoryRank(b);
  return ra[0] - rb[0] || ra[1] - rb[1] || ra[2].localeCompare(rb[2]);
}

function categoryName(c) {
  return CATEGORY_NAMES[c] || c.charAt(0).toUpperCase() + c.slice(1);
}

// visibleItems applies the list's filter and the empty-slot switch.
function visibleItems() {
  const q = $('#secrets-filter').value.trim().toLowerCase();
  const showEmpty = $('#secrets-show-empty').checked;
  return state.items.filter((s) => {
    if (!showEmpty && isEmptySlot(s)) return false;
    if (!q) return true;
    return s.key.toLowerCase().includes(q) || (s.description || '').toLowerCase().includes(q) || (s.category || '').includes(q);
  });
}

// rowSelector is the CSS selector of a secret's row.
export const rowSelector = (key) => `#secrets-list tr[data-key="${CSS.escape(key)}"]`;

// focusInRow focuses the first of the row's controls named by actions
// (data-action values) that exists; false when none does.
export function focusInRow(key, ...actions) {
  return !!focusFirst(...actions.map((a) => `${rowSelector(key)} [data-action="${a}"]`));
}

// focusedControl names the list control that has the focus, if any, so it
// can be found again when its row is rebuilt.
function focusedControl() {
  const a = document.activeElement;
  if (!a || !$('#secrets-list').contains(a)) return null;
  const tr = a.closest('tr');
  return { key: tr?.dataset.key || tr?.dataset.revealFor || '', action: a.dataset.action || '' };
}

// attention ranks a secret for the list's order: expired first, then due
// for rotation, then the rest (each group keeps the key order).
function attention(s) {
  if (s.expired) return 0;
  if (s.rotationDue) return 1;
  return 2;
}

// periodText renders a protobuf JSON duration ("7776000s") for people.
function periodText(d) {
  const secs = parseFloat(d || '0');
  if (!secs) return '';
  const days = secs / 86400;
  if (Number.isInteger(days)) return days === 1 ? '1 day' : `${days} days`;
  const hours = Math.round(secs / 3600);
  return hours === 1 ? '1 hour' : `${hours} hours`;
}

function render() {
  const memo = focusedControl();
  const focused = document.activeElement;
  const groups = new Map();
  const shownItems = visibleItems();
  const configured = state.items.filter((s) => s.configured).length;
  const due = state.items.filter((s) => s.rotationDue && !s.expired).length;
  const expired = state.items.filter((s) => s.expired).length;
  $('#secrets-count').textContent =
    `${configured} configured, ${state.items.length - configured} not set` +
    (expired ? ` · ${expired} expired` : '') +
    (due ? ` · ${due} due for rotation` : '') +
    (shownItems.length < state.items.length ? ` · ${shownItems.length} shown` : '');
  for (const s of shownItems) {
    const c = s.category || 'custom';
    if (!groups.has(c)) groups.set(c, []);
    groups.get(c).push(s);
  }
  const list = $('#secrets-list');
  const sections = [];
  const keep = new Set();
  for (const c of [...groups.keys()].sort(compareCategories)) {
    const items = groups.get(c).sort((a, b) => attention(a) - attention(b));
    const section = list.querySelector(`:scope > section[data-category="${CSS.escape(c)}"]`) || categorySection(c);
    section.querySelector('.set-count').textContent = `${items.filter((s) => s.configured).length} of ${items.length} set`;
    const rows = [];
    for (const s of items) {
      rows.push(rowFor(s));
      keep.add(s.key);
      const r = state.revealed.get(s.key);
      if (r) rows.push(revealRowFor(s, r));
      else state.reveals.delete(s.key);
    }
    reconcile(section.querySelector('tbody'), rows);
    sections.push(section);
  }
  for (const key of [...state.rows.keys()]) if (!keep.has(key)) state.rows.delete(key);
  if (sections.length === 0) {
    sections.push(el('div', { className: 'card muted', text: state.items.length ? 'No secrets match the filter.' : 'No secrets yet. Add one above.' }));
  }
  reconcile(list, sections);
  // A rebuilt row takes the focus back to the same control in its new form.
  if (memo && !focused.isConnected) {
    focusFirst(memo.action && `${rowSelector(memo.key)} [data-action="${memo.action}"]`, `${rowSelector(memo.key)} button`, '#secrets-filter');
  }
}

// reconcile makes parent's children exactly nodes, in order, moving only
// the nodes that are out of place: a node that stays put keeps its focus.
function reconcile(parent, nodes) {
  const wanted = new Set(nodes);
  for (const child of [...parent.children]) if (!wanted.has(child)) child.remove();
  let ref = parent.firstElementChild;
  for (const n of nodes) {
    if (n === ref) ref = ref.nextElementSibling;
    else parent.insertBefore(n, ref);
  }
}

function categorySection(c) {
  const titleId = `category-${c}-title`;
  const table = tableRoles(
    el(
      'table',
      { className: 'table table-secrets', attrs: { 'aria-labelledby': titleId } },
      el(
        'thead',
        {},
        el(
          'tr',
          {},
          el('th', { text: 'Key', className: 'col-key', attrs: { scope: 'col' } }),
          el('th', { text: 'Description', attrs: { scope: 'col' } }),
          el('th', { text: 'Version', className: 'col-narrow', attrs: { scope: 'col' } }),
          el('th', { text: 'Updated', className: 'col-updated', attrs: { scope: 'col' } }),
          el('th', { text: 'Actions', className: 'col-actions', attrs: { scope: 'col' } }),
        ),
      ),
      el('tbody'),
    ),
  );
  return el(
    'section',
    { className: 'card category', dataset: { category: c }, attrs: { 'aria-labelledby': titleId } },
    el('div', { className: 'card-title-row' }, el('h2', { className: 'h3', id: titleId, text: categoryName(c) }), el('span', { className: 'label set-count' })),
    el('div', { className: 'table-wrap table-wrap-secrets' }, table),
  );
}

function isEmptySlot(s) {
  return !s.configured && Number(s.currentVersion || 0) === 0;
}

// rowFor returns the row of s: the one on screen when s has not changed.
function rowFor(s) {
  const sig = JSON.stringify([s.key, s.description, s.category, s.configured, s.currentVersion, s.updateTime, s.updatedBy, s.restartRequired, s.valuePrefix, s.etag, checks.get(s.key),
    s.rotationDue, s.expired, s.rotationPeriod, s.nextRotationTime, s.expireTime, s.suggestedRotationPeriod]);
  let r = state.rows.get(s.key);
  if (!r || r.sig !== sig) {
    r = { sig, tr: secretRow(s) };
    state.rows.set(s.key, r);
  }
  const toggle = r.tr.querySelector('[data-action="reveal"]');
  if (toggle) {
    const open = state.revealed.has(s.key);
    if (toggle.dataset.open !== String(open)) {
      toggle.dataset.open = String(open);
      setLabel(toggle, open ? 'Hide' : 'Reveal');
      toggle.setAttribute('aria-expanded', String(open));
    }
  }
  return r.tr;
}

function secretRow(s) {
  const empty = isEmptySlot(s);
  const badges = el('div', { className: 'badges' });
  if (empty) badges.append(badge('Empty slot', 'muted'));
  else if (!s.configured) badges.append(badge('No enabled version', 'warn'));
  if (s.expired) badges.append(badge('Expired', 'danger'));
  else if (s.rotationDue) badges.append(badge('Rotation due', 'warn'));
  if (s.restartRequired) badges.append(badge('Restart on change', 'outline'));
  const checked = checks.get(s.key);
  if (checked && checked.version === String(s.currentVersion)) {
    // Not a live region (the row is rebuilt with it, and a region must be
    // in the page before it changes to be heard): check() announces it.
    badges.append(el('div', { className: 'small check-result', dataset: { check: checked.result }, text: checked.text }));
  }

  const desc = el('td', { className: 'desc', dataset: { label: 'Description' } }, el('div', { className: 'desc-text' }, shown(s.description || '')));
  if (s.valuePrefix) {
    desc.append(el('div', { className: 'hint' }, 'Expected shape: starts with ', el('code', { className: 'mono' }, shown(s.valuePrefix))));
  }
  desc.append(...rotationHints(s, empty));

  const updated = el('td', { className: 'col-updated', dataset: { label: 'Updated' } });
  if (s.updateTime) {
    updated.append(timeEl(s.updateTime));
    if (s.updatedBy) updated.append(el('div', { className: 'muted small' }, 'by ', el('span', { className: 'actor' }, shown(s.updatedBy))));
  } else {
    updated.append(el('span', { className: 'muted', text: '—' }));
  }

  const key = s.key;
  const actions = el('div', { className: 'row-actions' });
  // job: the press starts a request (dom.js guard): a second press while it
  // is on its way does nothing (one audited read, one provider call, one
  // delete).
  const act = (label, action, fn, cls = 'btn btn-small', job = undefined) => button(label, fn, cls, { dataset: { action }, job }, key);
  if (empty) {
    actions.append(act('Set value', 'set', () => form.editForm('fill', s, 'set')));
  } else {
    if (s.configured) {
      const toggle = act('Reveal', 'reveal', () => (state.revealed.has(key) ? hide(key) : reveal(key)), undefined, jobName('reveal', key));
      toggle.dataset.open = 'false';
      toggle.setAttribute('aria-expanded', 'false');
      actions.append(toggle);
    }
    // Every provider check is for a catalog key; the server says which have one.
    if (s.configured && s.catalog) actions.append(act('Check', 'check', () => check(s), undefined, jobName('check', key)));
    actions.append(act('Edit', 'edit', () => form.editForm('edit', s, 'edit')));
    actions.append(act('Versions', 'versions', () => openVersions(key)));
    actions.append(act('Delete', 'delete', () => remove(s), 'btn btn-small btn-danger-text', jobName('delete', key)));
  }

  return tableRoles(
    el(
      'tr',
      { dataset: { key, configured: s.configured ? 'true' : 'false', rotation: s.expired ? 'expired' : s.rotationDue ? 'due' : '' } },
      el('td', { className: 'col-key' }, el('div', { className: 'mono key' }, shown(key)), badges),
      desc,
      el('td', { className: 'col-narrow mono', dataset: { label: 'Version' }, text: empty ? '—' : 'v' + s.currentVersion }),
      updated,
      el('td', { className: 'col-actions', dataset: { label: 'Actions' } }, actions),
    ),
  );
}

// rotationHints describe a secret's rotation schedule and expiry, or the
// catalog's proposed period when none is set (a proposal, never applied).
function rotationHints(s, empty) {
  const hints = [];
  const every = periodText(s.rotationPeriod);
  if (s.nextRotationTime) {
    const when = s.rotationDue ? 'was due ' : 'next ';
    hints.push(el('div', { className: 'hint rotation-hint' }, (every ? `Rotate every ${every}; ` : 'Rotate: ') + when, timeEl(s.nextRotationTime)));
  } else if (!empty && s.suggestedRotationPeriod) {
    hints.push(el('div', { className: 'hint rotation-hint' }, `Suggested rotation: every ${periodText(s.suggestedRotationPeriod)} (not set)`));
  }
  if (s.expireTime) {
    hints.push(el('div', { className: 'hint expire-hint' }, s.expired ? 'Expired ' : 'Expires ', timeEl(s.expireTime)));
  }
  return hints;
}

function revealRowFor(s, r) {
  const sig = `${r.version}\u0000${r.value}`;
  let row = state.reveals.get(s.key);
  if (!row || row.sig !== sig) {
    row = { sig, tr: revealRow(s, r) };
    state.reveals.set(s.key, row);
  }
  return row.tr;
}

function revealRow(s, r) {
  const copy = button(
    'Copy',
    async (e) => {
      const b = e.currentTarget;
      try {
        await navigator.clipboard.writeText(r.value);
        setLabel(b, 'Copied');
        announce(`Copied the value of ${s.key}.`);
      } catch {
        setLabel(b, 'Copy failed');
        announce(`Could not copy the value of ${s.key}.`);
      }
    },
    'btn btn-small',
    { dataset: { action: 'copy' } },
    s.key,
  );
  const id = `value-${s.key}`;
  return tableRoles(
    el(
      'tr',
      { className: 'reveal-row', dataset: { revealFor: s.key } },
      el(
        'td',
        { colSpan: 5 },
        el('div', { className: 'label', id: id + '-label', text: `Value of ${s.key} (version ${r.version})` }),
        el('pre', { className: 'mono value', dataset: { value: s.key }, text: r.value, tabIndex: 0, attrs: { role: 'region', 'aria-labelledby': id + '-label' } }),
        el('div', { className: 'row-actions' }, copy, button('Hide', () => hide(s.key), 'btn btn-small', { dataset: { action: 'hide' } }, s.key)),
      ),
    ),
  );
}

// current is true while an answer to a request sent in epoch still
// belongs on screen: the same session, the tab still shown.
const current = (epoch) => epoch === state.epoch && state.visible;

async function reveal(key) {
  const epoch = state.epoch;
  try {
    const r = await api.access(key, 'latest', state.revision);
    if (!current(epoch)) return;
    state.revealed.set(key, { version: r.version, value: decodeText(r.value) });
    setText($('#secrets-error'), '');
    render();
    announce(`Showing the value of ${key}.`);
  } catch (e) {
    if (!current(epoch)) return;
    setText($('#secrets-error'), `Could not reveal ${key}: ${e.userMessage}`);
  }
  focusInRow(key, 'reveal');
}

// Provider checks (POST /v1/secrets/{key}:check): key -> {version, result,
// text} of the last check, shown under the key while that version is current.
const checks = new Map();
const CHECK_LABELS = {
  valid: 'Valid',
  invalid: 'Invalid',
  insufficient_permissions: 'Insufficient permissions',
  unreachable: 'Provider unreachable',
};

async function check(s) {
  const version = String(s.currentVersion);
  const session = state.session;
  checks.set(s.key, { version, result: 'pending', text: 'Checking…' });
  render();
  let result;
  try {
    const r = await request('POST', `/v1/secrets/${encodeURIComponent(s.key)}:check`, { body: {} });
    const answer = r.httpStatus ? `HTTP ${r.httpStatus}` : 'no answer';
    result = { version, result: r.result, text: `${CHECK_LABELS[r.result] || r.result} — ${r.provider}: ${r.reason} (${answer})` };
  } catch (e) {
    result = { version, result: 'error', text: `Not checked: ${e.userMessage}` };
  }
  // Kept when the tab was left meanwhile (it shows on return), dropped
  // after a sign-out.
  if (session !== state.session) return;
  checks.set(s.key, result);
  render();
  if (state.visible) announce(`Check of ${s.key}: ${result.text}`);
}

function hide(key) {
  state.revealed.delete(key);
  render();
  announce(`Hid the value of ${key}.`);
  focusInRow(key, 'reveal');
}

async function remove(s) {
  // Where focus goes if the row goes: the next row, else the one before,
  // else the view's heading.
  const tr = $(rowSelector(s.key));
  const around = [];
  for (let n = tr?.nextElementSibling; n; n = n.nextElementSibling) if (n.dataset.key) { around.push(n.dataset.key); break; }
  for (let n = tr?.previousElementSibling; n; n = n.previousElementSibling) if (n.dataset.key) { around.push(n.dataset.key); break; }
  const ok = await confirmDialog({
    title: `Delete ${s.key}?`,
    text: `This removes ${s.key} and all ${s.currentVersion} of its versions for good. Services reading it fall back to their environment or config file.`,
    ok: 'Delete secret',
  });
  if (!ok) {
    focusInRow(s.key, 'delete');
    return;
  }
  try {
    await api.remove(s.key, s.etag);
    state.revealed.delete(s.key);
    setText($('#secrets-error'), '');
    form.status(`Deleted ${s.key}.`);
  } catch (e) {
    setText($('#secrets-error'), `Could not delete ${s.key}: ${e.userMessage}`);
  }
  await load();
  if (focusInRow(s.key, 'delete')) return; // still there: the delete failed
  for (const k of around) if (focusFirst(`${rowSelector(k)} button`)) return;
  focusFirst('#tab-secrets h1');
}

// ---- wiring --------------------------------------------------------------

let reloadTimer = 0;

// onChange reloads the list shortly after a change arrives on the change
// stream, while the tab is visible.
export function onChange() {
  if (!state.visible) return;
  clearTimeout(reloadTimer);
  reloadTimer = setTimeout(load, 250);
}

export function show() {
  state.visible = true;
  load();
}

export function hideTab() {
  state.visible = false;
  state.epoch++;
  state.revealed.clear();
}

export function reset() {
  state.epoch++;
  state.session++;
  resetVersions();
  state.items = [];
  state.revealed.clear();
  checks.clear();
  state.rows.clear();
  state.reveals.clear();
  clear($('#secrets-list'));
  form.setMode('add');
}

// prefill opens the form for a key (from the Providers tab).
export function prefill(key) {
  const s = state.items.find((x) => x.key === key);
  if (s) form.editForm(isEmptySlot(s) ? 'fill' : 'edit', s, isEmptySlot(s) ? 'set' : 'edit');
}

export function init() {
  form.init();
  initVersions();
  $('#secrets-refresh').addEventListener('click', load);
  $('#secrets-filter').addEventListener('input', render);
  $('#secrets-show-empty').addEventListener('change', render);
}

export function items() {
  return state.items;
}
