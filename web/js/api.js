// SPDX-License-Identifier: Apache-2.0
// fetch wrapper: JSON both ways, the CSRF header on every write, one error
// shape (ApiError from problem+json), AbortSignal support, and a hook for
// 401 (the session ended: main.js sends the user to sign in, then back).

let csrfToken = null;
let unauthorizedHandler = null;

/** The CSRF token from login or /auth/me; kept in memory only. */
export function setCsrf(token) {
  csrfToken = token || null;
}

/** Called with no argument when an authenticated request answers 401. */
export function onUnauthorized(fn) {
  unauthorizedHandler = fn;
}

export class ApiError extends Error {
  /**
   * @param {number} status HTTP status (0: network failure)
   * @param {string} message problem `detail` or `title`
   * @param {object|null} problem the whole problem+json body
   */
  constructor(status, message, problem = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.problem = problem;
    /** @type {{field: string, message: string}[]} */
    this.errors = Array.isArray(problem?.errors) ? problem.errors : [];
  }
}

/** True for an AbortError (navigation cancelled the request). */
export function isAbort(err) {
  return err?.name === "AbortError";
}

async function toError(response) {
  let message = `${response.status} ${response.statusText}`.trim();
  let problem = null;
  const type = response.headers.get("Content-Type") || "";
  if (type.includes("json")) {
    try {
      problem = await response.json();
      message = problem.detail || problem.title || message;
    } catch {
      // Not JSON after all: keep the status line.
    }
  }
  const retry = response.headers.get("Retry-After");
  if (response.status === 429 && retry) message += ` (try again in ${retry} s)`;
  return new ApiError(response.status, message, problem);
}

/** "/api/v1/x" + {a: 1, b: ""} -> "/api/v1/x?a=1" (empty values left out). */
export function withQuery(path, query) {
  if (!query) return path;
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) {
    if (v === null || v === undefined || v === "") continue;
    params.set(k, String(v));
  }
  const qs = params.toString();
  return qs ? `${path}?${qs}` : path;
}

/**
 * One API call. Resolves to the parsed JSON (null for 204); rejects with ApiError.
 * @param {string} method
 * @param {string} path
 * @param {{body?: any, query?: object, signal?: AbortSignal}} [options]
 */
export async function api(method, path, { body, query, signal } = {}) {
  const headers = { Accept: "application/json" };
  const init = { method, headers, credentials: "same-origin", signal, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  if (method !== "GET" && csrfToken) headers["X-CSRF-Token"] = csrfToken;
  let response;
  try {
    response = await fetch(withQuery(path, query), init);
  } catch (err) {
    if (isAbort(err)) throw err;
    throw new ApiError(0, "The server cannot be reached. Check your connection and try again.");
  }
  if (!response.ok) {
    const error = await toError(response);
    const authCall = path.startsWith("/api/v1/auth/");
    if (response.status === 401 && !authCall && unauthorizedHandler) unauthorizedHandler();
    throw error;
  }
  return response.status === 204 ? null : response.json();
}

export const get = (path, query, signal) => api("GET", path, { query, signal });
export const post = (path, body, signal) => api("POST", path, { body, signal });
export const patch = (path, body, signal) => api("PATCH", path, { body, signal });
export const del = (path, signal) => api("DELETE", path, { signal });
