// providers.js: the AI Providers tab. A card per provider (configured or
// "Not set"), and the default provider and model of each use case.

import { providers as api } from './api.js';
import { el, $, clear, setText, badge, button, timeEl, shown, escapeControls, announce, describedBy, focusFirst, guard, jobName } from './dom.js';

const USE_CASES = {
  chat: 'Chat',
  code: 'Code',
  summary: 'Summary',
};

let providers = [];

export async function load() {
  const errBox = $('#providers-error');
  try {
    const [p, d] = await Promise.all([api.list(), api.defaults()]);
    providers = p.providers || [];
    setText(errBox, '');
    renderProviders();
    renderDefaults(d.defaults || []);
  } catch (e) {
    setText(errBox, 'Could not load providers: ' + e.userMessage);
  }
}

function renderProviders() {
  const list = clear($('#providers-list'));
  for (const p of providers) {
    const models = el('ul', { className: 'models' });
    for (const m of p.models || []) models.append(el('li', { className: 'mono' }, shown(m)));
    list.append(
      el(
        'section',
        { className: 'card provider', dataset: { provider: p.provider } },
        el(
          'div',
          { className: 'card-title-row' },
          el('h2', { className: 'h3' }, shown(p.displayName || p.provider)),
          p.configured ? badge('Configured', 'ok') : badge('Not set', 'muted'),
        ),
        el('div', { className: 'label', text: 'API key' }),
        el('div', { className: 'mono key' }, shown(p.key || '')),
        el(
          'div',
          { className: 'actions' },
          button(p.configured ? 'Change key' : 'Set key', () => openKey(p.key), 'btn btn-small' + (p.configured ? '' : ' btn-primary'), {}, p.key || ''),
        ),
        el('hr', { className: 'sep' }),
        el('div', { className: 'label', text: 'Models' }),
        models,
      ),
    );
  }
}

// openKey jumps to the Secrets tab with the provider's key in the form.
function openKey(key) {
  window.dispatchEvent(new CustomEvent('orient:edit-secret', { detail: { key } }));
}

function renderDefaults(defaults) {
  const list = clear($('#defaults-list'));
  const byCase = new Map(defaults.map((d) => [d.useCase, d]));
  const cases = [...new Set([...Object.keys(USE_CASES), ...byCase.keys()])];
  for (const useCase of cases) {
    list.append(defaultRow(useCase, byCase.get(useCase) || { useCase, provider: '', model: '' }));
  }
}

function defaultRow(useCase, d) {
  const id = `default-${useCase}`;
  const select = el('select', { className: 'input', id: `${id}-provider`, dataset: { field: 'provider' } });
  const known = providers.some((p) => p.provider === d.provider);
  for (const p of providers) {
    select.append(el('option', { value: p.provider, text: p.displayName || p.provider }));
  }
  if (d.provider && !known) select.append(el('option', { value: d.provider, text: escapeControls(d.provider) }));
  select.value = d.provider || '';

  const listId = `${id}-models`;
  const datalist = el('datalist', { id: listId });
  const model = el('input', {
    className: 'input mono',
    id: `${id}-model`,
    type: 'text',
    value: d.model || '',
    placeholder: 'Model name',
    spellcheck: false,
    autocomplete: 'off',
    dataset: { field: 'model' },
    attrs: { list: listId },
  });
  const fillModels = () => {
    const p = providers.find((x) => x.provider === select.value);
    clear(datalist).append(...((p && p.models) || []).map((m) => el('option', { value: m })));
  };
  fillModels();

  const providerErr = el('p', { className: 'field-error', id: `${id}-provider-error`, hidden: true, dataset: { errorFor: 'provider' } });
  const modelErr = el('p', { className: 'field-error', id: `${id}-model-error`, hidden: true, dataset: { errorFor: 'model' } });
  const formErr = el('p', { className: 'field-error', id: `${id}-error`, hidden: true, attrs: { role: 'alert' } });
  const statusEl = el('span', { className: 'status' });
  // fieldError shows an error under a field, tied to it, or clears it.
  const fieldError = (input, p, text) => {
    setText(p, text);
    describedBy(input, p.id, !!text);
    if (text) input.setAttribute('aria-invalid', 'true');
    else input.removeAttribute('aria-invalid');
  };
  const meta = el('div', { className: 'muted small meta' });
  const setMeta = (x) => {
    clear(meta);
    if (x.updatedBy || x.updateTime) meta.append('Set by ', el('span', { className: 'actor' }, shown(x.updatedBy || '?')), ' at ', timeEl(x.updateTime));
    else meta.append('Built-in default');
  };
  setMeta(d);

  const caseName = USE_CASES[useCase] || escapeControls(useCase);
  // Saving is a job (dom.js guard): a second submit while it is on its way
  // is ignored, and Save says it is busy without being disabled.
  const job = jobName('default', useCase);
  const save = el('button', { type: 'submit', className: 'btn btn-primary', dataset: { job } }, 'Save', el('span', { className: 'visually-hidden', text: ` ${caseName} default` }));
  const form = el(
    'form',
    { className: 'default-row', dataset: { useCase }, autocomplete: 'off', noValidate: true, attrs: { 'aria-labelledby': `${id}-title` } },
    el('h3', { className: 'label use-case', id: `${id}-title`, text: caseName }),
    el('div', { className: 'field' }, el('label', { className: 'label', htmlFor: select.id, text: 'Provider' }), select, providerErr),
    el('div', { className: 'field' }, el('label', { className: 'label', htmlFor: model.id, text: 'Model' }), model, datalist, modelErr),
    el('div', { className: 'default-actions' }, save, statusEl),
    el('div', { className: 'default-foot' }, meta, formErr),
  );
  select.addEventListener('change', () => {
    fillModels();
    const p = providers.find((x) => x.provider === select.value);
    if (p && p.models && p.models.length && !p.models.includes(model.value)) model.value = p.models[0];
  });
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    guard(job, () => saveDefault());
  });
  const saveDefault = async () => {
    fieldError(select, providerErr, '');
    fieldError(model, modelErr, '');
    setText(formErr, '');
    statusEl.textContent = '';
    try {
      const r = await api.setDefault(useCase, select.value, model.value.trim());
      const pd = r.providerDefault || {};
      model.value = pd.model || model.value;
      setMeta(pd);
      statusEl.textContent = 'Saved';
      announce(`Saved the ${caseName} default.`);
    } catch (e) {
      for (const v of e.fieldViolations || []) {
        const name = v.field.split('.').pop();
        if (name === 'provider') fieldError(select, providerErr, v.description);
        else if (name === 'model') fieldError(model, modelErr, v.description);
      }
      if (!focusFirst(...form.querySelectorAll('[aria-invalid="true"]'))) setText(formErr, e.userMessage);
    }
  };
  return form;
}

export function show() {
  load();
}

export function hideTab() {}

export function reset() {
  providers = [];
  clear($('#providers-list'));
  clear($('#defaults-list'));
}

export function init() {
  $('#providers-refresh').addEventListener('click', load);
}
