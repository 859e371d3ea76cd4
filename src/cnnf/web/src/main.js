// The Console UI: sign-in, Radar, and the policy pages, routed by the URL hash.
import { api, ApiError, session } from "./api.js";
import { clear, h } from "./dom.js";
import { route } from "./route.js";
import { renderRadar } from "./radar.js";
import { renderLearn } from "./learn.js";
import { renderAudits, renderObjects, renderRules, renderSettings, renderTransfer } from "./policy.js";
import { renderChanges, renderDefenders, renderNotFound, renderUsers } from "./admin.js";

performance.mark("cnnf:script"); // the bundle compiled and run up to here

const main = document.getElementById("main");
const top = document.getElementById("top");
const who = document.getElementById("who");
let cleanup = null;

// Who is signed in, as last known in this tab (the sign-in's answer, then
// /auth/me's): shown at once on a reload, before the first page is drawn;
// /auth/me confirms it after that page (see the end of this file).
// Until /auth/me has answered, the remembered name is marked as not confirmed
// (muted, aria-busy, a title saying so): the session may have ended, or an
// admin may have changed the role since.
const WHO_KEY = "cnnf.who";
function showWho(text, confirmed = true) {
  who.textContent = text || "";
  who.classList.toggle("unconfirmed", !confirmed && !!text);
  if (!confirmed && text) {
    who.setAttribute("aria-busy", "true");
    who.title = "As signed in; being confirmed";
  } else {
    who.removeAttribute("aria-busy");
    who.removeAttribute("title");
  }
  if (text) sessionStorage.setItem(WHO_KEY, text);
  else sessionStorage.removeItem(WHO_KEY);
}
if (session.token) showWho(sessionStorage.getItem(WHO_KEY) || "", false);
else sessionStorage.removeItem(WHO_KEY);

const PAGES = {
  radar: renderRadar,
  rules: renderRules,
  objects: renderObjects,
  settings: renderSettings,
  transfer: renderTransfer,
  audits: renderAudits,
  learn: renderLearn,
  changes: renderChanges,
  defenders: renderDefenders,
  users: renderUsers,
};


// The boot script's /radar answer (boot.js) is for the first page shown only
// (Radar takes it as it starts): dropped once that page has started, whatever
// it is, so Radar opened later, or after signing in again, asks afresh.
async function show() {
  const shown = showPage();
  delete window.cnnfBoot;
  await shown;
}

async function showPage() {
  if (cleanup) { cleanup(); cleanup = null; }
  clear(main);
  if (!session.token) { renderLogin(); return; }
  const { page, args, query } = route();
  top.hidden = false;
  if (!Object.hasOwn(PAGES, page)) {
    document.body.dataset.page = "not-found";
    for (const a of document.querySelectorAll("#nav a")) a.classList.remove("active");
    renderNotFound(main, [page, ...args].join("/"));
    return;
  }
  const render = PAGES[page];
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.page === page);
    if (a.dataset.page === page) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  document.body.dataset.page = page;
  cleanup = (await render(main, args, query)) || null;
}

function renderLogin(message) {
  top.hidden = true;
  showWho(""); // nobody is signed in
  document.body.dataset.page = "login";
  const error = h("p", { class: "error", role: "alert", id: "login-error" }, message || "");
  const form = h("form", { id: "login", class: "card login" },
    h("h1", {}, "CNNF Console"),
    h("p", { class: "muted" }, "Cloud Native Network Firewall"),
    h("label", {}, "User name", h("input", { name: "username", autocomplete: "username", required: true })),
    h("label", {}, "Password", h("input", { name: "password", type: "password",
      autocomplete: "current-password", required: true })),
    h("button", { type: "submit" }, "Sign in"),
    error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    try {
      const result = await api("POST", "/auth/login",
        { body: { username: data.get("username"), password: data.get("password") } });
      session.token = result.token;
      sessionStorage.setItem("cnnf.role", result.role);
      // shown at once from the sign-in; /auth/me confirms it after the first page
      showWho(`${data.get("username")} (${result.role})`);
      show().finally(whoAmI).catch(() => {});
    } catch (err) {
      error.textContent = err instanceof ApiError ? err.message : String(err);
    }
  });
  clear(main).append(form);
}

// A 401 ends the session (api() shows the login, which clears the name); any
// other failure is tried once more, then the name stays marked unconfirmed.
async function whoAmI(retry = true) {
  try {
    const me = await api("GET", "/auth/me");
    if (session.token) showWho(`${me.name} (${me.role})`);
  } catch (err) {
    if (retry && session.token && !(err instanceof ApiError && err.status === 401)) {
      setTimeout(() => whoAmI(false), 2000);
    }
  }
}

document.getElementById("logout").addEventListener("click", async () => {
  try { await api("POST", "/auth/logout"); } catch { /* signed out either way */ }
  session.token = null;
  show();
});
// A 401: the login is shown once (a second 401, from a request already under
// way, leaves the form and what is typed in it alone).
session.onExpired = () => {
  if (cleanup) { cleanup(); cleanup = null; }
  if (document.body.dataset.page === "login") return;
  renderLogin("Your session ended; sign in again.");
};
window.addEventListener("hashchange", show);
// Who is signed in is asked once the first page is drawn: starting a request
// held the page's main thread for 75-250 ms here (measured with performance
// marks around fetch()), a quarter of Radar's first render when it came first.
show().finally(() => { if (session.token) whoAmI(); }).catch(() => {});

