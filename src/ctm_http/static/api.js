// The JSON API, and nothing else: every call goes through request().
// Same-origin credentials, JSON bodies; a 401 on any route but /login sends the user back
// to the login form (through the handler app.js installs with onUnauthorized()).

export class ApiError extends Error {
  constructor(status, body) {
    const message = (body && (body.message || body.error)) || `Request failed (HTTP ${status})`;
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.body = body || { message };
  }
}

let unauthorizedHandler = () => {};

export function onUnauthorized(handler) {
  unauthorizedHandler = handler;
}

export async function request(method, path, body) {
  const init = {
    method,
    credentials: 'same-origin',
    headers: { Accept: 'application/json' },
    cache: 'no-store',
  };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, {
      message: 'Cannot reach the ctm server',
      error: 'The network request failed. Check that the server is running and try again.',
    });
  }
  let data = null;
  if (response.status !== 204) {
    const text = await response.text();
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (err) {
        data = { message: `Unexpected answer from the server (HTTP ${response.status})`, error: text.slice(0, 500) };
      }
    }
  }
  if (!response.ok) {
    const error = new ApiError(response.status, data);
    if (response.status === 401 && path !== '/login') unauthorizedHandler(error);
    throw error;
  }
  return data;
}

const enc = encodeURIComponent;

export const api = {
  me: () => request('GET', '/api/me'),
  login: (username, password) => request('POST', '/login', { username, password }),
  logout: () => request('POST', '/logout', {}),
  createUser: (username, password, isAdmin) =>
    request('POST', '/create_user', { username, password, is_admin: isAdmin }),
  users: () => request('GET', '/api/users'),
  // changes: any of { is_admin, disabled, password }
  updateUser: (username, changes) => request('PATCH', `/api/users/${enc(username)}`, changes),
  deleteUser: (username) => request('DELETE', `/api/users/${enc(username)}`),
  changeMyPassword: (currentPassword, newPassword) =>
    request('POST', '/api/me/password', { current_password: currentPassword, new_password: newPassword }),
  audit: ({ limit, before } = {}) => {
    const query = new URLSearchParams();
    if (limit) query.set('limit', String(limit));
    if (before) query.set('before', String(before));
    const qs = query.toString();
    return request('GET', `/api/audit${qs ? `?${qs}` : ''}`);
  },
  tokens: () => request('GET', '/api/tokens'),
  // expiresInDays: 1-3650 (the server's default, 90, when undefined)
  createToken: (name, expiresInDays) =>
    request('POST', '/api/tokens', { name, expires_in_days: expiresInDays }),
  deleteToken: (id) => request('DELETE', `/api/tokens/${enc(id)}`),

  environments: () => request('GET', '/api/conda/environments'),
  environmentStats: () => request('GET', '/api/conda/stats'),
  environment: (name) => request('GET', `/api/conda/environment/${enc(name)}`),
  createEnvironment: (body) => request('POST', '/api/conda/environment', body),
  renameEnvironment: (name, newName) =>
    request('PUT', `/api/conda/environment/${enc(name)}`, { new_name: newName }),
  deleteEnvironment: (name) => request('DELETE', `/api/conda/environment/${enc(name)}`),
  installPackages: (name, packages) =>
    request('POST', `/api/conda/environment/${enc(name)}/packages`, { packages }),
  removePackages: (name, packages) =>
    request('DELETE', `/api/conda/environment/${enc(name)}/packages`, { packages }),

  tasks: () => request('GET', '/api/tasks'),
  taskStats: () => request('GET', '/api/tasks/stats'),
  task: (id, limit) => request('GET', `/api/tasks/${enc(id)}${limit ? `?limit=${enc(limit)}` : ''}`),
  createTask: (body) => request('POST', '/api/tasks', body),
  stopTask: (id) => request('POST', `/api/tasks/${enc(id)}/stop`, {}),
  deleteTask: (id) => request('DELETE', `/api/tasks/${enc(id)}`),
  // A run's log: fetched by no request() here, but linked (download) and followed as
  // server-sent events (live.js: followLog).
  logUrl: (id, executionId, download) =>
    `/api/tasks/${enc(id)}/executions/${enc(executionId)}/log${download ? '?download=1' : ''}`,
};
