// restart.js: the change stream and the "Restart needed" banner.
//
// The stream (GET /v1/changes:watch) is read with fetch() and a stream
// reader, resuming from the last revision seen after a disconnect. A change
// that needs a restart refreshes the list of consumers (GET /v1/consumers);
// the list is also refreshed periodically, which is how the banner clears
// once services report the new revision.
//
// The banner is redrawn only when what it shows changes, item by item in
// place (an unchanged service's item, and a focused Dismiss button in it,
// stays put; a rebuilt item gives the focus to its successor), and it is
// not a live region: the page's polite live region (#announcer) says when
// the set of services needing a restart changes, once, not on every
// refresh.

import { watchChanges, secrets as api } from './api.js';
import { el, $, badge, button, fmtTime, shown, escapeControls, announce, focusFirst, jobName } from './dom.js';

const REFRESH_MS = 5000;
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 10000;

let ctrl = null;
let timer = 0;
let debounce = 0;
let lastRevision = 0;
let listeners = [];
// What the banner shows, and the services it names, as last rendered.
let shownSig = '';
let shownServices = '';
// service/instance -> {sig, li}: the banner's items on screen.
let items = new Map();

// onChange registers fn(event) for every change event.
export function onChange(fn) {
  listeners.push(fn);
}

export function start() {
  stop();
  ctrl = new AbortController();
  lastRevision = 0;
  watchLoop(ctrl.signal);
  refresh();
  timer = setInterval(refresh, REFRESH_MS);
}

export function stop() {
  if (ctrl) ctrl.abort();
  ctrl = null;
  clearInterval(timer);
  clearTimeout(debounce);
  setLive('offline');
  // Signing out is not news: forget the set before emptying the banner.
  shownServices = '';
  render([]);
  shownSig = '';
}

function setLive(stateName) {
  const node = $('#live-status');
  if (!node) return;
  node.dataset.state = stateName;
  node.textContent = { live: 'Live', reconnecting: 'Reconnecting…', offline: 'Offline' }[stateName];
  node.title = stateName === 'live' ? `Receiving changes (revision ${lastRevision})` : '';
}

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => {
      clearTimeout(t);
      resolve();
    });
  });

async function watchLoop(signal) {
  let backoff = BACKOFF_MIN_MS;
  while (!signal.aborted) {
    try {
      await watchChanges({
        startRevision: lastRevision,
        signal,
        onOpen: () => {
          setLive('live');
          backoff = BACKOFF_MIN_MS;
        },
        onResult: handle,
      });
    } catch (e) {
      if (signal.aborted) return;
      if (e.isAuth) {
        setLive('offline');
        return; // the auth hook takes over
      }
      // Resuming from a revision the server no longer keeps: start over
      // from now and refresh everything.
      if (e.code === 11 || e.reason === 'REVISION_COMPACTED' || e.status === 400) {
        lastRevision = 0;
        refresh();
        notify(null);
      }
    }
    if (signal.aborted) return;
    setLive('reconnecting');
    await sleep(backoff, signal);
    backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
  }
}

function handle(result) {
  if (result.header) {
    // Events follow from start_revision + 1; only a fresh watch (0) starts
    // from the header's revision.
    if (lastRevision === 0) lastRevision = Number(result.header.revision) || 0;
  } else if (result.event) {
    const ev = result.event;
    lastRevision = Math.max(lastRevision, Number(ev.revision) || 0);
    if (ev.restartRequired || ev.kind === 'CHANGE_KIND_CONSUMER_CHANGED') scheduleRefresh();
    notify(ev);
  } else if (result.progress) {
    lastRevision = Math.max(lastRevision, Number(result.progress.revision) || 0);
  }
  setLive('live');
}

function notify(ev) {
  for (const fn of listeners) {
    try {
      fn(ev);
    } catch (e) {
      console.error(e);
    }
  }
}

function scheduleRefresh() {
  clearTimeout(debounce);
  debounce = setTimeout(refresh, 100);
}

export async function refresh() {
  if (!ctrl) return;
  try {
    const r = await api.consumers();
    if (!ctrl) return;
    render((r.items || []).filter((c) => (c.pending || []).length > 0 && !c.gone));
  } catch {
    // Keep the last state; the next refresh tries again.
  }
}

const serviceName = (c) => `${c.consumer?.service || '?'}/${c.consumer?.instance || '?'}`;

function render(pending) {
  const banner = $('#restart-banner');
  if (!banner) return;
  const sig = JSON.stringify(pending.map((c) => [serviceName(c), c.loadedRevision, c.stale, c.lastSeen, (c.pending || []).map((p) => [p.key, p.revision])]));
  if (sig === shownSig) return;
  shownSig = sig;
  const names = [...new Set(pending.map(serviceName))].sort();
  const services = names.join('\n');
  if (services !== shownServices) {
    // Only a change of the set is news; the first render after sign-in
    // with nothing pending says nothing.
    if (names.length) announce(`Restart needed: ${names.map(escapeControls).join(', ')} still ${names.length === 1 ? 'runs' : 'run'} changed values.`);
    else if (shownServices) announce('No service needs a restart any more.');
    shownServices = services;
  }
  const list = $('#restart-list');
  const active = document.activeElement;
  const focusedItem = list.contains(active) ? active.closest('li') : null;
  const focusedName = focusedItem ? [...items].find(([, it]) => it.li === focusedItem)?.[0] : undefined;
  const next = new Map();
  const nodes = [];
  for (const c of pending) {
    let name = serviceName(c);
    while (next.has(name)) name += '\u0000'; // never two items under one name
    const itemSig = JSON.stringify([c.loadedRevision, c.stale, c.lastSeen, (c.pending || []).map((p) => [p.key, p.revision])]);
    let it = items.get(name);
    if (!it || it.sig !== itemSig) it = { sig: itemSig, li: bannerItem(c) };
    next.set(name, it);
    nodes.push(it.li);
  }
  items = next;
  // Move only what is out of place: a node that stays keeps its focus.
  const wanted = new Set(nodes);
  for (const child of [...list.children]) if (!wanted.has(child)) child.remove();
  let ref = list.firstElementChild;
  for (const n of nodes) {
    if (n === ref) ref = ref.nextElementSibling;
    else list.insertBefore(n, ref);
  }
  banner.hidden = pending.length === 0;
  // The focused item was rebuilt: its successor's Dismiss takes the focus;
  // it went: the next item's, else the view's heading.
  if (focusedItem && !active.isConnected) {
    const same = focusedName !== undefined && items.get(focusedName);
    focusFirst(same && $('[data-action="dismiss"]', same.li), '#restart-list [data-action="dismiss"]', '.tab:not([hidden]) h1');
  }
}

function bannerItem(c) {
  const who = c.consumer || {};
  const keys = el('span', { className: 'chips' });
  const seen = new Set();
  for (const p of c.pending || []) {
    if (seen.has(p.key)) continue;
    seen.add(p.key);
    keys.append(el('code', { className: 'chip mono', title: `changed at revision ${p.revision}` }, shown(p.key)));
  }
  return el(
    'li',
    { className: 'banner-item', dataset: { service: who.service || '', instance: who.instance || '' } },
    el('span', { className: 'mono service' }, shown(serviceName(c))),
    el('span', { className: 'muted small', text: `runs revision ${c.loadedRevision || 0}; changed since:` }),
    keys,
    c.stale ? badge(`Not seen since ${fmtTime(c.lastSeen)}`, 'muted') : null,
    // One dismissal per press (dom.js guard), also when the item is rebuilt
    // while it is on its way.
    button('Dismiss', () => dismiss(who, serviceName(c)), 'btn btn-small', { dataset: { action: 'dismiss' }, job: jobName('dismiss', who.service || '', who.instance || '') }, serviceName(c)),
  );
}

// dismiss forgets a consumer that will not report again (admins only; the
// server answers 403 to others). Focus moves to the next service's Dismiss
// button, else to the banner's heading, else the view's.
async function dismiss(consumer, name) {
  try {
    await api.dismissConsumer({ service: consumer.service, instance: consumer.instance });
  } catch (e) {
    announce(`Could not dismiss ${escapeControls(name)}: ${e.userMessage || e.message}`);
    return;
  }
  // After the refresh, so that this is what is said (not the banner's own
  // change of set, which it would otherwise cut short).
  await refresh();
  announce(`Dismissed ${escapeControls(name)}.`);
  focusFirst('#restart-list [data-action="dismiss"]', '#restart-title', 'main h1');
}
