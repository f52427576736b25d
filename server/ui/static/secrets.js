// secrets.js: the Secrets tab. Secrets grouped by category (configured ones
// and the catalog's empty slots), the add / edit form, reveal on click,
// version history and delete.

import { secrets as api, encodeText, decodeText, request } from './api.js';
import { el, $, clear, setText, button, badge, timeEl, confirmDialog } from './dom.js';

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
  form: { mode: 'add', key: '', etag: '', initial: { description: '', category: '', restartRequired: false } },
  versionsKey: '',
};

// ---- list ----------------------------------------------------------------

export async function load() {
  const errBox = $('#secrets-error');
  try {
    const { items, revision } = await api.list();
    state.items = items;
    state.revision = revision;
    state.loaded = true;
    setText(errBox, '');
    for (const [key, r] of state.revealed) {
      const s = items.find((x) => x.key === key);
      if (!s || String(s.currentVersion) !== String(r.version) || !s.configured) state.revealed.delete(key);
    }
    render();
    fillCategoryList();
  } catch (e) {
    setText(errBox, 'Could not load secrets: ' + e.userMessage);
  }
}

function categoryRank(c) {
  const i = CATEGORY_ORDER.indexOf(c);
  if (i >= 0) return [0, i, c];
  return c === 'custom' ? [2, 0, c] : [1, 0, c];
}

function compareCategories(a, b) {
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

function render() {
  const groups = new Map();
  const shown = visibleItems();
  const configured = state.items.filter((s) => s.configured).length;
  $('#secrets-count').textContent =
    `${configured} configured, ${state.items.length - configured} not set` + (shown.length < state.items.length ? ` · ${shown.length} shown` : '');
  for (const s of shown) {
    const c = s.category || 'custom';
    if (!groups.has(c)) groups.set(c, []);
    groups.get(c).push(s);
  }
  const list = clear($('#secrets-list'));
  if (groups.size === 0) {
    list.append(el('div', { className: 'card muted', text: state.items.length ? 'No secrets match the filter.' : 'No secrets yet. Add one above.' }));
    return;
  }
  for (const c of [...groups.keys()].sort(compareCategories)) {
    const items = groups.get(c);
    const set = items.filter((s) => s.configured).length;
    const tbody = el('tbody');
    for (const s of items) {
      tbody.append(secretRow(s));
      const r = state.revealed.get(s.key);
      if (r) tbody.append(revealRow(s, r));
    }
    list.append(
      el(
        'section',
        { className: 'card category', dataset: { category: c } },
        el(
          'div',
          { className: 'card-title-row' },
          el('h3', { text: categoryName(c) }),
          el('span', { className: 'label', text: `${set} of ${items.length} set` }),
        ),
        el(
          'div',
          { className: 'table-wrap' },
          el(
            'table',
            { className: 'table table-fixed' },
            el(
              'thead',
              {},
              el(
                'tr',
                {},
                el('th', { text: 'Key', className: 'col-key' }),
                el('th', { text: 'Description' }),
                el('th', { text: 'Version', className: 'col-narrow' }),
                el('th', { text: 'Updated', className: 'col-updated' }),
                el('th', { text: 'Actions', className: 'col-actions' }),
              ),
            ),
            tbody,
          ),
        ),
      ),
    );
  }
}

function isEmptySlot(s) {
  return !s.configured && Number(s.currentVersion || 0) === 0;
}

function secretRow(s) {
  const empty = isEmptySlot(s);
  const badges = el('div', { className: 'badges' });
  if (empty) badges.append(badge('Empty slot', 'muted'));
  else if (!s.configured) badges.append(badge('No enabled version', 'warn'));
  if (s.restartRequired) badges.append(badge('Restart on change', 'outline'));
  const checked = checks.get(s.key);
  if (checked && checked.version === String(s.currentVersion)) {
    badges.append(el('div', { className: 'small check-result', dataset: { check: checked.result }, attrs: { role: 'status' }, text: checked.text }));
  }

  const desc = el('td', { className: 'desc' }, el('div', { className: 'desc-text', text: s.description || '' }));
  if (s.valuePrefix) {
    desc.append(el('div', { className: 'hint' }, 'Expected shape: starts with ', el('code', { className: 'mono', text: s.valuePrefix })));
  }

  const updated = el('td', { className: 'col-updated' });
  if (s.updateTime) {
    updated.append(timeEl(s.updateTime));
    if (s.updatedBy) updated.append(el('div', { className: 'muted small' }, 'by ', el('span', { className: 'actor', text: s.updatedBy })));
  } else {
    updated.append(el('span', { className: 'muted', text: '—' }));
  }

  const actions = el('div', { className: 'row-actions' });
  if (empty) {
    actions.append(button('Set value', () => editForm('fill', s), 'btn btn-small', { dataset: { action: 'set' } }));
  } else {
    if (s.configured) {
      const shown = state.revealed.has(s.key);
      actions.append(button(shown ? 'Hide' : 'Reveal', () => (shown ? hide(s.key) : reveal(s.key)), 'btn btn-small', { dataset: { action: 'reveal' } }));
    }
    // Every provider check is for a catalog key; the server says which have one.
    if (s.configured && s.catalog) actions.append(button('Check', () => check(s), 'btn btn-small', { dataset: { action: 'check' } }));
    actions.append(button('Edit', () => editForm('edit', s), 'btn btn-small', { dataset: { action: 'edit' } }));
    actions.append(button('Versions', () => openVersions(s.key), 'btn btn-small', { dataset: { action: 'versions' } }));
    actions.append(button('Delete', () => remove(s), 'btn btn-small btn-danger-text', { dataset: { action: 'delete' } }));
  }

  return el(
    'tr',
    { dataset: { key: s.key, configured: s.configured ? 'true' : 'false' } },
    el('td', { className: 'col-key' }, el('div', { className: 'mono key', text: s.key }), badges),
    desc,
    el('td', { className: 'col-narrow mono', text: empty ? '—' : 'v' + s.currentVersion }),
    updated,
    el('td', { className: 'col-actions' }, actions),
  );
}

function revealRow(s, r) {
  const copy = button('Copy', async (e) => {
    try {
      await navigator.clipboard.writeText(r.value);
      e.target.textContent = 'Copied';
    } catch {
      e.target.textContent = 'Copy failed';
    }
  });
  return el(
    'tr',
    { className: 'reveal-row', dataset: { revealFor: s.key } },
    el(
      'td',
      { colSpan: 5 },
      el('div', { className: 'label', text: `Value (version ${r.version})` }),
      el('pre', { className: 'mono value', dataset: { value: s.key }, text: r.value }),
      el('div', { className: 'row-actions' }, copy, button('Hide', () => hide(s.key))),
    ),
  );
}

async function reveal(key) {
  try {
    const r = await api.access(key, 'latest', state.revision);
    state.revealed.set(key, { version: r.version, value: decodeText(r.value) });
    setText($('#secrets-error'), '');
    render();
  } catch (e) {
    setText($('#secrets-error'), `Could not reveal ${key}: ${e.userMessage}`);
  }
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
  checks.set(s.key, { version, result: 'pending', text: 'Checking…' });
  render();
  try {
    const r = await request('POST', `/v1/secrets/${encodeURIComponent(s.key)}:check`, { body: {} });
    const answer = r.httpStatus ? `HTTP ${r.httpStatus}` : 'no answer';
    checks.set(s.key, { version, result: r.result, text: `${CHECK_LABELS[r.result] || r.result} — ${r.provider}: ${r.reason} (${answer})` });
  } catch (e) {
    checks.set(s.key, { version, result: 'error', text: `Not checked: ${e.userMessage}` });
  }
  render();
}

function hide(key) {
  state.revealed.delete(key);
  render();
}

async function remove(s) {
  const ok = await confirmDialog({
    title: `Delete ${s.key}?`,
    text: `This removes ${s.key} and all ${s.currentVersion} of its versions for good. Services reading it fall back to their environment or config file.`,
    ok: 'Delete secret',
  });
  if (!ok) return;
  try {
    await api.remove(s.key, s.etag);
    state.revealed.delete(s.key);
    setText($('#secrets-error'), '');
    status(`Deleted ${s.key}.`);
  } catch (e) {
    setText($('#secrets-error'), `Could not delete ${s.key}: ${e.userMessage}`);
  }
  await load();
}

function fillCategoryList() {
  const cats = new Set([...Object.keys(CATEGORY_NAMES), ...state.items.map((s) => s.category).filter(Boolean)]);
  clear($('#category-list')).append(...[...cats].sort(compareCategories).map((c) => el('option', { value: c })));
}

// ---- form ----------------------------------------------------------------

const f = {
  key: () => $('#sf-key'),
  category: () => $('#sf-category'),
  description: () => $('#sf-description'),
  value: () => $('#sf-value'),
  restart: () => $('#sf-restart'),
};

function status(text) {
  $('#secret-form-status').textContent = text;
}

function clearErrors() {
  for (const p of document.querySelectorAll('#secret-form .field-error')) setText(p, '');
  for (const i of document.querySelectorAll('#secret-form [aria-invalid]')) i.removeAttribute('aria-invalid');
}

function fieldError(field, text) {
  const p = document.querySelector(`#secret-form .field-error[data-error-for="${field}"]`);
  if (!p) return false;
  setText(p, text);
  const input = p.closest('.field')?.querySelector('input');
  if (input) input.setAttribute('aria-invalid', 'true');
  return true;
}

// apiFieldName maps a BadRequest field ("value", "secret.description",
// "restart_required") to the form's field names.
function apiFieldName(field) {
  const last = field.split('.').pop();
  return last.replace(/_([a-z])/g, (_, c) => c.toUpperCase());
}

function showApiError(e) {
  let placed = false;
  for (const v of e.fieldViolations || []) {
    if (fieldError(apiFieldName(v.field), v.description)) placed = true;
  }
  if (!placed) {
    const msg = e.status === 409 && e.reason === 'ETAG_MISMATCH' ? 'This secret changed since you opened it. Reload and try again.' : e.userMessage;
    setText($('#secret-form-error'), msg);
  }
}

function setMode(mode, s) {
  clearErrors();
  status('');
  const form = state.form;
  form.mode = mode;
  form.key = s ? s.key : '';
  form.etag = s && s.etag ? s.etag : '';
  form.initial = {
    description: s ? s.description || '' : '',
    category: s ? s.category || '' : '',
    restartRequired: s ? !!s.restartRequired : false,
  };
  const titles = { add: 'Add secret', fill: `Set ${form.key}`, edit: `Edit ${form.key}` };
  $('#secret-form-title').textContent = titles[mode];
  $('#secret-form').dataset.mode = mode;
  f.key().value = form.key;
  f.key().readOnly = mode !== 'add';
  f.category().value = form.initial.category;
  f.description().value = form.initial.description;
  f.restart().checked = form.initial.restartRequired;
  f.value().value = '';
  f.value().type = 'password';
  $('#sf-value-toggle').textContent = 'Show';
  f.value().placeholder = mode === 'edit' ? 'Leave empty to keep the current value' : 'Enter secret value';
  $('#secret-form-cancel').hidden = mode === 'add';
  $('#secret-form-save').textContent = mode === 'edit' ? 'Save changes' : 'Save secret';
  let hint = '';
  if (s && s.valuePrefix) hint = `Expected shape: starts with ${s.valuePrefix}`;
  if (mode === 'edit') hint = (hint ? hint + '. ' : '') + `A new value is saved as version ${Number(s.currentVersion || 0) + 1}.`;
  setText($('#sf-value-hint'), hint);
}

function editForm(mode, s) {
  setMode(mode, s);
  $('#secret-form').scrollIntoView({ block: 'start' });
  (mode === 'edit' ? f.description() : f.value()).focus();
}

// keyHint shows a catalog key's expected shape while a key is typed.
function keyHint() {
  if (state.form.mode !== 'add') return;
  const s = state.items.find((x) => x.key === f.key().value.trim());
  setText($('#sf-value-hint'), s && s.valuePrefix ? `Expected shape: starts with ${s.valuePrefix}` : '');
}

async function submit(ev) {
  ev.preventDefault();
  clearErrors();
  status('');
  const form = state.form;
  const key = f.key().value.trim();
  const value = f.value().value;
  const description = f.description().value.trim();
  const category = f.category().value.trim();
  const restart = f.restart().checked;
  if (!key) {
    fieldError('key', 'Enter a key, e.g. SLACK_BOT_TOKEN.');
    return;
  }
  if (form.mode !== 'edit' && !value) {
    fieldError('value', 'Enter a value.');
    return;
  }
  // Absent fields keep their current value (or the catalog's on create).
  const meta = {};
  if (description !== form.initial.description) meta.description = description;
  if (category !== form.initial.category) meta.category = category;
  if (restart !== form.initial.restartRequired) meta.restartRequired = restart;

  const save = $('#secret-form-save');
  save.disabled = true;
  try {
    let r;
    if (value) {
      const body = { value: encodeText(value), ...meta };
      if (form.etag) body.etag = form.etag;
      r = await api.put(key, body);
    } else if (Object.keys(meta).length === 0) {
      status('Nothing to change.');
      return;
    } else {
      r = await api.update(key, { ...meta, etag: form.etag });
    }
    const sec = r.secret || {};
    setMode('add');
    status(value ? `Saved ${sec.key || key} as version ${sec.currentVersion}.` : `Updated ${sec.key || key}.`);
    await load();
  } catch (e) {
    showApiError(e);
  } finally {
    save.disabled = false;
  }
}

// ---- versions ------------------------------------------------------------

const STATE_BADGES = {
  VERSION_STATE_ENABLED: ['Enabled', 'ok'],
  VERSION_STATE_DISABLED: ['Disabled', 'warn'],
  VERSION_STATE_DESTROYED: ['Destroyed', 'danger'],
};

async function openVersions(key) {
  state.versionsKey = key;
  $('#versions-title').textContent = `Versions of ${key}`;
  $('#versions-dialog').dataset.key = key;
  setText($('#versions-error'), '');
  clear($('#versions-rows'));
  const dlg = $('#versions-dialog');
  if (!dlg.open) dlg.showModal();
  await loadVersions();
}

async function loadVersions() {
  const key = state.versionsKey;
  const errBox = $('#versions-error');
  let versions;
  try {
    versions = (await api.versions(key)).items;
  } catch (e) {
    setText(errBox, 'Could not load versions: ' + e.userMessage);
    return;
  }
  const newest = versions.length ? Number(versions[0].version) : 0;
  const rows = clear($('#versions-rows'));
  for (const v of versions) {
    const n = Number(v.version);
    const [label, kind] = STATE_BADGES[v.state] || [String(v.state || 'Unknown'), 'muted'];
    const actions = el('div', { className: 'row-actions' });
    if (v.state === 'VERSION_STATE_ENABLED') {
      if (n !== newest) actions.append(button('Restore as new version', () => restore(key, n, newest), 'btn btn-small', { dataset: { action: 'restore' } }));
      actions.append(button('Disable', () => versionAction(key, n, 'disable'), 'btn btn-small', { dataset: { action: 'disable' } }));
    }
    if (v.state === 'VERSION_STATE_DISABLED') {
      actions.append(button('Enable', () => versionAction(key, n, 'enable'), 'btn btn-small', { dataset: { action: 'enable' } }));
    }
    if (v.state !== 'VERSION_STATE_DESTROYED') {
      actions.append(button('Destroy', () => destroy(key, n), 'btn btn-small btn-danger-text', { dataset: { action: 'destroy' } }));
    }
    rows.append(
      el(
        'tr',
        { dataset: { version: n, state: v.state } },
        el('td', { className: 'mono' }, 'v' + n, n === newest ? el('span', { className: 'badge badge-outline', text: 'Newest' }) : null),
        el('td', {}, badge(label, kind)),
        el('td', {}, timeEl(v.createTime)),
        el('td', { className: 'actor', text: v.createdBy || '' }),
        el('td', {}, actions),
      ),
    );
  }
  if (!versions.length) rows.append(el('tr', {}, el('td', { colSpan: 5, className: 'muted', text: 'No versions.' })));
}

async function versionAction(key, n, action) {
  try {
    await api.versionAction(key, n, action);
    setText($('#versions-error'), '');
  } catch (e) {
    setText($('#versions-error'), `Could not ${action} version ${n}: ${e.userMessage}`);
  }
  await Promise.all([loadVersions(), load()]);
}

async function destroy(key, n) {
  const ok = await confirmDialog({
    title: `Destroy version ${n} of ${key}?`,
    text: 'Its value is erased for good and cannot be restored. The version stays in the history.',
    ok: 'Destroy version',
  });
  if (ok) await versionAction(key, n, 'destroy');
}

// restore reads version n and writes its value as a new version.
async function restore(key, n, newest) {
  const ok = await confirmDialog({
    title: `Restore version ${n} of ${key}?`,
    text: `Its value is saved as a new version (${newest + 1}). Older versions are kept.`,
    ok: 'Restore',
    danger: false,
  });
  if (!ok) return;
  try {
    const r = await api.access(key, String(n));
    await api.put(key, { value: r.value });
    setText($('#versions-error'), '');
  } catch (e) {
    setText($('#versions-error'), `Could not restore version ${n}: ${e.userMessage}`);
  }
  await Promise.all([loadVersions(), load()]);
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
  state.revealed.clear();
}

export function reset() {
  state.items = [];
  state.revealed.clear();
  checks.clear();
  clear($('#secrets-list'));
  setMode('add');
}

// prefill opens the form for a key (from the Providers tab).
export function prefill(key) {
  const s = state.items.find((x) => x.key === key);
  if (s) editForm(isEmptySlot(s) ? 'fill' : 'edit', s);
}

export function init() {
  $('#secret-form').addEventListener('submit', submit);
  $('#secret-form-cancel').addEventListener('click', () => setMode('add'));
  $('#secrets-refresh').addEventListener('click', load);
  $('#secrets-filter').addEventListener('input', render);
  $('#secrets-show-empty').addEventListener('change', render);
  $('#sf-key').addEventListener('input', keyHint);
  $('#sf-value-toggle').addEventListener('click', () => {
    const v = f.value();
    v.type = v.type === 'password' ? 'text' : 'password';
    $('#sf-value-toggle').textContent = v.type === 'password' ? 'Show' : 'Hide';
  });
  $('#versions-close').addEventListener('click', () => $('#versions-dialog').close());
  setMode('add');
}

export function items() {
  return state.items;
}
