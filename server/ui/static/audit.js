// audit.js: the Audit log tab. Events newest first, filtered by key, actor,
// action and time, paged with the API's page tokens. Events never hold a
// value; every field a caller could have chosen (key, actor, detail,
// request id, peer) is shown as text with invisible characters escaped.

import { audit as api } from './api.js';
import { el, $, clear, setText, badge, timeEl, shown, escapeControls, tableRoles, focusFirst, announce, guard, jobName } from './dom.js';

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
// seq numbers the loads: only the answer to the latest is shown (an older
// one arriving late is dropped). Paging is a job (dom.js guard): while
// Older or Newer waits for its page, a second press of either is ignored.
let seq = 0;
const PAGE_JOB = jobName('audit page');

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

// load shows page target (the current one by default); with say, it
// announces what is shown.
async function load(target = page, say = false) {
  const err = $('#audit-form-error');
  const mine = ++seq;
  setText(err, '');
  let r;
  try {
    r = await api.list({ ...filter, pageToken: pages[target] });
  } catch (e) {
    if (mine !== seq) return;
    setText(err, 'Could not load the audit log: ' + e.userMessage);
    if (say) announce('Could not load the audit log.');
    return;
  }
  if (mine !== seq) return;
  page = target;
  nextToken = r.nextPageToken || '';
  const events = r.events || [];
  render(events);
  $('#audit-newer').disabled = page === 0;
  $('#audit-older').disabled = !nextToken;
  $('#audit-page').textContent = `Page ${page + 1}`;
  if (say) announce(events.length ? `Showing ${events.length} ${events.length === 1 ? 'event' : 'events'}, page ${page + 1}.` : 'No events match.');
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

// apply loads the first page of the filter in the form; say as for load.
async function apply(ev, say = !!ev) {
  if (ev) ev.preventDefault();
  try {
    filter = readFilter();
  } catch (e) {
    setText($('#audit-form-error'), e.message);
    return;
  }
  pages = [''];
  await load(0, say);
}

// keepPagerFocus: on the first or last page its button is disabled, which
// drops the focus to the page; the other button (or the table) takes it.
function keepPagerFocus(pressed, other) {
  if (!$(pressed).disabled) return;
  focusFirst(...[other, '#audit-scroll'].filter((sel) => !$(sel).disabled));
}

export function show() {
  apply(null, false);
}

export function hideTab() {}

export function reset() {
  $('#audit-form').reset();
  filter = {};
  pages = [''];
  page = 0;
  seq++;
  clear($('#audit-rows'));
}

export function init() {
  clear($('#action-list')).append(...ACTIONS.map((a) => el('option', { value: a })));
  $('#audit-form').addEventListener('submit', apply);
  $('#audit-clear').addEventListener('click', () => {
    $('#audit-form').reset();
    apply(null, true);
  });
  // The buttons are never disabled while their page loads (that would drop
  // the focus); they say they are busy, and a second press is ignored.
  $('#audit-newer').dataset.job = PAGE_JOB;
  $('#audit-older').dataset.job = PAGE_JOB;
  const pager = (pressed, other, target) => () =>
    guard(PAGE_JOB, async () => {
      const to = target();
      if (to === null) return;
      await load(to, true);
      keepPagerFocus(pressed, other);
    });
  $('#audit-older').addEventListener(
    'click',
    pager('#audit-older', '#audit-newer', () => {
      if (!nextToken) return null;
      pages[page + 1] = nextToken;
      return page + 1;
    }),
  );
  $('#audit-newer').addEventListener(
    'click',
    pager('#audit-newer', '#audit-older', () => (page === 0 ? null : page - 1)),
  );
}
