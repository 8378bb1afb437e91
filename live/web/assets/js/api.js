// The HTTP API (docs/api.md): JSON in and out, errors as {error, message}.

export class ApiError extends Error {
  constructor(status, body, headers) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.code = (body && body.error) || (status === 0 ? 'network' : 'http_error');
    this.body = body || {};
    this.retryAfter = Number(headers && headers.get && headers.get('Retry-After')) || 0;
  }
}

export async function api(method, path, { token, json, headers } = {}) {
  const h = { Accept: 'application/json', ...(headers || {}) };
  if (token) h.Authorization = `Bearer ${token}`;
  if (json !== undefined) h['Content-Type'] = 'application/json';
  let r;
  try {
    r = await fetch(path, { method, headers: h, body: json === undefined ? undefined : JSON.stringify(json) });
  } catch {
    throw new ApiError(0, { error: 'network', message: 'the server cannot be reached' });
  }
  const text = await r.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = { error: 'bad_response', message: text.slice(0, 200) };
  }
  if (!r.ok) throw new ApiError(r.status, body, r.headers);
  return body;
}

// A fresh Idempotency-Key; crypto.randomUUID only exists in secure contexts (not plain http on a LAN).
export function newKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}
