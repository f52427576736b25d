// api.js: the dashboard's only way to the server. Every call goes to the
// public REST gateway (/v1/...) with the signed-in token as a bearer token.
// The token lives in sessionStorage (this tab only), never in localStorage,
// a cookie or a URL.

const TOKEN_KEY = 'orientSecrets.token';

export const session = {
  token() {
    return sessionStorage.getItem(TOKEN_KEY) || '';
  },
  set(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
  },
  clear() {
    sessionStorage.removeItem(TOKEN_KEY);
  },
};

export const AUTH_MESSAGE = 'ensure you are authenticated as admin';

// gRPC status codes as the gateway reports them in error bodies.
const GRPC_HTTP = { 3: 400, 5: 404, 6: 409, 7: 403, 9: 400, 10: 409, 11: 400, 14: 503, 16: 401 };

// ApiError is a failed call: HTTP status, gRPC code, message and the field
// violations of a google.rpc.BadRequest detail.
export class ApiError extends Error {
  constructor(status, body) {
    const b = body && typeof body === 'object' ? body : {};
    super(typeof b.message === 'string' && b.message ? b.message : `HTTP ${status}`);
    this.name = 'ApiError';
    this.status = status;
    this.code = typeof b.code === 'number' ? b.code : 0;
    this.reason = '';
    this.fieldViolations = [];
    for (const d of Array.isArray(b.details) ? b.details : []) {
      if (!d || typeof d['@type'] !== 'string') continue;
      if (d['@type'].endsWith('google.rpc.BadRequest') && Array.isArray(d.fieldViolations)) {
        for (const v of d.fieldViolations) {
          this.fieldViolations.push({ field: String(v.field || ''), description: String(v.description || '') });
        }
      } else if (d['@type'].endsWith('google.rpc.ErrorInfo')) {
        this.reason = String(d.reason || '');
      }
    }
  }

  get isAuth() {
    return this.status === 401 || this.status === 403;
  }

  // userMessage is what people see: auth problems get the fixed hint.
  get userMessage() {
    if (this.status === 401) return `Not signed in or the token is not valid (HTTP 401): ${AUTH_MESSAGE}.`;
    if (this.status === 403) return `Permission denied (HTTP 403): ${AUTH_MESSAGE}.`;
    if (this.status === 0) return this.message;
    return this.message;
  }
}

// onAuthError is called with every 401/403 (set by app.js).
let authErrorHook = null;
export function onAuthError(fn) {
  authErrorHook = fn;
}

function authHeaders() {
  const h = { Accept: 'application/json' };
  const t = session.token();
  if (t) h.Authorization = 'Bearer ' + t;
  return h;
}

function queryString(query) {
  if (!query) return '';
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) {
    if (v === undefined || v === null || v === '') continue;
    if (Array.isArray(v)) v.forEach((x) => p.append(k, String(x)));
    else p.append(k, String(v));
  }
  const s = p.toString();
  return s ? '?' + s : '';
}

// request calls the gateway and returns the decoded JSON body, or throws an
// ApiError.
export async function request(method, path, { body, query, signal } = {}) {
  const headers = authHeaders();
  const init = { method, headers, signal, credentials: 'omit', cache: 'no-store', redirect: 'error' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path + queryString(query), init);
  } catch (e) {
    if (e && e.name === 'AbortError') throw e;
    throw new ApiError(0, { message: 'Cannot reach the server. Check your connection and try again.' });
  }
  const text = await res.text();
  let data = {};
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { message: `HTTP ${res.status}: unexpected answer from the server` };
    }
  }
  if (!res.ok) {
    const err = new ApiError(res.status, data);
    if (err.isAuth && authErrorHook) authErrorHook(err);
    throw err;
  }
  return data;
}

export const get = (path, query, opts) => request('GET', path, { ...opts, query });

const seg = (s) => encodeURIComponent(String(s));

// Base64 for protobuf bytes fields, over UTF-8 text.
export function encodeText(text) {
  const bytes = new TextEncoder().encode(text);
  let bin = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    bin += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(bin);
}

export function decodeText(b64) {
  const bin = atob(b64 || '');
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new TextDecoder('utf-8').decode(bytes);
}

// listAll follows next_page_token to the end.
async function listAll(path, field, query) {
  const out = [];
  let pageToken = '';
  let revision = '0';
  for (let i = 0; i < 100; i++) {
    const r = await get(path, { ...query, pageSize: 1000, pageToken });
    out.push(...(r[field] || []));
    if (r.revision) revision = r.revision;
    pageToken = r.nextPageToken || '';
    if (!pageToken) break;
  }
  return { items: out, revision };
}

export const secrets = {
  list: () => listAll('/v1/secrets', 'secrets'),
  get: (key) => get(`/v1/secrets/${seg(key)}`),
  put: (key, body) => request('PUT', `/v1/secrets/${seg(key)}`, { body }),
  // update sends only the fields present in fields: the gateway builds the
  // field mask from them.
  update: (key, fields) => request('PATCH', `/v1/secrets/${seg(key)}`, { body: fields }),
  remove: (key, etag) => request('DELETE', `/v1/secrets/${seg(key)}`, { query: { etag } }),
  // minRevision: the answer is at least as new as this revision (e.g. the
  // list on screen), whichever replica serves it.
  access: (key, version, minRevision) =>
    get(`/v1/secrets/${seg(key)}/versions/${seg(version)}:access`, minRevision ? { minRevision } : undefined),
  versions: (key) => listAll(`/v1/secrets/${seg(key)}/versions`, 'versions'),
  versionAction: (key, version, action) =>
    request('POST', `/v1/secrets/${seg(key)}/versions/${seg(version)}:${action}`, { body: {} }),
  // Consumers that still run changed values (gone ones left out), every page.
  consumers: () => listAll('/v1/consumers', 'consumers', { pendingOnly: true }),
  dismissConsumer: (consumer) => request('POST', '/v1/consumers:dismiss', { body: { consumer } }),
};

export const providers = {
  list: () => get('/v1/providers'),
  defaults: () => get('/v1/providers/defaults'),
  setDefault: (useCase, provider, model) =>
    request('PUT', `/v1/providers/defaults/${seg(useCase)}`, { body: { provider, model } }),
};

export const audit = {
  list: (query) => get('/v1/audit/events', query),
};

// watchChanges reads GET /v1/changes:watch, a stream of newline-delimited
// JSON messages {"result": {header|event|progress}}, calling onResult for
// each. fetch() with a stream reader, not EventSource: EventSource cannot
// send the Authorization header. Resolves when the server ends the stream;
// rejects with an ApiError on an error status or an in-stream error.
export async function watchChanges({ startRevision, signal, onOpen, onResult }) {
  const path = '/v1/changes:watch' + queryString({ startRevision: startRevision || 0 });
  let res;
  try {
    res = await fetch(path, { headers: authHeaders(), signal, credentials: 'omit', cache: 'no-store' });
  } catch (e) {
    if (e && e.name === 'AbortError') throw e;
    throw new ApiError(0, { message: 'Cannot reach the server' });
  }
  if (!res.ok || !res.body) {
    let data = {};
    try {
      data = await res.json();
    } catch {
      /* not JSON */
    }
    const err = new ApiError(res.status, data);
    if (err.isAuth && authErrorHook) authErrorHook(err);
    throw err;
  }
  if (onOpen) onOpen();
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (!line) continue;
      let msg;
      try {
        msg = JSON.parse(line);
      } catch {
        continue;
      }
      if (msg.error) {
        const code = Number(msg.error.code) || 0;
        throw new ApiError(GRPC_HTTP[code] || 500, msg.error);
      }
      if (msg.result) onResult(msg.result);
    }
  }
}
