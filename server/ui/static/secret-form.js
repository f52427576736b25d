// secret-form.js: the Secrets tab's add / set / edit form.
//
// Errors follow GOV.UK's pattern: each message sits under its field, is
// tied to it with aria-describedby, the field is marked aria-invalid, and
// the first invalid field takes the focus. Saving is a job (dom.js
// guard): a second submit while saving (a double click, Enter held in a
// field) is ignored, and Save says it is busy without being disabled.

import { secrets as api, encodeText } from './api.js';
import { el, $, clear, setText, announce, describedBy, focusFirst, guard, jobName } from './dom.js';
import { CATEGORY_NAMES, compareCategories, items, load, focusInRow } from './secrets.js';

const form = {
  mode: 'add',
  key: '',
  etag: '',
  initial: { description: '', category: '', restartRequired: false },
  // The row control that opened the form (for Cancel): {key, action}.
  opener: null,
};

const SAVE_JOB = jobName('save secret');

const f = {
  key: () => $('#sf-key'),
  category: () => $('#sf-category'),
  description: () => $('#sf-description'),
  value: () => $('#sf-value'),
  restart: () => $('#sf-restart'),
};

// The input each error message belongs to.
const FIELD_INPUTS = { key: 'sf-key', category: 'sf-category', description: 'sf-description', value: 'sf-value', restartRequired: 'sf-restart' };

export function fillCategoryList() {
  const cats = new Set([...Object.keys(CATEGORY_NAMES), ...items().map((s) => s.category).filter(Boolean)]);
  clear($('#category-list')).append(...[...cats].sort(compareCategories).map((c) => el('option', { value: c })));
}

// status shows what the last action did, and says it in the live region.
export function status(text) {
  $('#secret-form-status').textContent = text;
  if (text) announce(text);
}

function clearErrors() {
  for (const p of document.querySelectorAll('#secret-form .field-error')) setText(p, '');
  for (const id of Object.values(FIELD_INPUTS)) {
    const input = document.getElementById(id);
    input.removeAttribute('aria-invalid');
    describedBy(input, `${id}-error`, false);
  }
  describedBy($('#secret-form-save'), 'secret-form-error', false);
}

// fieldError shows text under field and returns its input (null when the
// form has no such field).
function fieldError(field, text) {
  const id = FIELD_INPUTS[field];
  const p = document.querySelector(`#secret-form .field-error[data-error-for="${field}"]`);
  if (!id || !p) return null;
  setText(p, text);
  const input = document.getElementById(id);
  input.setAttribute('aria-invalid', 'true');
  describedBy(input, p.id, true);
  return input;
}

// focusFirstInvalid focuses the first invalid field in the form's order.
function focusFirstInvalid() {
  return focusFirst(...document.querySelectorAll('#secret-form [aria-invalid="true"]'));
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
  if (placed) {
    focusFirstInvalid();
    return;
  }
  const msg = e.status === 409 && e.reason === 'ETAG_MISMATCH' ? 'This secret changed since you opened it. Reload and try again.' : e.userMessage;
  setText($('#secret-form-error'), msg);
  describedBy($('#secret-form-save'), 'secret-form-error', true);
}

export function setMode(mode, s) {
  clearErrors();
  status('');
  form.mode = mode;
  form.key = s ? s.key : '';
  form.etag = s && s.etag ? s.etag : '';
  form.initial = {
    description: s ? s.description || '' : '',
    category: s ? s.category || '' : '',
    restartRequired: s ? !!s.restartRequired : false,
  };
  if (mode === 'add') form.opener = null;
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
  $('#sf-value-toggle').firstChild.textContent = 'Show';
  $('#secret-form-cancel').hidden = mode === 'add';
  $('#secret-form-save').textContent = mode === 'edit' ? 'Save changes' : 'Save secret';
  const hints = [];
  if (s && s.valuePrefix) hints.push(`Expected shape: starts with ${s.valuePrefix}.`);
  if (mode === 'edit') hints.push(`Leave empty to keep the current value. A new value is saved as version ${Number(s.currentVersion || 0) + 1}.`);
  setText($('#sf-value-hint'), hints.join(' '));
}

// editForm opens the form for s; action names the row's control that
// opened it, which Cancel returns the focus to.
export function editForm(mode, s, action) {
  setMode(mode, s);
  form.opener = { key: s.key, action };
  $('#secret-form').scrollIntoView({ block: 'start' });
  (mode === 'edit' ? f.description() : f.value()).focus();
}

function cancel() {
  const opener = form.opener;
  setMode('add');
  if (!opener || !focusInRow(opener.key, opener.action)) f.key().focus();
}

// keyHint shows a catalog key's expected shape while a key is typed.
function keyHint() {
  if (form.mode !== 'add') return;
  const s = items().find((x) => x.key === f.key().value.trim());
  setText($('#sf-value-hint'), s && s.valuePrefix ? `Expected shape: starts with ${s.valuePrefix}.` : '');
}

function submit(ev) {
  ev.preventDefault();
  return guard(SAVE_JOB, save);
}

async function save() {
  clearErrors();
  status('');
  const key = f.key().value.trim();
  const value = f.value().value;
  const description = f.description().value.trim();
  const category = f.category().value.trim();
  const restart = f.restart().checked;
  if (!key) fieldError('key', 'Enter a key, e.g. SLACK_BOT_TOKEN.');
  if (form.mode !== 'edit' && !value) fieldError('value', 'Enter a value.');
  if (focusFirstInvalid()) return;
  // Absent fields keep their current value (or the catalog's on create).
  const meta = {};
  if (description !== form.initial.description) meta.description = description;
  if (category !== form.initial.category) meta.category = category;
  if (restart !== form.initial.restartRequired) meta.restartRequired = restart;

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
    const saved = sec.key || key;
    setMode('add');
    await load();
    status(value ? `Saved ${saved} as version ${sec.currentVersion}.` : `Updated ${saved}.`);
    // The saved secret's row shows the result; its Edit button is the
    // natural next step (and the opener when the form was opened from it).
    if (!focusInRow(saved, 'edit', 'reveal')) f.key().focus();
  } catch (e) {
    showApiError(e);
  }
}

export function init() {
  $('#secret-form-save').dataset.job = SAVE_JOB;
  $('#secret-form').addEventListener('submit', submit);
  $('#secret-form-cancel').addEventListener('click', cancel);
  $('#sf-key').addEventListener('input', keyHint);
  $('#sf-value-toggle').addEventListener('click', () => {
    const v = f.value();
    v.type = v.type === 'password' ? 'text' : 'password';
    $('#sf-value-toggle').firstChild.textContent = v.type === 'password' ? 'Show' : 'Hide';
    announce(v.type === 'password' ? 'The value is hidden.' : 'The value is visible.');
  });
  setMode('add');
}
