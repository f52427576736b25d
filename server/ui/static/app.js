// app.js: sign-in, tabs and the shell. The dashboard is plain JavaScript on
// top of the public REST gateway; see api.js for how it calls it.

import { session, request, onAuthError } from './api.js';
import { $, $$, setText, describedBy, focusFirst, closeDialogs, guard, forgetJobs, jobName } from './dom.js';
import * as secretsTab from './secrets.js';
import * as providersTab from './providers.js';
import * as auditTab from './audit.js';
import * as restart from './restart.js';

const TABS = { secrets: secretsTab, providers: providersTab, audit: auditTab };
const TITLES = { signin: 'Sign in', secrets: 'Secrets', providers: 'AI Providers', audit: 'Audit log' };
const SERVICE = 'Orient Secrets';
let current = '';
const SIGN_IN_JOB = jobName('sign in');
const TOKEN_CHARS = /^[\x21-\x7e]+$/;

// setTitle names the view in the document title (GOV.UK's "Page – Service").
function setTitle(view) {
  document.title = `${TITLES[view]} – ${SERVICE}`;
}

// signInError shows the sign-in form's error, tied to the token field.
function signInError(message) {
  setText($('#signin-error'), message || '');
  describedBy($('#signin-token'), 'signin-error', !!message);
  if (message) $('#signin-token').setAttribute('aria-invalid', 'true');
  else $('#signin-token').removeAttribute('aria-invalid');
}

function showSignIn(message) {
  restart.stop();
  current = '';
  // A dialog left open would cover the sign-in form and make its field
  // inert; the tabs' reset empties what the dialogs showed.
  closeDialogs();
  // Requests of the last session still on their way hold nothing back.
  forgetJobs();
  for (const t of Object.values(TABS)) t.reset();
  $('#shell').hidden = true;
  $('#signin').hidden = false;
  document.body.dataset.view = 'signin';
  setTitle('signin');
  signInError(message);
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
  focusHeading();
}

// focusHeading moves focus to the view's h1 (after sign-in and on a tab
// change), so the next Tab starts in the view and a screen reader reads
// where the user now is.
function focusHeading() {
  focusFirst(`#tab-${current} h1`);
}

function route() {
  if ($('#shell').hidden) return;
  let name = location.hash.replace(/^#/, '');
  if (!TABS[name]) name = 'secrets';
  const changed = current !== '' && current !== name;
  if (changed) TABS[current].hideTab();
  current = name;
  setTitle(name);
  document.body.dataset.tab = name;
  for (const a of $$('.nav-item')) {
    if (a.dataset.tab === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  for (const p of $$('[data-panel]')) p.hidden = p.dataset.panel !== name;
  setText($('#global-error'), '');
  TABS[name].show();
  if (changed) focusHeading();
}

// Signing in is a job (dom.js guard): a second submit meanwhile is
// ignored; the button says it is busy without being disabled, which would
// drop the keyboard focus to the page.
function signIn(ev) {
  ev.preventDefault();
  return guard(SIGN_IN_JOB, checkToken);
}

async function checkToken() {
  const input = $('#signin-token');
  const token = input.value.trim();
  if (!token) {
    signInError('Enter a token.');
    input.focus();
    return;
  }
  // A header holds printable ASCII only: fetch() would throw on anything
  // else (a curly quote pasted from a document), which reads as "Cannot
  // reach the server".
  if (!TOKEN_CHARS.test(token)) {
    signInError('The token has invalid characters: a token is printable ASCII without spaces. Copy it again.');
    input.focus();
    return;
  }
  signInError('');
  session.set(token);
  try {
    // Any call checks the token; listing one secret is cheap.
    await request('GET', '/v1/secrets', { query: { pageSize: 1 } });
    input.value = '';
    showShell();
  } catch (e) {
    session.clear();
    signInError(e.userMessage);
    document.body.dataset.view = 'signin';
    input.focus();
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
  $('#signin-submit').dataset.job = SIGN_IN_JOB;
  $('#signin-form').addEventListener('submit', signIn);
  $('#signout').addEventListener('click', signOut);
  // The skip link focuses the view's heading; following its href would
  // change the hash, which names the tab.
  $('#skip-link').addEventListener('click', (e) => {
    e.preventDefault();
    focusHeading();
  });
  window.addEventListener('hashchange', route);
  window.addEventListener('orient:edit-secret', async (e) => {
    location.hash = '#secrets';
    await secretsTab.load();
    secretsTab.prefill(e.detail.key, e.detail.opener);
  });
  restart.onChange(() => secretsTab.onChange());
  if (session.token()) showShell();
  else showSignIn('');
}

init();
