// tsubame-ci placeholder UI: sign in, show who is signed in, sign out.
// Strict CSP: no inline code, and the DOM is only ever written with
// textContent (never innerHTML), so API data cannot inject markup.

const el = {
  status: document.getElementById("status"),
  error: document.getElementById("error"),
  form: document.getElementById("login-form"),
  username: document.getElementById("username"),
  password: document.getElementById("password"),
  loginButton: document.getElementById("login-button"),
  session: document.getElementById("session"),
  signedInAs: document.getElementById("signed-in-as"),
  logoutButton: document.getElementById("logout-button"),
};

// The CSRF token from login or /auth/me; sent as X-CSRF-Token on every
// state-changing request. Kept in memory only.
let csrfToken = null;

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// Turns a failed response into an ApiError whose message is the
// problem+json `detail` (or `title`), falling back to the status line.
async function apiError(response) {
  let message = `${response.status} ${response.statusText}`.trim();
  const type = response.headers.get("Content-Type") || "";
  if (type.includes("json")) {
    try {
      const problem = await response.json();
      message = problem.detail || problem.title || message;
    } catch {
      // Not JSON after all: keep the status line.
    }
  }
  const retry = response.headers.get("Retry-After");
  if (response.status === 429 && retry) {
    message += ` (try again in ${retry} s)`;
  }
  return new ApiError(response.status, message);
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const init = { method, headers, credentials: "same-origin" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  if (method !== "GET" && csrfToken) {
    headers["X-CSRF-Token"] = csrfToken;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, "The server cannot be reached.");
  }
  if (!response.ok) {
    throw await apiError(response);
  }
  return response.status === 204 ? null : response.json();
}

function showStatus(message) {
  el.status.textContent = message;
  el.status.hidden = !message;
}

function showError(message) {
  el.error.textContent = message;
  el.error.hidden = !message;
}

function showSignedOut() {
  csrfToken = null;
  el.session.hidden = true;
  el.form.hidden = false;
  showStatus("Not signed in.");
  el.username.focus();
}

function showSignedIn(data) {
  csrfToken = data.csrf_token;
  const { username, role } = data.user;
  el.form.hidden = true;
  el.session.hidden = false;
  showStatus("");
  el.signedInAs.textContent = `Signed in as ${username} (${role})`;
  el.logoutButton.focus();
}

async function loadSession() {
  try {
    showSignedIn(await api("GET", "/api/v1/auth/me"));
  } catch (err) {
    if (err.status === 401) {
      showSignedOut();
    } else {
      showSignedOut();
      showError(err.message);
    }
  }
}

async function onLogin(event) {
  event.preventDefault();
  showError("");
  const username = el.username.value.trim();
  const password = el.password.value;
  if (!username || !password) {
    showError("Enter a username and a password.");
    return;
  }
  el.loginButton.disabled = true;
  try {
    const data = await api("POST", "/api/v1/auth/login", { username, password });
    el.password.value = "";
    showSignedIn(data);
  } catch (err) {
    showError(err.message);
  } finally {
    el.loginButton.disabled = false;
  }
}

async function onLogout() {
  showError("");
  el.logoutButton.disabled = true;
  try {
    await api("POST", "/api/v1/auth/logout");
    showSignedOut();
  } catch (err) {
    if (err.status === 401) {
      showSignedOut(); // The session had already ended.
    } else {
      showError(err.message);
    }
  } finally {
    el.logoutButton.disabled = false;
  }
}

el.form.addEventListener("submit", onLogin);
el.logoutButton.addEventListener("click", onLogout);
loadSession();
