// versions.js: a secret's version history in a dialog: restore, disable,
// enable and destroy. Rows are kept by version and rebuilt only when their
// version changed, so the control a keyboard user pressed stays (or its
// successor, Enable after Disable, takes the focus).

import { secrets as api } from './api.js';
import { el, $, clear, setText, button, badge, timeEl, confirmDialog, shown, tableRoles, focusFirst, announce, jobName } from './dom.js';
import { load, focusInRow } from './secrets.js';

const STATE_BADGES = {
  VERSION_STATE_ENABLED: ['Enabled', 'ok'],
  VERSION_STATE_DISABLED: ['Disabled', 'warn'],
  VERSION_STATE_DESTROYED: ['Destroyed', 'danger'],
};

// After an action on a version, the same row's control that takes the
// focus: the first of these that the row now has.
const NEXT_FOCUS = {
  disable: ['enable', 'destroy'],
  enable: ['disable', 'destroy'],
  destroy: [],
  restore: ['restore', 'disable'],
};

let versionsKey = '';
// version -> {sig, tr}
let rows = new Map();

export async function openVersions(key) {
  versionsKey = key;
  rows = new Map();
  $('#versions-title').textContent = `Versions of ${key}`;
  $('#versions-dialog').dataset.key = key;
  setText($('#versions-error'), '');
  clear($('#versions-rows'));
  const dlg = $('#versions-dialog');
  if (!dlg.open) dlg.showModal();
  $('#versions-close').focus();
  await loadVersions();
}

const rowSel = (n) => `#versions-rows tr[data-version="${n}"]`;

// focusVersion focuses the first of version n's controls named by actions,
// else the dialog's title.
function focusVersion(n, actions) {
  focusFirst(...actions.map((a) => `${rowSel(n)} [data-action="${a}"]`), '#versions-title');
}

async function loadVersions() {
  const key = versionsKey;
  const errBox = $('#versions-error');
  let versions;
  try {
    versions = (await api.versions(key)).items;
  } catch (e) {
    setText(errBox, 'Could not load versions: ' + e.userMessage);
    return;
  }
  if (key !== versionsKey) return;
  const newest = versions.length ? Number(versions[0].version) : 0;
  const body = $('#versions-rows');
  const next = new Map();
  const nodes = [];
  for (const v of versions) {
    const n = Number(v.version);
    const sig = JSON.stringify([v.state, v.createTime, v.createdBy, n === newest]);
    let r = rows.get(n);
    if (!r || r.sig !== sig) r = { sig, tr: versionRow(key, v, n, newest) };
    next.set(n, r);
    nodes.push(r.tr);
  }
  rows = next;
  if (!versions.length) nodes.push(el('tr', {}, el('td', { colSpan: 5, className: 'muted', text: 'No versions.' })));
  const wanted = new Set(nodes);
  for (const child of [...body.children]) if (!wanted.has(child)) child.remove();
  let ref = body.firstElementChild;
  for (const n of nodes) {
    if (n === ref) ref = ref.nextElementSibling;
    else body.insertBefore(n, ref);
  }
  tableRoles(body.closest('table'));
}

function versionRow(key, v, n, newest) {
  const [label, kind] = STATE_BADGES[v.state] || [String(v.state || 'Unknown'), 'muted'];
  const actions = el('div', { className: 'row-actions' });
  // The version's controls are one job: while one of them waits for its
  // answer (or its confirmation), none of them sends another request.
  const job = jobName('version', key, n);
  const act = (text, action, fn, cls = 'btn btn-small') => button(text, fn, cls, { dataset: { action }, job }, `version ${n}`);
  if (v.state === 'VERSION_STATE_ENABLED') {
    if (n !== newest) actions.append(act('Restore as new version', 'restore', () => restore(key, n, newest)));
    actions.append(act('Disable', 'disable', () => versionAction(key, n, 'disable')));
  }
  if (v.state === 'VERSION_STATE_DISABLED') {
    actions.append(act('Enable', 'enable', () => versionAction(key, n, 'enable')));
  }
  if (v.state !== 'VERSION_STATE_DESTROYED') {
    actions.append(act('Destroy', 'destroy', () => destroy(key, n), 'btn btn-small btn-danger-text'));
  }
  return tableRoles(
    el(
      'tr',
      { dataset: { version: n, state: v.state } },
      el('td', { className: 'mono', dataset: { label: 'Version' } }, 'v' + n, n === newest ? el('span', { className: 'badge badge-outline', text: 'Newest' }) : null),
      el('td', { dataset: { label: 'State' } }, badge(label, kind)),
      el('td', { dataset: { label: 'Created' } }, timeEl(v.createTime)),
      el('td', { className: 'actor', dataset: { label: 'By' } }, shown(v.createdBy || '')),
      el('td', { dataset: { label: 'Actions' } }, actions),
    ),
  );
}

const PAST = { disable: 'Disabled', enable: 'Enabled', destroy: 'Destroyed' };

async function versionAction(key, n, action) {
  let done = false;
  try {
    await api.versionAction(key, n, action);
    setText($('#versions-error'), '');
    done = true;
  } catch (e) {
    setText($('#versions-error'), `Could not ${action} version ${n}: ${e.userMessage}`);
  }
  await Promise.all([loadVersions(), load()]);
  if (done) announce(`${PAST[action]} version ${n} of ${key}.`);
  focusVersion(n, done ? NEXT_FOCUS[action] : [action]);
}

async function destroy(key, n) {
  const ok = await confirmDialog({
    title: `Destroy version ${n} of ${key}?`,
    text: 'Its value is erased for good and cannot be restored. The version stays in the history.',
    ok: 'Destroy version',
  });
  if (ok) await versionAction(key, n, 'destroy');
  else focusVersion(n, ['destroy']);
}

// restore reads version n and writes its value as a new version.
async function restore(key, n, newest) {
  const ok = await confirmDialog({
    title: `Restore version ${n} of ${key}?`,
    text: `Its value is saved as a new version (${newest + 1}). Older versions are kept.`,
    ok: 'Restore',
    danger: false,
  });
  if (!ok) {
    focusVersion(n, ['restore']);
    return;
  }
  try {
    const r = await api.access(key, String(n));
    const w = await api.put(key, { value: r.value });
    setText($('#versions-error'), '');
    announce(`Restored version ${n} of ${key} as version ${w.secret?.currentVersion ?? newest + 1}.`);
  } catch (e) {
    setText($('#versions-error'), `Could not restore version ${n}: ${e.userMessage}`);
  }
  await Promise.all([loadVersions(), load()]);
  focusVersion(n, NEXT_FOCUS.restore);
}

// reset empties the dialog (on sign-out, which closes it): an answer still
// on its way is for a key no longer shown, and is dropped.
export function reset() {
  versionsKey = '';
  rows = new Map();
  $('#versions-title').textContent = 'Versions';
  delete $('#versions-dialog').dataset.key;
  setText($('#versions-error'), '');
  clear($('#versions-rows'));
}

export function init() {
  const dlg = $('#versions-dialog');
  $('#versions-close').addEventListener('click', () => dlg.close());
  // Closing (the button or Escape) returns the focus to the row's
  // Versions button, which opened the dialog; not when signed out.
  dlg.addEventListener('close', () => {
    if (!versionsKey || document.body.dataset.view !== 'shell') return;
    if (!focusInRow(versionsKey, 'versions')) focusFirst('#tab-secrets h1');
  });
}
