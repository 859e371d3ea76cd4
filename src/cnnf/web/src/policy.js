// The policy pages: rules (container and host tabs), network objects,
// settings, import / export, audits.
import { api, ApiError, download } from "./api.js";
import { auditBadge, clear, fmtClock, fmtTime, h, showFieldErrors } from "./dom.js";
import { impactPreview } from "./learn.js";

const list = (value) => String(value || "").split(",").map((s) => s.trim()).filter(Boolean);
const joined = (values) => (values || []).join(", ");

function errorLine(id) {
  return h("p", { class: "error", role: "alert", id });
}

function fail(target, err) {
  target.textContent = err instanceof Error ? err.message : String(err);
}

// --- rules ---------------------------------------------------------------------

export async function renderRules(main, args, query) {
  const kind = args[0] === "host" ? "host" : "container";
  const message = errorLine("rules-error");
  const editor = h("div", { id: "rule-editor" });
  const body = h("tbody", {});
  clear(main).append(h("section", { class: "page" },
    h("h1", {}, "Rules"),
    h("nav", { class: "tabs" },
      h("a", { href: "#/rules/container", class: kind === "container" ? "active" : "" }, "Container rules"),
      h("a", { href: "#/rules/host", class: kind === "host" ? "active" : "" }, "Host rules")),
    h("p", { class: "muted" }, "Rules are evaluated top to bottom; the first enabled match decides. Drag a row to reorder, or focus its handle (⠿) and press the up or down arrow."),
    h("p", { class: "muted small", id: "hits-note" }, "Hits: the connections the Defenders recorded as decided by the rule, from the stored flows (all time, as long as flows are kept); last: the newest of them."),
    h("button", { type: "button", id: "add-rule", onclick: () => edit(null) }, "Add rule"),
    message, editor,
    h("table", { class: "grid", id: "rules" },
      h("thead", {}, h("tr", {}, ["", "#", "Id", "Name", "Source", "Destination", "Ports", "Effect", "State", "Hits", ""].map((t) => h("th", {}, t)))),
      body)));

  let rules = [];
  let objects = [];
  let revision = null; // the policy revision the rules shown were read at (or later)

  async function load() {
    // The revision first: a change landing before the rules are read makes a
    // promote refused (409), never one of a rule not seen as shown.
    revision = (await api("GET", "/policy")).revision;
    [rules, objects] = await Promise.all([api("GET", `/rules/${kind}`), api("GET", "/objects")]);
    clear(body).append(...rules.map((r) => row(r)));
    if (!rules.length) body.append(h("tr", {}, h("td", { colspan: 11, class: "muted" }, "No rules yet.")));
    loadHits();
  }

  // Hit counts from the stored flows, as Radar's graph aggregates them: every
  // recorded verdict of a port names the rule that decided it then.
  async function loadHits() {
    try {
      const graph = await api("GET", "/radar", { query: { view: kind, group: "none" } });
      const hits = new Map();
      for (const e of graph.edges) {
        for (const p of e.ports) {
          for (const x of p.history || []) {
            if (!x.ruleId) continue;
            const have = hits.get(x.ruleId) || { count: 0, last: 0 };
            have.count += x.count;
            have.last = Math.max(have.last, x.lastSeen || 0);
            hits.set(x.ruleId, have);
          }
        }
      }
      for (const cell of body.querySelectorAll("td.hits")) {
        const hit = hits.get(Number(cell.dataset.rule));
        cell.textContent = hit ? hit.count.toLocaleString("en-US") : "0";
        cell.title = hit ? `last ${fmtTime(hit.last)}` : "no connection recorded";
      }
    } catch (err) {
      for (const cell of body.querySelectorAll("td.hits")) { cell.textContent = "?"; cell.title = err.message; }
    }
  }

  async function move(r, position, focusAfter) {
    try {
      await api("POST", `/rules/${kind}/${r.id}/move`, { body: { position } });
      message.textContent = "";
      await load();
      if (focusAfter) body.querySelector(`tr[data-id="${r.id}"] td.handle`)?.focus();
    } catch (err) { fail(message, err); }
  }

  let dragged = null;
  function row(r) {
    const tr = h("tr", { draggable: "true", dataset: { id: r.id }, class: r.disabled ? "disabled" : r.staged ? "staged" : "" },
      h("td", { class: "handle", title: "Drag to reorder, or press the up or down arrow", tabindex: 0, role: "button",
        "aria-label": `Move rule #${r.id} ${r.name} (position ${r.position + 1}): up or down arrow`,
        onkeydown: (e) => {
          if (e.key !== "ArrowUp" && e.key !== "ArrowDown") return;
          e.preventDefault();
          const to = r.position + (e.key === "ArrowUp" ? -1 : 1);
          if (to >= 0 && to < rules.length) move(r, to, true);
        } }, "⠿"),
      h("td", {}, r.position + 1), h("td", {}, r.id), h("td", {}, r.name), h("td", {}, r.src),
      h("td", {}, r.dst), h("td", {}, r.ports.join(", ")),
      h("td", {}, h("span", { class: `badge ${r.effect}` }, r.effect)),
      h("td", {}, r.disabled ? "disabled" : r.staged
        ? h("span", { class: "badge staged", title: "Evaluated and reported as \"would\" verdicts on Radar and in the audits; not enforced" }, "staged")
        : "enabled"),
      h("td", { class: "hits num", dataset: { rule: r.id } }, "…"),
      h("td", { class: "actions" },
        r.staged ? h("button", { type: "button", class: "promote", onclick: () => promote(r) }, "Promote") : null,
        h("button", { type: "button", class: "secondary", onclick: () => edit(r) }, "Edit"),
        h("button", { type: "button", class: "danger", onclick: () => remove(r) }, "Delete")));
    tr.addEventListener("dragstart", (e) => { dragged = r; e.dataTransfer.effectAllowed = "move"; tr.classList.add("dragging"); });
    tr.addEventListener("dragend", () => tr.classList.remove("dragging"));
    tr.addEventListener("dragover", (e) => { e.preventDefault(); tr.classList.add("drop-target"); });
    tr.addEventListener("dragleave", () => tr.classList.remove("drop-target"));
    tr.addEventListener("drop", async (e) => {
      e.preventDefault();
      tr.classList.remove("drop-target");
      if (!dragged || dragged.id === r.id) return;
      await move(dragged, r.position, false);
    });
    return tr;
  }

  async function promote(r) {
    if (!window.confirm(`Put staged rule #${r.id} ${r.name} in force (${r.effect})?`)) return;
    try {
      await api("POST", `/rules/${kind}/${r.id}/promote`, { query: { expectedRevision: revision } });
      message.textContent = "";
      await load();
    } catch (err) {
      fail(message, err);
      if (err.status === 409) { try { await load(); } catch { /* the message above stands */ } }
    }
  }

  async function remove(r) {
    if (!window.confirm(`Delete rule #${r.id} ${r.name}?`)) return;
    try { await api("DELETE", `/rules/${kind}/${r.id}`); await load(); } catch (err) { fail(message, err); }
  }

  function edit(r) {
    const srcKinds = kind === "container" ? ["container"] : ["host"];
    const dstKinds = kind === "container" ? ["container", "subnet", "dns"] : ["host", "subnet"];
    const pick = (name, kinds, current) => h("select", { name },
      h("option", { value: "" }, "choose…"),
      objects.filter((o) => kinds.includes(o.kind)).map((o) => h("option", { value: o.name, selected: o.name === current }, `${o.name} (${o.kind})`)));
    const formError = errorLine("rule-form-error");
    const impact = h("div", { id: "rule-impact" });
    const form = h("form", { id: "rule-form", class: "card stack" },
      h("h2", {}, r ? `Edit rule #${r.id}` : `New ${kind} rule`),
      h("label", {}, "Name", h("input", { name: "name", value: r?.name || "" })),
      h("label", {}, "Source", pick("src", srcKinds, r?.src)),
      h("label", {}, "Destination", pick("dst", dstKinds, r?.dst)),
      h("label", {}, "Ports", h("input", { name: "ports", value: r ? r.ports.join(", ") : "*", placeholder: "80, 8000-8080 or *" })),
      h("label", {}, "Effect", h("select", { name: "effect" }, ["allow", "alert", "prevent"].map((e) => h("option", { value: e, selected: r?.effect === e }, e)))),
      h("label", { class: "inline" }, h("input", { type: "checkbox", name: "disabled", checked: !!r?.disabled }), " disabled"),
      h("label", { class: "inline" }, h("input", { type: "checkbox", name: "staged", checked: !!r?.staged }),
        " staged (report what it would do, do not enforce it)"),
      h("label", {}, "Notes", h("input", { name: "notes", value: r?.notes || "" })),
      h("label", {}, "Owner", h("input", { name: "owner", value: r?.owner || "" })),
      h("div", { class: "buttons" },
        h("button", { type: "submit" }, "Save"),
        h("button", { type: "button", class: "secondary", id: "rule-preview", onclick: () => {
          // Before it is saved: the rule in place (or at the end) over the last 24 h.
          const id = r ? r.id : Math.max(0, ...rules.map((x) => x.id)) + 1;
          const rule = { ...draft(), id, name: draft().name || `new rule ${id}` };
          clear(impact).append(impactPreview({ changes: { [`${kind}Rules`]: [rule] } }));
        } }, "Preview impact"),
        h("button", { type: "button", class: "secondary", onclick: () => clear(editor) }, "Cancel")),
      formError, impact);
    function draft() {
      const d = new FormData(form);
      return { name: d.get("name"), src: d.get("src"), dst: d.get("dst"),
        ports: list(d.get("ports")).map((p) => (/^\d+$/.test(p) ? Number(p) : p)),
        effect: d.get("effect"), disabled: d.get("disabled") === "on", staged: d.get("staged") === "on", notes: d.get("notes"), owner: d.get("owner") };
    }
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const body = draft();
      try {
        if (r) await api("PUT", `/rules/${kind}/${r.id}`, { body: { ...body, id: r.id } });
        else await api("POST", `/rules/${kind}`, { body });
        clear(editor);
        await load();
      } catch (err) {
        formError.textContent = "";
        if (err instanceof ApiError && err.errors.length) showFieldErrors(form, err.errors, formError);
        else fail(formError, err);
      }
    });
    clear(editor).append(form);
  }

  try {
    await load();
    const editId = Number(query.get("edit"));
    if (editId) {
      const r = rules.find((x) => x.id === editId);
      if (r) edit(r); else message.textContent = `No ${kind} rule #${editId}.`;
    }
  } catch (err) { fail(message, err); }
}

// --- network objects ---------------------------------------------------------

const SELECTOR_FIELDS = {
  container: ["images", "labels", "namespaces", "containers", "hosts", "clusters"],
  host: ["hosts", "labels"],
};

export async function renderObjects(main) {
  const message = errorLine("objects-error");
  const editor = h("div", { id: "object-editor" });
  const body = h("tbody", {});
  clear(main).append(h("section", { class: "page" },
    h("h1", {}, "Network objects"),
    h("p", { class: "muted" }, "Rules are written between objects: container and host selectors, subnets, DNS names."),
    h("button", { type: "button", id: "add-object", onclick: () => edit(null) }, "Add object"),
    message, editor,
    h("table", { class: "grid", id: "objects" },
      h("thead", {}, h("tr", {}, ["Name", "Kind", "Matches", "Description", ""].map((t) => h("th", {}, t)))),
      body)));

  function describe(o) {
    if (o.kind === "subnet") return joined(o.cidrs);
    if (o.kind === "dns") return joined(o.domains);
    return Object.entries(o.selector).filter(([, v]) => v && v.length).map(([k, v]) => `${k}: ${joined(v)}`).join("; ");
  }

  async function load() {
    const objects = await api("GET", "/objects");
    clear(body).append(...objects.map((o) => h("tr", { dataset: { name: o.name } },
      h("td", {}, o.name), h("td", {}, o.kind), h("td", {}, describe(o)), h("td", {}, o.description || ""),
      h("td", { class: "actions" },
        h("button", { type: "button", class: "secondary", onclick: () => edit(o) }, "Edit"),
        h("button", { type: "button", class: "danger", onclick: () => remove(o) }, "Delete")))));
    if (!objects.length) body.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No objects yet.")));
  }

  async function remove(o) {
    if (!window.confirm(`Delete object ${o.name}?`)) return;
    try { await api("DELETE", `/objects/${encodeURIComponent(o.name)}`); message.textContent = ""; await load(); } catch (err) { fail(message, err); }
  }

  function edit(o) {
    const formError = errorLine("object-form-error");
    const fields = h("div", { class: "stack" });
    // What the selector selects among the running workloads, as it is typed.
    const matches = h("div", { id: "object-preview", class: "preview", role: "status", "aria-live": "polite" });
    const kindSelect = h("select", { name: "kind", disabled: !!o, onchange: () => { kindFields(kindSelect.value); showMatches(); } },
      ["container", "host", "subnet", "dns"].map((k) => h("option", { value: k, selected: o?.kind === k }, k)));
    function kindFields(kind) {
      clear(fields);
      if (kind === "subnet") fields.append(h("label", {}, "CIDRs (comma separated)", h("input", { name: "cidrs", value: joined(o?.cidrs) })));
      else if (kind === "dns") fields.append(h("label", {}, "Domains (comma separated, *.example.com allowed)", h("input", { name: "domains", value: joined(o?.domains) })));
      else {
        for (const f of SELECTOR_FIELDS[kind]) {
          fields.append(h("label", {}, `${f} (comma separated globs${f === "labels" ? ", key=value" : ""})`,
            h("input", { name: f, value: joined(o?.selector?.[f]), oninput: previewSoon })));
        }
      }
    }
    let asked = 0;
    let timer = null;
    function previewSoon() { clearTimeout(timer); timer = setTimeout(showMatches, 250); }
    async function showMatches() {
      const kind = kindSelect.value;
      const ask = ++asked;
      if (!SELECTOR_FIELDS[kind]) { clear(matches); matches.hidden = true; return; }
      matches.hidden = false;
      const d = new FormData(form);
      const selector = Object.fromEntries(SELECTOR_FIELDS[kind].map((f) => [f, list(d.get(f))]).filter(([, v]) => v.length));
      if (!Object.keys(selector).length) {
        clear(matches).append(h("p", { class: "muted" }, "Type a selector to see which running workloads it selects."));
        return;
      }
      try {
        const r = await api("POST", "/objects/preview", { body: { kind, selector } });
        if (ask !== asked) return; // a later keystroke asked again
        const noun = kind === "container" ? "running container" : "known host";
        const shown = r.matches.map((m) => h("li", {}, kind === "container"
          ? `${m.namespace ? `${m.namespace}/` : ""}${m.pod || m.name} · ${m.image} · ${m.host} · ${m.address}`
          : `${m.name}${m.address ? ` · ${m.address}` : ""}`));
        clear(matches).append(
          h("p", { id: "object-preview-count" }, `Selects ${r.total} of ${r.known} ${noun}${r.known === 1 ? "" : "s"}${r.total > r.matches.length ? ` (first ${r.matches.length} listed)` : ""}.`),
          shown.length ? h("ul", { class: "small" }, shown) : null);
      } catch (err) {
        if (ask !== asked) return;
        // a selector half typed (an invalid glob): say what is wrong, not a failure
        const detail = err instanceof ApiError && err.errors.length
          ? err.errors.map((x) => `${x.path.replace(/^selector\./, "")}: ${x.message}`).join("; ") : String(err.message || err);
        clear(matches).append(h("p", { class: "error" }, `No preview: ${detail}`));
      }
    }
    const form = h("form", { id: "object-form", class: "card stack" },
      h("h2", {}, o ? `Edit ${o.name}` : "New network object"),
      h("label", {}, "Name", h("input", { name: "name", value: o?.name || "" })),
      h("label", {}, "Kind", kindSelect),
      fields,
      matches,
      h("label", {}, "Description", h("input", { name: "description", value: o?.description || "" })),
      h("div", { class: "buttons" }, h("button", { type: "submit" }, "Save"),
        h("button", { type: "button", class: "secondary", onclick: () => clear(editor) }, "Cancel")),
      formError);
    kindFields(o?.kind || "container");
    showMatches();
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const d = new FormData(form);
      const kind = kindSelect.value;
      const body = { name: d.get("name"), kind, description: d.get("description") };
      if (kind === "subnet") body.cidrs = list(d.get("cidrs"));
      else if (kind === "dns") body.domains = list(d.get("domains"));
      else body.selector = Object.fromEntries(SELECTOR_FIELDS[kind].map((f) => [f, list(d.get(f))]).filter(([, v]) => v.length));
      try {
        if (o) await api("PUT", `/objects/${encodeURIComponent(o.name)}`, { body });
        else await api("POST", "/objects", { body });
        clear(editor);
        await load();
      } catch (err) {
        formError.textContent = "";
        if (err instanceof ApiError && err.errors.length) {
          // A selector error without a field ("empty selector") belongs to the first field.
          const errors = err.errors.map((x) => (x.path === "selector" ? { ...x, path: SELECTOR_FIELDS[kind]?.[0] || x.path } : x));
          showFieldErrors(form, errors, formError);
        } else fail(formError, err);
      }
    });
    clear(editor).append(form);
  }

  try { await load(); } catch (err) { fail(message, err); }
}

// --- settings ------------------------------------------------------------------

export async function renderSettings(main) {
  const message = h("p", { id: "settings-message", role: "status" });
  const form = h("form", { id: "settings", class: "card stack" });
  clear(main).append(h("section", { class: "page" }, h("h1", {}, "Settings"), form));
  let s;
  let revision = null; // the policy revision the settings shown were read at (or later)
  async function read() {
    // The revision first: a change landing before the settings are read makes a
    // promote refused (409), never one of a staged default not seen as shown.
    revision = (await api("GET", "/policy")).revision;
    s = await api("GET", "/settings");
  }
  try { await read(); } catch (err) { fail(message, err); form.append(message); return; }
  // Prevent rules do nothing while their kind's enforcement is off: say so where
  // the switch is, as it is saved (not only after the next reload).
  const warning = h("p", { id: "enforcement-warning", class: "warning", role: "status" });
  function warn() {
    const d = new FormData(form);
    const off = [["containerEnabled", "container"], ["hostEnabled", "host"]].filter(([k]) => d.get(k) !== "on").map(([, t]) => t);
    warning.hidden = !off.length;
    warning.textContent = off.length
      ? `Enforcement is off for ${off.join(" and ")} rules: their prevent rules and a prevent default are not enforced. Connections are only observed; Radar and the audits show what the policy would do ("would prevent").`
      : "";
  }
  const promoteDefault = h("button", { type: "button", id: "promote-default", class: "promote", hidden: !s.stagedDefaultEffect,
    onclick: async () => {
      if (!window.confirm(`Make the staged default effect (${s.stagedDefaultEffect}) the default effect?`)) return;
      try {
        s = await api("POST", "/settings/promote", { query: { expectedRevision: revision } });
        revision = (await api("GET", "/policy")).revision;
        form.elements.defaultEffect.value = s.defaultEffect;
        form.elements.stagedDefaultEffect.value = "";
        promoteDefault.hidden = true;
        message.className = "ok";
        message.textContent = `Default effect is now ${s.defaultEffect}.`;
      } catch (err) {
        message.className = "error";
        fail(message, err);
        if (err.status === 409) {
          // Show the settings as they are now (the message above stands).
          try {
            await read();
            const f = form.elements;
            f.containerEnabled.checked = s.containerEnabled;
            f.hostEnabled.checked = s.hostEnabled;
            f.defaultEffect.value = s.defaultEffect;
            f.stagedDefaultEffect.value = s.stagedDefaultEffect || "";
            f.blockMode.value = s.blockMode;
            promoteDefault.hidden = !s.stagedDefaultEffect;
            warn();
          } catch { /* the message above stands */ }
        }
      }
    } }, "Promote staged default");
  form.append(
    warning,
    h("label", { class: "inline" }, h("input", { type: "checkbox", name: "containerEnabled", checked: s.containerEnabled }),
      " Enforce container rules (off: observe only)"),
    h("label", { class: "inline" }, h("input", { type: "checkbox", name: "hostEnabled", checked: s.hostEnabled }),
      " Enforce host rules (off: observe only)"),
    h("label", {}, "When no rule matches", h("select", { name: "defaultEffect" },
      [["allow", "allow (observe, grey on Radar)"], ["alert", "alert (allow and audit)"], ["prevent", "prevent (zero trust)"]]
        .map(([v, t]) => h("option", { value: v, selected: s.defaultEffect === v }, t)))),
    h("label", {}, "Staged default effect (reported as \"would\" verdicts, not enforced)", h("select", { name: "stagedDefaultEffect" },
      [["", "none"], ["allow", "allow"], ["alert", "alert"], ["prevent", "prevent"]]
        .map(([v, t]) => h("option", { value: v, selected: (s.stagedDefaultEffect || "") === v }, t)))),
    promoteDefault,
    h("label", {}, "Block mode", h("select", { name: "blockMode" },
      [["reset", "reset (TCP reset: clients fail at once)"], ["drop", "drop (silent: clients time out)"]]
        .map(([v, t]) => h("option", { value: v, selected: s.blockMode === v }, t)))),
    h("button", { type: "submit" }, "Save settings"), message);
  form.addEventListener("change", warn);
  warn();
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const d = new FormData(form);
    try {
      await api("PUT", "/settings", { body: { containerEnabled: d.get("containerEnabled") === "on",
        hostEnabled: d.get("hostEnabled") === "on", defaultEffect: d.get("defaultEffect"), blockMode: d.get("blockMode"),
        stagedDefaultEffect: d.get("stagedDefaultEffect") || null } });
      await read();
      promoteDefault.hidden = !s.stagedDefaultEffect;
      message.className = "ok";
      message.textContent = "Saved.";
    } catch (err) { message.className = "error"; fail(message, err); }
  });
}

// --- import / export -------------------------------------------------------------

export async function renderTransfer(main) {
  const message = errorLine("transfer-error");
  const preview = h("div", { id: "import-preview" });
  const text = h("textarea", { name: "document", rows: 12, "aria-label": "Policy document",
    placeholder: "Paste a policy document (JSON or YAML), or choose a file" });
  const file = h("input", { type: "file", name: "file", "aria-label": "Policy document file", accept: ".json,.yaml,.yml,application/json", onchange: async () => {
    if (file.files[0]) text.value = await file.files[0].text();
  } });
  const format = h("select", { name: "format" }, h("option", { value: "native" }, "CNNF (cnnf/v1)"),
    h("option", { value: "prisma" }, "original product export"));
  const apply = h("button", { type: "button", id: "import-apply", disabled: true, onclick: () => send(false) }, "Apply import");
  clear(main).append(h("section", { class: "page" },
    h("h1", {}, "Import and export"),
    h("div", { class: "card stack" }, h("h2", {}, "Export"),
      h("p", { class: "muted" }, "The whole policy (switches, rules, objects) as one document."),
      h("div", { class: "buttons" },
        h("button", { type: "button", id: "export-native", onclick: () => download("/policy/export", { format: "native" }, "cnnf-policy.json").catch((e) => fail(message, e)) }, "Download (CNNF)"),
        h("button", { type: "button", class: "secondary", onclick: () => download("/policy/export", { format: "prisma" }, "cnnf-policy-prisma.json").catch((e) => fail(message, e)) }, "Download (original format)"))),
    h("div", { class: "card stack" }, h("h2", {}, "Import"),
      h("p", { class: "muted" }, "An import replaces the whole policy at once. Preview shows what changes; nothing is applied until you confirm."),
      h("label", {}, "Format ", format), file, text,
      h("div", { class: "buttons" }, h("button", { type: "button", id: "import-preview-button", onclick: () => send(true) }, "Preview"), apply),
      message, preview)));

  async function send(dryRun) {
    message.textContent = "";
    clear(preview);
    apply.disabled = true;
    const body = text.value;
    const isJson = body.trim().startsWith("{");
    try {
      const result = await api("POST", "/policy/import", { body, query: { format: format.value, dry_run: dryRun ? "true" : "" },
        headers: { "Content-Type": isJson ? "application/json" : "application/yaml" } });
      await showResult(result);
      apply.disabled = !(dryRun && result.valid);
    } catch (err) {
      if (err instanceof ApiError && err.errors.length) showErrors(err.errors);
      fail(message, err);
    }
  }

  function showErrors(errors) {
    preview.append(h("h3", {}, "Errors (nothing was changed)"),
      h("ul", { class: "errors" }, errors.map((e) => h("li", {}, h("code", {}, e.path || "document"), ` ${e.message}`))));
  }

  // What the import does, in words: objects by name, rules as "rule #3 web-api"
  // (names of rules being removed or changed come from the current policy; an added
  // rule's from nowhere but its id), settings as "before → after".
  async function showResult(r) {
    if (!r.valid) { showErrors(r.errors); message.textContent = "The document is not valid; nothing was changed."; return; }
    const current = {};
    for (const kind of ["container", "host"]) {
      try { current[kind] = new Map((await api("GET", `/rules/${kind}`)).map((x) => [x.id, x.name])); } catch { current[kind] = new Map(); }
    }
    const verb = r.applied ? { added: "added", removed: "removed", changed: "changed" } : { added: "adds", removed: "removes", changed: "changes" };
    const part = (list, word, show) => (list && list.length ? `${word} ${list.map(show).join(", ")}` : null);
    const objectLine = (d) => [part(d.added, verb.added, String), part(d.removed, verb.removed, String),
      part(d.changed, verb.changed, String)].filter(Boolean);
    const ruleLine = (d, kind) => {
      const named = (id) => (current[kind].has(id) ? `#${id} ${current[kind].get(id)}` : `#${id}`);
      const out = [part(d.added, `${verb.added} rule`, (id) => `#${id}`), part(d.removed, `${verb.removed} rule`, named),
        part(d.changed, `${verb.changed} rule`, named)].filter(Boolean);
      if (d.reordered) out.push(r.applied ? "reordered" : "reorders them");
      return out;
    };
    const item = (title, parts) => h("li", { dataset: { section: title } }, h("strong", {}, title), ": ",
      parts.length ? parts.join("; ") : "no change");
    const settings = Object.entries((r.diff && r.diff.settings) || {});
    const diff = r.diff || {};
    preview.append(h("h3", {}, r.applied ? `Applied: the policy is now at revision ${r.revision}` : "What this import would do (nothing is changed yet)"),
      h("ul", { class: "diff" },
        item("Settings", settings.map(([k, v]) => `${k} ${v.before} → ${v.after}`)),
        item("Objects", objectLine(diff.objects || {})),
        item("Container rules", ruleLine(diff.containerRules || {}, "container")),
        item("Host rules", ruleLine(diff.hostRules || {}, "host"))),
      // (never append null: the DOM would print it)
      ...(r.unmapped && r.unmapped.length ? [h("div", {}, h("p", { class: "muted" }, "Not carried over as is:"),
        h("ul", { class: "small", id: "import-unmapped" }, r.unmapped.map((u) => h("li", {}, u))))] : []));
    if (!r.applied && r.policy) {
      // Before applying: the imported policy against the flows of the last 24 h.
      const impact = h("div", { id: "import-impact" });
      preview.append(h("div", { class: "buttons" }, h("button", { type: "button", class: "secondary", id: "import-impact-button",
        onclick: () => clear(impact).append(impactPreview({ policy: r.policy })) }, "Preview impact")), impact);
    }
  }
}

// --- audits --------------------------------------------------------------------

const AUDIT_REFRESH_MS = 10000;

// Where an audit's ends are drawn on Radar (node ids as /api/v1/radar names them):
// images in the container view, hosts in the host view; a destination outside
// (subnet, domain, address) is left to the port to pick the edge.
function radarLink(a) {
  const q = new URLSearchParams();
  if (a.type === "host") {
    q.set("view", "host");
    if (a.srcHostname) q.set("src", `host:${a.srcHostname}`);
    if (a.dstHostname) q.set("dst", `host:${a.dstHostname}`);
  } else {
    q.set("view", "container");
    if (a.srcImage) q.set("src", `image:${a.srcImage}`);
    if (a.dstImage) q.set("dst", `image:${a.dstImage}`);
  }
  if (!q.get("src")) return null;
  if (a.port) q.set("port", a.port);
  return `#/radar?${q}`;
}

export async function renderAudits(main) {
  const PAGE = 50;
  let offset = 0;
  let timer = null;
  const message = errorLine("audits-error");
  const body = h("tbody", {});
  const pager = h("span", { id: "audit-pager" });
  const updated = h("span", { id: "audits-updated", class: "muted small", "aria-live": "polite" });
  const glob = (name, label) => h("label", {}, `${label} `, h("input", { name, placeholder: "* wildcard" }));
  const auto = h("input", { type: "checkbox", name: "auto", id: "audits-auto", checked: true, onchange: () => schedule() });
  const filters = h("form", { class: "toolbar", id: "audit-filters" },
    h("label", {}, "Since ", h("input", { type: "datetime-local", step: 1, name: "since" })),
    h("label", {}, "Until ", h("input", { type: "datetime-local", step: 1, name: "until" })),
    glob("src_image", "Source image"), glob("dst_image", "Destination image"),
    glob("namespace", "Namespace"), glob("pod", "Pod"), glob("host", "Host"), glob("rule", "Rule"),
    h("label", {}, "Blocked ", h("select", { name: "blocked" }, h("option", { value: "" }, "any"), h("option", { value: "true" }, "blocked"), h("option", { value: "false" }, "not blocked"))),
    h("label", {}, "Would ", h("select", { name: "would" }, h("option", { value: "" }, "any"), h("option", { value: "true" }, "would (not enforced)"), h("option", { value: "false" }, "enforced"))),
    h("label", {}, "Type ", h("select", { name: "type" }, h("option", { value: "" }, "any"), h("option", { value: "container" }, "container"), h("option", { value: "host" }, "host"), h("option", { value: "overload" }, "overload"))),
    h("button", { type: "submit" }, "Filter"),
    h("button", { type: "button", class: "secondary", id: "audits-csv", onclick: () => download("/audits/csv", params(), "cnnf-audits.csv").catch((e) => fail(message, e)) }, "Download CSV"),
    h("label", {}, auto, ` Refresh every ${AUDIT_REFRESH_MS / 1000} s`), updated);
  clear(main).append(h("section", { class: "page" }, h("h1", {}, "Audits"), filters, message,
    h("table", { class: "grid", id: "audits" },
      h("thead", {}, h("tr", {}, ["Time", "Type", "Verdict", "Rule", "Source", "Destination", "Port", "Count", "Message", "Radar"].map((t) => h("th", { scope: "col" }, t)))),
      body),
    h("div", { class: "buttons" },
      h("button", { type: "button", class: "secondary", id: "audits-prev", onclick: () => { offset = Math.max(0, offset - PAGE); load(); } }, "Previous"),
      pager,
      h("button", { type: "button", class: "secondary", id: "audits-next", onclick: () => { offset += PAGE; load(); } }, "Next"))));

  function params() {
    const d = new FormData(filters);
    const q = {};
    for (const [k, v] of d.entries()) {
      if (!v || k === "auto") continue;
      q[k] = k === "since" || k === "until" ? new Date(v).toISOString() : v;
    }
    return q;
  }

  function schedule() {
    clearTimeout(timer);
    timer = auto.checked ? setTimeout(async () => { await load(); schedule(); }, AUDIT_REFRESH_MS) : null;
  }

  // "kube/web:1.0 (web-7d4b9c6f5-x2k8p in storefront) on node-1": a pod by its
  // name (its container names repeat in every replica), other containers by theirs.
  const who = (img, container, pod, ns, host, addr) => {
    const name = pod ? [pod, ns && `in ${ns}`].filter(Boolean).join(" ") : container;
    return [img, name && `(${name})`, host && `on ${host}`, !img && addr].filter(Boolean).join(" ");
  };
  // The far end outside the cluster: its domain and address ("api.pay.example (203.0.113.5)"),
  // or the subnet it is in.
  const outside = (a) => {
    if (a.dstDomain) return [a.dstDomain, a.dstAddress && `(${a.dstAddress})`].filter(Boolean).join(" ");
    return [a.dstAddress, a.dstSubnet && `in ${a.dstSubnet}`].filter(Boolean).join(" ");
  };

  async function load() {
    try {
      const page = await api("GET", "/audits", { query: { ...params(), limit: PAGE, offset } });
      message.textContent = "";
      // An overload audit: one source's SYNs dropped on a host by the admission
      // limit or the verdict loop, or its forged-source packets by anti-spoofing
      // (no rule, no port; ruleName says what dropped them, count how many;
      // audits of earlier Defenders carry no ruleName: the admission limit).
      clear(body).append(...page.items.map((a) => {
        const overload = a.type === "overload";
        const ruleKind = a.type === "host" ? "host" : "container";
        const link = overload ? null : radarLink(a);
        return h("tr", { class: overload ? "overload" : null, dataset: { id: a.id } },
          h("td", { class: "nowrap" }, fmtTime(a.time)),
          h("td", {}, overload ? h("span", { class: "badge overload" }, "overload") : a.type),
          h("td", {}, auditBadge(a)),
          h("td", { class: "rule" }, a.ruleId
            ? h("a", { href: `#/rules/${ruleKind}?edit=${a.ruleId}`, title: `Open ${ruleKind} rule #${a.ruleId}` }, `#${a.ruleId} ${a.ruleName}`)
            : (a.ruleName || (overload ? "admission limit" : "no rule (default effect)"))),
          h("td", {}, who(a.srcImage, a.srcContainer, a.srcPod, a.srcNamespace, a.srcHostname, a.srcAddress)),
          h("td", {}, overload ? `host ${a.dstHostname}`
            : (a.dstImage || a.dstContainer ? who(a.dstImage, a.dstContainer, a.dstPod, a.dstNamespace, a.dstHostname, a.dstAddress)
              : (a.type === "host" && a.dstHostname ? `${a.dstHostname}${a.dstAddress ? ` (${a.dstAddress})` : ""}` : outside(a)))),
          h("td", {}, a.port === 0 ? "—" : a.port),
          h("td", { class: "num", title: overload ? (a.ruleName === "anti-spoofing" ? "packets dropped" : "SYNs dropped") : "repeats folded into this audit" }, a.count.toLocaleString("en-US")),
          h("td", { class: "small" }, a.msg),
          h("td", { class: "nowrap" }, link ? h("a", { href: link, class: "radar-link", title: "Show this connection on Radar" }, "Radar") : ""));
      }));
      if (!page.items.length) body.append(h("tr", {}, h("td", { colspan: 10, class: "muted" }, "No audits match.")));
      pager.textContent = page.total ? `${offset + 1}–${offset + page.items.length} of ${page.total}` : "0 of 0";
      updated.textContent = `updated ${fmtClock()}`;
      document.getElementById("audits-prev").disabled = offset === 0;
      document.getElementById("audits-next").disabled = offset + page.items.length >= page.total;
    } catch (err) { fail(message, err); }
  }
  filters.addEventListener("submit", (e) => { e.preventDefault(); offset = 0; load(); });
  await load();
  schedule();
  return () => clearTimeout(timer);
}
