// audit.js: the Audit log tab. Events newest first, filtered by key, actor,
// action and time, paged with the API's page tokens. Events never hold a
// value; every field a caller could have chosen (key, actor, detail,
// request id, peer) is shown as text with invisible characters escaped.

import { audit as api } from './api.js';
import { el, $, clear, setText, badge, timeEl, shown, escapeControls, tableRoles, focusFirst } from './dom.js';

const ACTIONS = [
  'PutSecret',
  'UpdateSecret',
  'AccessSecretVersion',
  'BatchAccessSecrets',
  'DisableSecretVersion',
  'EnableSecretVersion',
  'DestroySecretVersion',
  'DeleteSecret',
  'UpdateProviderDefault',
  'CreateToken',
  'RevokeToken',
];

// pages[i] is the page token of page i (pages[0] = '' is the first page).
let filter = {};
let pages = [''];
let page = 0;
let nextToken = '';

function readFilter() {
  const toISO = (v) => {
    if (!v) return '';
    const d = new Date(v);
    return Number.isNaN(d.getTime()) ? null : d.toISOString();
  };
  const start = toISO($('#af-start').value);
  const end = toISO($('#af-end').value);
  if (start === null || end === null) throw new Error('Enter a valid date and time.');
  return {
    key: $('#af-key').value.trim(),
    actor: $('#af-actor').value.trim(),
    action: $('#af-action').value.trim(),
    startTime: start,
    endTime: end,
    pageSize: $('#af-size').value,
  };
}

async function load() {
  const err = $('#audit-form-error');
  setText(err, '');
  let r;
  try {
    r = await api.list({ ...filter, pageToken: pages[page] });
  } catch (e) {
    setText(err, 'Could not load the audit log: ' + e.userMessage);
    return;
  }
  nextToken = r.nextPageToken || '';
  render(r.events || []);
  $('#audit-newer').disabled = page === 0;
  $('#audit-older').disabled = !nextToken;
  $('#audit-page').textContent = `Page ${page + 1}`;
}

function outcomeBadge(outcome) {
  return badge(escapeControls(outcome || '?'), outcome === 'OK' ? 'ok' : 'danger');
}

// detailCell holds the event's detail and, under it, the request id the
// caller sent; the peer address is its title.
function detailCell(e) {
  const td = el('td', { className: 'muted small detail', dataset: { label: 'Detail' }, title: e.peer ? `from ${escapeControls(e.peer)}` : '' });
  td.append(el('div', { className: 'detail-text' }, shown(e.detail || '')));
  if (e.requestId) td.append(el('div', { className: 'request-id' }, 'Request ', el('span', { className: 'mono' }, shown(e.requestId))));
  return td;
}

function render(events) {
  const rows = clear($('#audit-rows'));
  for (const e of events) {
    rows.append(
      el(
        'tr',
        { dataset: { sequence: e.sequence, action: e.action || '', key: e.key || '' } },
        el('td', { dataset: { label: 'Time' } }, timeEl(e.time)),
        el('td', { className: 'actor', dataset: { label: 'Actor' } }, shown(e.actor || '')),
        el('td', { className: 'action', dataset: { label: 'Action' } }, shown(e.action || '')),
        el('td', { className: 'mono key', dataset: { label: 'Key' } }, shown(e.key || '')),
        el('td', { className: 'mono version', dataset: { label: 'Version' }, text: Number(e.version) ? 'v' + e.version : '' }),
        el('td', { className: 'outcome', dataset: { label: 'Outcome' } }, outcomeBadge(e.outcome)),
        detailCell(e),
      ),
    );
  }
  if (!events.length) rows.append(el('tr', {}, el('td', { colSpan: 7, className: 'muted', text: 'No events match.' })));
  tableRoles($('#audit-table'));
}

async function apply(ev) {
  if (ev) ev.preventDefault();
  try {
    filter = readFilter();
  } catch (e) {
    setText($('#audit-form-error'), e.message);
    return;
  }
  pages = [''];
  page = 0;
  await load();
}

// keepPagerFocus: on the first or last page its button is disabled, which
// drops the focus to the page; the other button (or the table) takes it.
function keepPagerFocus(pressed, other) {
  if (!$(pressed).disabled) return;
  focusFirst(...[other, '#audit-scroll'].filter((sel) => !$(sel).disabled));
}

export function show() {
  apply();
}

export function hideTab() {}

export function reset() {
  $('#audit-form').reset();
  filter = {};
  pages = [''];
  page = 0;
  clear($('#audit-rows'));
}

export function init() {
  clear($('#action-list')).append(...ACTIONS.map((a) => el('option', { value: a })));
  $('#audit-form').addEventListener('submit', apply);
  $('#audit-clear').addEventListener('click', () => {
    $('#audit-form').reset();
    apply();
  });
  $('#audit-older').addEventListener('click', async () => {
    if (!nextToken) return;
    pages[page + 1] = nextToken;
    page++;
    await load();
    keepPagerFocus('#audit-older', '#audit-newer');
  });
  $('#audit-newer').addEventListener('click', async () => {
    if (page === 0) return;
    page--;
    await load();
    keepPagerFocus('#audit-newer', '#audit-older');
  });
}
