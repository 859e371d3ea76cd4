// The administration pages: Defenders, users and API tokens, the policy change
// history. Each shows what the API answers and offers only what the caller's role
// may do (the API decides; a refusal is shown as its message).
import { api, ApiError } from "./api.js";
import { clear, fmtTime, h, showFieldErrors } from "./dom.js";

const role = () => sessionStorage.getItem("cnnf.role") || "";
const isAdmin = () => role() === "admin";

function messageLine(id) {
  return h("p", { class: "error", role: "alert", id });
}

function fail(target, err) {
  target.className = "error";
  target.textContent = err instanceof Error ? err.message : String(err);
}

function done(target, text) {
  target.className = "ok";
  target.textContent = text;
}

// After a change: the list is reloaded first, then the message says what was
// done, so the page never says "Revoked" beside a row that still reads
// "connected". A list that cannot be reloaded is said too, beside what was done.
async function doneThenReload(target, text, load) {
  try {
    await load();
  } catch (err) {
    fail(target, `${text} The list could not be reloaded: ${err instanceof Error ? err.message : String(err)}`);
    return;
  }
  done(target, text);
}

// --- Defenders -------------------------------------------------------------------

const STATUS_TEXT = { connected: "connected", disconnected: "not connected", revoked: "revoked" };

// "Datapath up" as the Defender last reported it; a Defender not connected may
// have changed since, so its answer is marked as its last one.
function datapathCell(d) {
  if (d.datapathUp === null || d.datapathUp === undefined) {
    return h("span", { class: "muted" }, d.status === "revoked" ? "–" : "not reported");
  }
  const last = d.status === "connected" ? "" : " (last report)";
  if (d.datapathUp) return h("span", { class: "badge datapath-up" }, `up${last}`);
  return [h("span", { class: "badge datapath-down" }, `down${last}`),
    h("ul", { class: "small problems" }, d.datapathProblems.map((p) => h("li", {}, p)))];
}

export async function renderDefenders(main) {
  const message = messageLine("defenders-message");
  const body = h("tbody", {});
  clear(main).append(h("section", { class: "page" },
    h("h1", {}, "Defenders"),
    h("p", { class: "muted" }, "One Defender per host. Connected: it called the Console in the last 30 seconds. "
      + "Datapath up: its own check found its verdict workers running, its SYN queues bound and its firewall chains and sets in place (checked every 2 seconds; what is wrong is listed). "
      + "Revoking refuses its credential from then on and removes its workloads from Radar."),
    message,
    h("table", { class: "grid", id: "defenders" },
      h("thead", {}, h("tr", {}, ["Host", "Version", "Status", "Datapath", "Last report", "Enrolled", "Workloads", "Protected addresses", ""]
        .map((t) => h("th", { scope: "col" }, t)))),
      body)));

  async function load() {
    const defenders = await api("GET", "/defenders");
    clear(body).append(...defenders.map((d) => h("tr", { dataset: { id: d.id, host: d.hostname }, class: d.status === "revoked" ? "disabled" : "" },
      h("td", {}, d.hostname),
      h("td", {}, d.version || "not reported"),
      h("td", {}, h("span", { class: `badge status-${d.status}` }, STATUS_TEXT[d.status] || d.status)),
      h("td", { class: "datapath" }, datapathCell(d)),
      h("td", {}, d.lastSeen ? fmtTime(d.lastSeen) : "never"),
      h("td", {}, fmtTime(d.enrolled)),
      h("td", { class: "num" }, d.workloads),
      h("td", { class: "num" }, d.protected),
      h("td", { class: "actions" }, isAdmin() && d.status !== "revoked"
        ? h("button", { type: "button", class: "danger", "aria-label": `Revoke the Defender of ${d.hostname}`, onclick: () => revoke(d) }, "Revoke")
        : null))));
    if (!defenders.length) body.append(h("tr", {}, h("td", { colspan: 9, class: "muted" }, "No Defender has enrolled yet.")));
  }

  async function revoke(d) {
    if (!window.confirm(`Revoke the Defender of ${d.hostname}? It can no longer report or fetch policy.`)) return;
    try {
      await api("DELETE", `/defenders/${encodeURIComponent(d.id)}`);
      await doneThenReload(message, `Revoked the Defender of ${d.hostname}.`, load);
    } catch (err) { fail(message, err); }
  }

  try { await load(); } catch (err) { fail(message, err); }
}

// --- users and API tokens ----------------------------------------------------------

export async function renderUsers(main) {
  const message = messageLine("users-message");
  const section = h("section", { class: "page" }, h("h1", {}, isAdmin() ? "Users and API tokens" : "API tokens"), message);
  clear(main).append(section);
  if (isAdmin()) section.append(usersCard(message));
  section.append(tokensCard(message));
}

function usersCard(message) {
  const body = h("tbody", {});
  const formError = messageLine("user-form-error");
  const form = h("form", { id: "user-form", class: "stack" },
    h("h3", {}, "New user"),
    h("label", {}, "User name", h("input", { name: "name", autocomplete: "off", required: true })),
    h("label", {}, "Role", h("select", { name: "role" }, ["admin", "operator", "auditor"].map((r) => h("option", { value: r, selected: r === "operator" }, r)))),
    h("label", {}, "Password", h("input", { name: "password", type: "password", autocomplete: "new-password", required: true })),
    h("div", { class: "buttons" }, h("button", { type: "submit" }, "Create user")),
    formError);
  const card = h("div", { class: "card" }, h("h2", {}, "Users"),
    h("table", { class: "grid", id: "users" },
      h("thead", {}, h("tr", {}, ["Name", "Role", "State", "Created", ""].map((t) => h("th", { scope: "col" }, t)))), body),
    form);

  async function load() {
    const users = await api("GET", "/users");
    clear(body).append(...users.map((u) => h("tr", { dataset: { name: u.name }, class: u.disabled ? "disabled" : "" },
      h("td", {}, u.name), h("td", {}, u.role), h("td", {}, u.disabled ? "disabled" : "enabled"), h("td", {}, fmtTime(u.created)),
      h("td", { class: "actions" },
        h("button", { type: "button", class: "secondary", "aria-label": `${u.disabled ? "Enable" : "Disable"} ${u.name}`, onclick: () => toggle(u) }, u.disabled ? "Enable" : "Disable"),
        h("button", { type: "button", class: "danger", "aria-label": `Delete ${u.name}`, onclick: () => remove(u) }, "Delete")))));
  }

  async function toggle(u) {
    try {
      await api("PATCH", `/users/${encodeURIComponent(u.name)}`, { body: { disabled: !u.disabled } });
      await doneThenReload(message, `${u.disabled ? "Enabled" : "Disabled"} ${u.name}.`, load);
    } catch (err) { fail(message, err); }
  }

  async function remove(u) {
    if (!window.confirm(`Delete user ${u.name} and their API tokens?`)) return;
    try {
      await api("DELETE", `/users/${encodeURIComponent(u.name)}`);
      await doneThenReload(message, `Deleted user ${u.name}.`, load);
    } catch (err) { fail(message, err); }
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const d = new FormData(form);
    formError.textContent = "";
    try {
      const u = await api("POST", "/users", { body: { name: d.get("name"), role: d.get("role"), password: d.get("password") } });
      form.reset();
      showFieldErrors(form, [], null);
      await doneThenReload(message, `Created user ${u.name} (${u.role}).`, load);
    } catch (err) {
      if (err instanceof ApiError && err.errors.length) showFieldErrors(form, err.errors, formError);
      else fail(formError, err);
    }
  });
  load().catch((err) => fail(message, err));
  return card;
}

function tokensCard(message) {
  const body = h("tbody", {});
  const shown = h("div", { id: "new-token", role: "status" });
  const formError = messageLine("token-form-error");
  const form = h("form", { id: "token-form", class: "stack" },
    h("h3", {}, "New API token"),
    h("label", {}, "Name", h("input", { name: "name", autocomplete: "off", required: true, placeholder: "what uses it, e.g. ci-pipeline" })),
    h("label", {}, "Expires after (days, empty: never)", h("input", { name: "expiresInDays", type: "number", min: 1, max: 3650 })),
    h("div", { class: "buttons" }, h("button", { type: "submit" }, "Create token")),
    formError, shown);
  const admin = isAdmin();
  const card = h("div", { class: "card" }, h("h2", {}, admin ? "API tokens (every user's)" : "Your API tokens"),
    h("p", { class: "muted" }, "A token acts with its user's role. Its secret is shown once, when it is created."),
    h("table", { class: "grid", id: "tokens" },
      h("thead", {}, h("tr", {}, ["Id", "User", "Name", "Created", "Expires", "Last used", ""].map((t) => h("th", { scope: "col" }, t)))), body),
    form);

  async function load() {
    const tokens = (await api("GET", "/tokens", { query: admin ? { all: "true" } : {} })).filter((t) => t.kind === "api");
    clear(body).append(...tokens.map((t) => h("tr", { dataset: { id: t.id, name: t.name } },
      h("td", {}, t.id), h("td", {}, t.user), h("td", {}, t.name), h("td", {}, fmtTime(t.created)),
      h("td", {}, t.expires ? fmtTime(t.expires) : "never"), h("td", {}, t.lastUsed ? fmtTime(t.lastUsed) : "never"),
      h("td", { class: "actions" }, h("button", { type: "button", class: "danger", "aria-label": `Revoke token ${t.name}`, onclick: () => revoke(t) }, "Revoke")))));
    if (!tokens.length) body.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No API tokens.")));
  }

  async function revoke(t) {
    if (!window.confirm(`Revoke token ${t.name} of ${t.user}? Whatever uses it gets 401 from then on.`)) return;
    try {
      await api("DELETE", `/tokens/${t.id}`);
      done(message, `Revoked token ${t.name} of ${t.user}.`);
      clear(shown);
      await load();
    } catch (err) { fail(message, err); }
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const d = new FormData(form);
    formError.textContent = "";
    const body = { name: d.get("name") };
    if (d.get("expiresInDays")) body.expiresInDays = Number(d.get("expiresInDays"));
    try {
      const created = await api("POST", "/tokens", { body });
      form.reset();
      clear(shown).append(h("p", { class: "ok" }, `Created token ${created.info.name}. Copy it now; it is not shown again:`),
        h("code", { id: "new-token-secret" }, created.token));
      await load();
    } catch (err) {
      if (err instanceof ApiError && err.errors.length) showFieldErrors(form, err.errors, formError);
      else fail(formError, err);
    }
  });
  load().catch((err) => fail(message, err));
  return card;
}

// --- policy change history --------------------------------------------------------

function summary(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value !== "object") return String(value);
  return JSON.stringify(value);
}

export async function renderChanges(main) {
  const PAGE = 50;
  let offset = 0;
  const message = messageLine("changes-message");
  const body = h("tbody", {});
  const pager = h("span", { id: "changes-pager" });
  const prev = h("button", { type: "button", class: "secondary", id: "changes-prev", onclick: () => { offset = Math.max(0, offset - PAGE); load(); } }, "Previous");
  const next = h("button", { type: "button", class: "secondary", id: "changes-next", onclick: () => { offset += PAGE; load(); } }, "Next");
  clear(main).append(h("section", { class: "page" },
    h("h1", {}, "Policy changes"),
    h("p", { class: "muted" }, "Every change to rules, objects and settings, newest first: who, when, the revision it made, before and after."),
    message,
    h("table", { class: "grid", id: "changes" },
      h("thead", {}, h("tr", {}, ["Time", "Revision", "Who", "Action", "What", "Before", "After"].map((t) => h("th", { scope: "col" }, t)))), body),
    h("div", { class: "buttons" }, prev, pager, next)));

  async function load() {
    try {
      const page = await api("GET", "/changes", { query: { limit: PAGE, offset } });
      message.textContent = "";
      clear(body).append(...page.items.map((c) => h("tr", { dataset: { id: c.id } },
        h("td", { class: "nowrap" }, fmtTime(c.at)), h("td", { class: "num" }, c.revision), h("td", {}, c.actor),
        h("td", {}, c.action), h("td", {}, c.resource),
        h("td", { class: "small json" }, summary(c.before)), h("td", { class: "small json" }, summary(c.after)))));
      if (!page.items.length) body.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No policy changes yet.")));
      pager.textContent = page.total ? `${offset + 1}–${offset + page.items.length} of ${page.total}` : "0 of 0";
      prev.disabled = offset === 0;
      next.disabled = offset + page.items.length >= page.total;
    } catch (err) { fail(message, err); }
  }
  await load();
}

// --- unknown routes ------------------------------------------------------------------

export function renderNotFound(main, page) {
  clear(main).append(h("section", { class: "page", id: "not-found" },
    h("h1", {}, "Page not found"),
    h("p", {}, `There is no page "#/${page}" in the Console.`),
    h("p", {}, h("a", { href: "#/radar" }, "Go to Radar"))));
}
