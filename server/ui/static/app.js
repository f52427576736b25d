// app.js: sign-in, tabs and the shell. The dashboard is plain JavaScript on
// top of the public REST gateway; see api.js for how it calls it.

import { session, request, onAuthError } from './api.js';
import { $, $$, setText } from './dom.js';
import * as secretsTab from './secrets.js';
import * as providersTab from './providers.js';
import * as auditTab from './audit.js';
import * as restart from './restart.js';

const TABS = { secrets: secretsTab, providers: providersTab, audit: auditTab };
let current = '';

function showSignIn(message) {
  restart.stop();
  current = '';
  for (const t of Object.values(TABS)) t.reset();
  $('#shell').hidden = true;
  $('#signin').hidden = false;
  document.body.dataset.view = 'signin';
  setText($('#signin-error'), message || '');
  const input = $('#signin-token');
  input.value = '';
  input.focus();
}

function showShell() {
  $('#signin').hidden = true;
  $('#shell').hidden = false;
  document.body.dataset.view = 'shell';
  setText($('#global-error'), '');
  restart.start();
  route();
}

function route() {
  if ($('#shell').hidden) return;
  let name = location.hash.replace(/^#/, '');
  if (!TABS[name]) name = 'secrets';
  if (current && current !== name) TABS[current].hideTab();
  current = name;
  document.body.dataset.tab = name;
  for (const a of $$('.nav-item')) {
    if (a.dataset.tab === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  for (const p of $$('[data-panel]')) p.hidden = p.dataset.panel !== name;
  setText($('#global-error'), '');
  TABS[name].show();
}

async function signIn(ev) {
  ev.preventDefault();
  const input = $('#signin-token');
  const token = input.value.trim();
  const err = $('#signin-error');
  if (!token) {
    setText(err, 'Enter a token.');
    return;
  }
  const btn = $('#signin-submit');
  btn.disabled = true;
  setText(err, '');
  session.set(token);
  try {
    // Any call checks the token; listing one secret is cheap.
    await request('GET', '/v1/secrets', { query: { pageSize: 1 } });
    input.value = '';
    showShell();
  } catch (e) {
    session.clear();
    setText(err, e.userMessage);
    document.body.dataset.view = 'signin';
  } finally {
    btn.disabled = false;
  }
}

function signOut() {
  session.clear();
  showSignIn('');
}

onAuthError((e) => {
  if ($('#shell').hidden) return; // the sign-in form shows its own message
  if (e.status === 401) {
    session.clear();
    showSignIn(e.userMessage);
  } else {
    setText($('#global-error'), e.userMessage);
  }
});

function init() {
  for (const t of Object.values(TABS)) t.init();
  $('#signin-form').addEventListener('submit', signIn);
  $('#signout').addEventListener('click', signOut);
  window.addEventListener('hashchange', route);
  window.addEventListener('orient:edit-secret', async (e) => {
    location.hash = '#secrets';
    await secretsTab.load();
    secretsTab.prefill(e.detail.key);
  });
  restart.onChange(() => secretsTab.onChange());
  if (session.token()) showShell();
  else showSignIn('');
}

init();
