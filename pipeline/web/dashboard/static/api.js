// The ops API, as the dashboard calls it: the session cookie travels by itself (same origin);
// the CSRF token the API gives at sign-in is kept in memory only and sent with every unsafe call.

const API_BASE = '/api/ops';

let csrfToken = null;

/** An answer that is not a success, or no answer at all (status 0). */
class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }

  get unreachable() {
    return this.status === 0 || this.status >= 500;
  }
}

function messageOf(data) {
  if (!data) return null;
  if (typeof data.error === 'string') return data.error;
  if (typeof data.detail === 'string') return data.detail;
  if (Array.isArray(data.detail)) return data.detail.map((d) => d.msg ?? String(d)).join('; ');
  return null;
}

function url(path, query) {
  const target = new URL(API_BASE + path, window.location.origin);
  for (const [key, value] of Object.entries(query ?? {})) {
    if (value !== null && value !== undefined && value !== '' && value !== false) target.searchParams.set(key, value);
  }
  return target;
}

/** Call the API; resolves to the parsed JSON, rejects with an ApiError. */
export async function call(path, {method = 'GET', body, query} = {}) {
  const headers = {Accept: 'application/json'};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && csrfToken) headers['X-CSRF-Token'] = csrfToken;
  let response;
  try {
    response = await fetch(url(path, query), {
      method, headers, credentials: 'same-origin', cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, 'The ops API did not answer: the server is down or the network is.');
  }
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) {
    throw new ApiError(response.status, messageOf(data) ?? `The ops API answered ${response.status} ${response.statusText}.`);
  }
  return data;
}

export const get = (path, query) => call(path, {query});
export const post = (path, body) => call(path, {method: 'POST', body});
export const remove = (path) => call(path, {method: 'DELETE'});

/** The session of this browser ({role, csrf_token}), or null when signed out. */
export async function currentSession() {
  try {
    const session = await get('/session');
    csrfToken = session.csrf_token;
    return session;
  } catch (error) {
    if (error.status === 401) return null;
    throw error;
  }
}

export async function signIn(token) {
  const session = await post('/session', {token});
  csrfToken = session.csrf_token;
  return session;
}

export async function signOut() {
  try {
    await remove('/session');
  } finally {
    csrfToken = null;
  }
}
