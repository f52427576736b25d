// dom.js: building elements safely. Every value from the API becomes a text
// node (textContent); nothing here ever parses a string as HTML.

// el(tag, props, ...children): props may hold className, text, title,
// dataset (object), attrs (object of plain attributes), on (object of event
// handlers) and any boolean/property like disabled, hidden, type, value.
// Children are nodes or strings (strings become text nodes); null, false and
// undefined are skipped.
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null) continue;
    switch (k) {
      case 'className':
        node.className = v;
        break;
      case 'text':
        node.textContent = String(v);
        break;
      case 'dataset':
        for (const [dk, dv] of Object.entries(v)) node.dataset[dk] = String(dv);
        break;
      case 'attrs':
        for (const [ak, av] of Object.entries(v)) {
          if (/^on/i.test(ak)) throw new Error('event handler attributes are not allowed');
          node.setAttribute(ak, String(av));
        }
        break;
      case 'on':
        for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
        break;
      case 'innerHTML':
      case 'outerHTML':
        throw new Error('HTML strings are not allowed');
      default:
        node[k] = v;
    }
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

// clear removes all children.
export function clear(node) {
  node.replaceChildren();
  return node;
}

// show / hide with the hidden attribute (inline styles are blocked by CSP).
export function show(node, on = true) {
  node.hidden = !on;
  return node;
}

// setText shows text in node, hiding the node when the text is empty.
export function setText(node, text) {
  node.textContent = text || '';
  node.hidden = !text;
}

export function button(label, onClick, className = 'btn btn-small', extra = {}) {
  return el('button', { type: 'button', className, text: label, on: { click: onClick }, ...extra });
}

export function badge(text, kind = '') {
  return el('span', { className: 'badge' + (kind ? ' badge-' + kind : ''), text });
}

const pad = (n) => String(n).padStart(2, '0');

// fmtTime renders an RFC 3339 timestamp as local "YYYY-MM-DD HH:MM:SS".
export function fmtTime(ts) {
  if (!ts) return '';
  const d = new Date(ts);
  if (Number.isNaN(d.getTime())) return String(ts);
  return (
    `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`
  );
}

// timeEl is a <time> element with the local time shown and the exact
// timestamp in its title.
export function timeEl(ts) {
  if (!ts) return el('span', { className: 'muted', text: '—' });
  return el('time', { className: 'mono time', text: fmtTime(ts), title: String(ts), attrs: { datetime: String(ts) } });
}

// confirmDialog asks a question in the page's own dialog (no window.confirm)
// and resolves to true when confirmed.
export function confirmDialog({ title, text, ok = 'Confirm', danger = true }) {
  const dlg = $('#confirm-dialog');
  $('#confirm-title').textContent = title;
  $('#confirm-text').textContent = text;
  const okBtn = $('#confirm-ok');
  okBtn.textContent = ok;
  okBtn.className = danger ? 'btn btn-danger' : 'btn btn-primary';
  return new Promise((resolve) => {
    const done = (v) => {
      okBtn.removeEventListener('click', onOk);
      $('#confirm-cancel').removeEventListener('click', onCancel);
      dlg.removeEventListener('cancel', onCancel);
      if (dlg.open) dlg.close();
      resolve(v);
    };
    const onOk = () => done(true);
    const onCancel = (e) => {
      if (e) e.preventDefault();
      done(false);
    };
    okBtn.addEventListener('click', onOk);
    $('#confirm-cancel').addEventListener('click', onCancel);
    dlg.addEventListener('cancel', onCancel);
    dlg.showModal();
    $('#confirm-cancel').focus();
  });
}
