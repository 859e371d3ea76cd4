// The Console API client: bearer token from sign-in, JSON in and out, errors
// carry the API's field list ({detail, errors: [{path, message}]}).
const TOKEN_KEY = "cnnf.token";

export class ApiError extends Error {
  constructor(status, detail, errors) {
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.errors = errors || [];
  }
}

export const session = {
  get token() { return sessionStorage.getItem(TOKEN_KEY); },
  set token(value) {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  },
  onExpired: () => {},
};

// The request api() sends: the URL and fetch options (the boot script starts
// Radar's first request with it before the bundle has loaded).
export function apiRequest(method, path, { body, query, headers } = {}) {
  const url = new URL(`/api/v1${path}`, location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
  }
  // no-store: conditional requests (If-None-Match) are the caller's, answered as is.
  const init = { method, headers: { ...(headers || {}) }, cache: "no-store" };
  if (session.token) init.headers.Authorization = `Bearer ${session.token}`;
  if (body !== undefined) {
    if (typeof body === "string") {
      init.body = body;
      init.headers["Content-Type"] ||= "application/json";
    } else {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
  }
  return { url: url.href, init };
}

export async function api(method, path, options = {}) {
  const { url, init } = apiRequest(method, path, options);
  return apiAnswer(path, await fetch(url, init), options);
}

// A response as api() returns it: the session ends on a 401, an error
// status throws an ApiError with the API's detail and field list.
export async function apiAnswer(path, response, { raw } = {}) {
  if (response.status === 401 && path !== "/auth/login") {
    session.token = null;
    session.onExpired();
  }
  if (!response.ok && !(raw && response.status === 304)) {
    let data = {};
    try { data = await response.json(); } catch { /* not JSON */ }
    const detail = typeof data.detail === "string" ? data.detail : response.statusText;
    throw new ApiError(response.status, detail, data.errors);
  }
  if (raw) return response;
  if (response.status === 204) return null;
  return response.json();
}

// Save a response body as a file (exports, CSV) through an object URL.
export async function download(path, query, fallbackName) {
  const response = await api("GET", path, { query, raw: true });
  const disposition = response.headers.get("Content-Disposition") || "";
  const match = /filename="([^"]+)"/.exec(disposition);
  const blob = await response.blob();
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = match ? match[1] : fallbackName;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}
