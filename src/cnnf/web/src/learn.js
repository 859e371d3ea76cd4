// The Learn page: learn a policy from the flows of a window, review each
// proposed rule with its evidence, preview the impact of the ticked ones, apply
// them as one change. impactPreview() also serves the rule editor.
import { api, ApiError } from "./api.js";
import { clear, fmtTime, h } from "./dom.js";

const WINDOWS = [["1h", 1], ["6h", 6], ["24h", 24], ["7 days", 168]];

function errorLine(id) {
  return h("p", { class: "error", role: "alert", id });
}

function say(target, err) {
  const fields = err instanceof ApiError && err.errors.length
    ? ": " + err.errors.map((e) => (e.path ? `${e.path}: ${e.message}` : e.message)).join("; ") : "";
  target.textContent = (err instanceof Error ? err.message : String(err)) + fields;
}

const plural = (n, word) => `${n.toLocaleString("en")} ${word}${n === 1 ? "" : "s"}`;

// The impact of a draft (simulate's body: {policy} | {changes} | {proposal}) over
// the last `hours`, as a small report element that fills in when it arrives.
export function impactPreview(draft, hours = 24) {
  const box = h("div", { class: "impact card", role: "status" }, h("p", { class: "muted" }, "Evaluating the draft against the stored flows…"));
  const until = new Date();
  const since = new Date(until.getTime() - hours * 3600 * 1000);
  api("POST", "/policy/simulate", { body: { ...draft, since: since.toISOString(), until: until.toISOString() } })
    .then((r) => clear(box).append(...impactReport(r, hours).filter(Boolean)))
    .catch((err) => { const p = errorLine("impact-error"); say(p, err); clear(box).append(p); });
  return box;
}

function impactReport(r, hours) {
  const head = h("p", { class: "impact-summary" },
    r.changedFlows === 0
      ? `No verdict would change: ${plural(r.flows, "flow")} (${plural(r.connections, "connection")}) of the last ${hours} h evaluated.`
      : `${plural(r.changedFlows, "flow")} (${plural(r.changedConnections, "connection")}) of the last ${hours} h would change, of ${plural(r.flows, "flow")} evaluated.`);
  // Staged rules and a staged default change nothing in force: their impact apart.
  const staged = r.staged && r.staged.changedFlows > 0
    ? h("div", { class: "impact-staged" },
      h("p", {}, `Staged (reported, not enforced): ${plural(r.staged.changedFlows, "flow")} (${plural(r.staged.changedConnections, "connection")}) would change if promoted.`),
      h("ul", {}, Object.entries(r.staged.transitions).map(([move, n]) => h("li", {}, `${move}: ${plural(n, "flow")}`))))
    : null;
  if (r.changedFlows === 0) return [head, staged];
  const moves = h("ul", { class: "impact-moves" },
    Object.entries(r.transitions).map(([move, n]) => h("li", {}, `${move}: ${plural(n, "flow")}`)));
  const edges = h("table", { class: "grid impact-edges" },
    h("thead", {}, h("tr", {}, ["Source", "Destination", "Port", "Now", "Would be", "Deciding rule", "Connections", "Last seen"].map((t) => h("th", {}, t)))),
    h("tbody", {}, r.edges.slice(0, 50).map((e) => h("tr", {},
      h("td", {}, e.src), h("td", {}, e.dst), h("td", {}, e.port),
      h("td", {}, h("span", { class: `badge ${e.before.effect}` }, e.before.label)),
      h("td", {}, h("span", { class: `badge ${e.after.effect}` }, e.after.label)),
      h("td", {}, e.after.ruleName || "default effect"),
      h("td", {}, e.connections.toLocaleString("en")), h("td", {}, fmtTime(e.lastSeen))))));
  const more = r.edgesTotal > 50 ? h("p", { class: "muted" }, `… and ${plural(r.edgesTotal - 50, "more edge")}.`) : null;
  return [head, moves, edges, more, staged];
}

export async function renderLearn(main, args) {
  if (args[0]) return renderProposal(main, Number(args[0]));
  const message = errorLine("learn-error");
  const form = h("form", { id: "learn-form", class: "card stack" },
    h("h2", {}, "Learn from observed traffic"),
    h("label", {}, "Window", h("select", { name: "window" },
      WINDOWS.map(([label, hours]) => h("option", { value: hours, selected: hours === 24 }, `last ${label}`)))),
    h("label", {}, "Namespace (optional)", h("input", { name: "namespace" })),
    h("label", {}, "Host (optional)", h("input", { name: "host" })),
    h("label", {}, "Images (optional, comma separated globs)", h("input", { name: "images", placeholder: "shop/*" })),
    h("label", {}, "Stable label naming workloads", h("input", { name: "labelKey", value: "app" })),
    h("label", {}, "Default effect of the proposal", h("select", { name: "defaultEffect" },
      h("option", { value: "" }, "keep the current one"),
      ["allow", "alert", "prevent"].map((e) => h("option", { value: e }, e)))),
    h("div", { class: "buttons" }, h("button", { type: "submit", id: "learn-button" }, "Learn")),
    message);
  const history = h("tbody", {});
  clear(main).append(h("section", { class: "page" },
    h("h1", {}, "Learn"),
    h("p", { class: "muted" }, "Propose rules from the connections seen in a window: every proposed rule shows the flows it is learnt from. Nothing changes until you apply."),
    form,
    h("h2", {}, "Proposals"),
    h("table", { class: "grid", id: "proposals" },
      h("thead", {}, h("tr", {}, ["Id", "Learnt", "By", "Window", "Rules", "Flows", "Applied"].map((t) => h("th", {}, t)))),
      history)));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const d = new FormData(form);
    const until = new Date();
    const since = new Date(until.getTime() - Number(d.get("window")) * 3600 * 1000);
    const body = { since: since.toISOString(), until: until.toISOString(), labelKey: d.get("labelKey") };
    for (const k of ["namespace", "host", "defaultEffect"]) if (d.get(k)) body[k] = d.get(k);
    const images = String(d.get("images") || "").split(",").map((s) => s.trim()).filter(Boolean);
    if (images.length) body.images = images;
    message.textContent = "";
    try {
      const p = await api("POST", "/policy/proposals", { body });
      location.hash = `#/learn/${p.id}`;
    } catch (err) { say(message, err); }
  });
  try {
    const page = await api("GET", "/policy/proposals", { query: { limit: 50 } });
    history.append(...page.items.map((p) => h("tr", {},
      h("td", {}, h("a", { href: `#/learn/${p.id}` }, `#${p.id}`)), h("td", {}, fmtTime(p.created)), h("td", {}, p.actor),
      h("td", {}, `${fmtTime(p.since)} – ${fmtTime(p.until)}`), h("td", {}, p.rules), h("td", {}, p.learntFlows),
      h("td", {}, p.appliedRevision ? `revision ${p.appliedRevision}` : "–"))));
    if (!page.items.length) history.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No proposals yet.")));
  } catch (err) { say(message, err); }
  return null;
}

function evidenceCell(ev) {
  return h("td", { class: "evidence" },
    `${plural(ev.flows, "flow")}, ${plural(ev.connections, "connection")}`,
    h("br"), h("span", { class: "muted" }, `${fmtTime(ev.firstSeen)} – ${fmtTime(ev.lastSeen)}`),
    h("details", {}, h("summary", {}, "edges"), h("ul", {}, ev.edges.map((e) => h("li", {}, e)))));
}

async function renderProposal(main, id) {
  const message = errorLine("proposal-error");
  clear(main).append(h("section", { class: "page" }, h("h1", {}, `Proposal #${id}`), message));
  let p;
  try { p = await api("GET", `/policy/proposals/${id}`); } catch (err) { say(message, err); return null; }
  const objects = new Map(p.policy.objects.map((o) => [o.name, o]));
  const basis = new Map(p.objects.map((o) => [o.name, o]));
  const boxes = [];
  const rows = p.proposed.map((r) => {
    const box = h("input", { type: "checkbox", checked: true, dataset: { kind: r.kind, id: r.rule.id } });
    boxes.push([box, r]);
    const end = (name, why) => h("td", {}, name, h("br"),
      h("span", { class: "muted" }, basis.get(name)?.new ? `new: ${why}` : "existing object"));
    return h("tr", { dataset: { kind: r.kind, id: r.rule.id } },
      h("td", {}, box), h("td", {}, r.kind), end(r.rule.src, r.srcBasis), end(r.rule.dst, r.dstBasis),
      h("td", {}, r.rule.ports.join(", ")),
      h("td", {}, r.replaces ? `widens rule #${r.replaces}` : "new rule"),
      evidenceCell(r.evidence));
  });
  const preview = h("div", { id: "proposal-impact" });
  const result = h("p", { id: "apply-result", role: "status" });
  const effect = h("select", { name: "defaultEffect", id: "apply-effect" },
    ["allow", "alert", "prevent"].map((e) => h("option", { value: e, selected: e === p.policy.defaultEffect }, e)));
  const chosen = () => boxes.filter(([b]) => b.checked).map(([, r]) => r);
  const hours = Math.max(1, Math.round((new Date(p.until) - new Date(p.since)) / 3600000));

  function changes() {
    const rules = chosen();
    const used = new Set(rules.flatMap((r) => [r.rule.src, r.rule.dst]));
    return {
      objects: [...used].filter((n) => basis.get(n)?.new).map((n) => objects.get(n)),
      containerRules: rules.filter((r) => r.kind === "container").map((r) => r.rule),
      hostRules: rules.filter((r) => r.kind === "host").map((r) => r.rule),
      defaultEffect: effect.value,
    };
  }

  const applied = p.appliedRevision ? `Applied as revision ${p.appliedRevision}.` : "";
  const skipped = Object.entries(p.skipped).map(([why, n]) => h("li", {}, `${plural(n, "flow")} not learnt: ${why}`));
  clear(main).append(h("section", { class: "page" },
    h("h1", {}, `Proposal #${id}`),
    h("p", { id: "proposal-summary" },
      `${plural(p.proposed.length, "proposed rule")} learnt from ${plural(p.learntFlows, "flow")} seen ${fmtTime(p.since)} – ${fmtTime(p.until)}`,
      p.scope && Object.keys(p.scope).length ? ` (scope: ${Object.entries(p.scope).map(([k, v]) => `${k} ${v}`).join(", ")})` : "",
      `; learnt against policy revision ${p.baseRevision}. ${applied}`),
    skipped.length ? h("ul", {}, skipped) : null,
    message,
    h("table", { class: "grid", id: "proposed-rules" },
      h("thead", {}, h("tr", {}, ["Apply", "Kind", "Source", "Destination", "Ports", "Change", "Evidence"].map((t) => h("th", {}, t)))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 7, class: "muted" }, "Nothing to learn: every flow in the window is decided by an existing rule.")))),
    p.covered.length ? h("div", {}, h("h2", {}, "Already decided by existing rules"),
      h("ul", { id: "covered" }, p.covered.map((c) => h("li", {},
        `${c.kind} rule #${c.ruleId} ${c.ruleName} (${c.effect}): ${plural(c.evidence.flows, "flow")}, ${plural(c.evidence.connections, "connection")}`)))) : null,
    h("div", { class: "card stack" },
      h("label", {}, "Default effect with these rules", effect),
      h("div", { class: "buttons" },
        h("button", { type: "button", id: "preview-impact", class: "secondary",
          onclick: () => clear(preview).append(impactPreview({ changes: changes() }, hours)) }, "Preview impact"),
        h("button", { type: "button", id: "apply-proposal", disabled: !!p.appliedRevision, onclick: apply }, "Apply selected")),
      result),
    preview));

  async function apply() {
    const rules = chosen().map((r) => ({ kind: r.kind, id: r.rule.id }));
    if (!window.confirm(`Apply ${plural(rules.length, "rule")} with default effect ${effect.value}? One change, one revision.`)) return;
    message.textContent = "";
    try {
      const out = await api("POST", `/policy/proposals/${id}/apply`, { body: { rules, defaultEffect: effect.value } });
      result.textContent = `Applied ${plural(out.rules, "rule")} and ${plural(out.objects, "new object")} as revision ${out.revision}.`;
      document.getElementById("apply-proposal").disabled = true;
    } catch (err) { say(message, err); }
  }
  return null;
}
