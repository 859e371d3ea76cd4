// Radar: the network topology drawn with Cytoscape.js and a layered layout of
// its own (sources left, destinations right; groups as compound nodes in bands). The page state is exposed as
// window.cnnfRadar (cy, data, timing) for tests and the benchmark.
import cytoscape from "cytoscape";
import { api, apiAnswer, ApiError, apiRequest, session } from "./api.js";
import { applyLink, query, state, WINDOWS } from "./radarquery.js";
import { auditBadge, clear, fmtClock, fmtTime, h, showFieldErrors } from "./dom.js";

// Label text on these backgrounds has a contrast of at least 4.5:1 (WCAG AA):
// white on green 5.1, dark on yellow 10.3, white on orange 5.2, white on grey 6.2.
export const VERDICT_COLORS = {
  allowed: "#2e7d32", alert: "#f9c20a", blocked: "#b94a00", observed: "#616161",
};
// Lines are coloured by the edge's worst current verdict; the alarming ones
// are drawn wider so that blocked lateral movement stands out.
const VERDICT_WIDTH = { allowed: 2, observed: 2.5, alert: 3.5, blocked: 4.5 };
// Fading every other element on hover restyles them all: above this many
// elements only the neighbourhood is highlighted.
const FADE_MAX_ELEMENTS = 3000;
const VERDICT_TEXT = { allowed: "#ffffff", alert: "#1a1a1a", blocked: "#ffffff", observed: "#ffffff" };
export const SEVERITY_COLORS = {
  critical: "#7f0000", high: "#d32f2f", medium: "#fb8c00", low: "#c0ca33", none: "#43a047",
  unknown: "#78909c",
};
const SEVERITY_ORDER = ["critical", "high", "medium", "low", "none", "unknown"];
const VERDICT_ORDER = { blocked: 3, alert: 2, observed: 1, allowed: 0 };
// Above this many nodes, groups with more than COLLAPSE_MIN_CHILDREN start collapsed.
const BIG_GRAPH = 300;
const COLLAPSE_MIN_CHILDREN = 8;
// Up to these, the banded layered layout with crossing reduction and label
// placement (bandedPositions); beyond, the linear-time layered placement
// (layeredPositions) with quiet labels.
const SMALL_MAX_NODES = 400;
// With more edges than this, edge labels show only from this zoom level up.
const QUIET_EDGES = 1000;
const QUIET_ZOOM = 0.6;
const SMALL_MAX_EDGES = 600;

const radar = { cy: null, data: null, timing: {}, renders: 0, ready: false, errors: [] };
window.cnnfRadar = radar;

function pollMs() {
  const fromUrl = new URLSearchParams(location.search).get("poll");
  return Number(fromUrl || localStorage.getItem("cnnf.pollMs") || 5000);
}

function imageName(image) {
  const at = image.indexOf("@");
  if (at >= 0) return image.slice(0, at);
  const slash = image.lastIndexOf("/");
  const colon = image.lastIndexOf(":");
  return colon > slash ? image.slice(0, colon) : image;
}

// "docker.io/library/nginx:1" and "nginx:1" name one image, as the Defenders report it.
function normaliseImage(image) {
  let name = String(image).trim();
  for (const prefix of ["docker.io/library/", "docker.io/", "index.docker.io/library/", "index.docker.io/"]) {
    if (name.startsWith(prefix)) { name = name.slice(prefix.length); break; }
  }
  return name;
}

// A "would" verdict's word ("would prevent"), by the verdict class it has.
const WOULD_WORD = { blocked: "prevent", alert: "alert", allowed: "allow", observed: "allow" };

// A port's word on a label: its current verdict, or what the policy with
// everything staged would do where that differs ("would prevent"); with
// enforcement off, what happened apart from what would ("seen, would prevent"),
// as the Console writes labels.
const portWord = (p) => (p.seen
  ? `seen, would ${WOULD_WORD[p.verdict]}${p.would ? ` (staged: ${WOULD_WORD[p.would]})` : ""}`
  : p.would ? `would ${WOULD_WORD[p.would]}` : p.verdict);

export function compactPorts(ports) {
  const byVerdict = new Map();
  for (const p of ports) {
    const word = portWord(p);
    if (!byVerdict.has(word)) byVerdict.set(word, []);
    const list = byVerdict.get(word);
    if (!list.includes(p.port)) list.push(p.port);
  }
  const num = (p) => (/^\d+/.test(p) ? parseInt(p, 10) : 70000);
  // "would ..." parts after the current verdicts, as the Console writes labels
  const order = (w) => VERDICT_ORDER[w] ?? -1;
  return [...byVerdict.entries()]
    .sort((a, b) => order(b[0]) - order(a[0]) || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
    .map(([verdict, list]) => {
      list.sort((a, b) => num(a) - num(b));
      const shown = list.slice(0, 3).join(",") + (list.length > 3 ? ` +${list.length - 3}` : "");
      return `${shown} ${verdict}`;
    })
    .join(" · ");
}

function worstSeverity(list) {
  for (const s of SEVERITY_ORDER) if (list.includes(s)) return s;
  return "unknown";
}

const plural = (n, noun) => `${n} ${noun}${n === 1 ? "" : "s"}`;

// What runs on an image or host node: "2 pods", "3 containers", "2 pods · 1 container"
// (a pod is one workload, whatever its containers); "" when nothing runs.
function workloads(n) {
  return [n.podCount ? plural(n.podCount, "pod") : "",
    n.containers ? plural(n.containers, "container") : ""].filter(Boolean).join(" · ");
}

function nodeLabel(n) {
  if (n.kind === "image") return `${n.label}\n${workloads(n) || "not running"}`;
  if (n.kind === "host") {
    const running = workloads(n);
    return running ? `${n.label}\n${running}` : n.label;
  }
  if (n.kind === "subnet" || n.kind === "dns") return `${n.label}\n${n.detail}`;
  return n.label;
}

// The elements to draw: nodes of collapsed groups fold into their group, and
// the edges between folded nodes merge into one edge per pair.
function visibleElements(data) {
  const byId = new Map(data.nodes.map((n) => [n.id, n]));
  const folded = (id) => {
    const n = byId.get(id);
    return n && n.parent && state.collapsed.has(n.parent) ? n.parent : id;
  };
  const children = new Map();
  for (const n of data.nodes) {
    if (!n.parent) continue;
    if (!children.has(n.parent)) children.set(n.parent, []);
    children.get(n.parent).push(n);
  }
  const nodes = [];
  for (const g of data.groups) {
    const members = children.get(g.id) || [];
    const noun = data.view === "container" ? "image" : "host";
    if (state.collapsed.has(g.id)) {
      nodes.push({ group: "nodes", data: {
        id: g.id, kind: "collapsed", groupBy: g.groupBy, name: g.label, children: members.length,
        label: `${g.label}\n${members.length} ${noun}${members.length === 1 ? "" : "s"} (collapsed)`,
        severity: worstSeverity(members.map((m) => m.severity)),
        containers: members.reduce((sum, m) => sum + (m.containers || 0), 0),
        podCount: members.reduce((sum, m) => sum + (m.podCount || 0), 0),
      } });
    } else {
      nodes.push({ group: "nodes", data: {
        id: g.id, kind: "group", groupBy: g.groupBy, name: g.label, children: members.length,
        label: `${g.groupBy}: ${g.label}`,
      } });
    }
  }
  for (const n of data.nodes) {
    if (n.parent && state.collapsed.has(n.parent)) continue;
    const d = { ...n, name: n.label, label: nodeLabel(n), running: (n.containers || 0) + (n.podCount || 0) > 0 || n.kind !== "image" };
    if (!n.parent) delete d.parent;
    nodes.push({ group: "nodes", data: d });
  }
  const edges = [];
  const merged = new Map();
  for (const e of data.edges) {
    const s = folded(e.source);
    const t = folded(e.target);
    if (s === e.source && t === e.target) {
      edges.push({ group: "edges", data: { ...e } });
      continue;
    }
    if (s === t) continue; // inside one collapsed group: counted on the group
    const id = `merged:${s}->${t}`;
    let m = merged.get(id);
    if (!m) {
      m = { id, source: s, target: t, merged: true, observed: false, hole: false, ports: [],
        rules: [], count: 0, members: 0, verdicts: new Set(), effects: new Set() };
      merged.set(id, m);
    }
    m.members += 1;
    m.observed ||= e.observed;
    m.hole ||= e.hole;
    m.count += e.count;
    for (const p of e.ports) m.verdicts.add(p.verdict);
    if (e.effect) m.effects.add(e.effect);
    for (const p of e.ports) m.ports.push(p);
    for (const id of e.rules) if (!m.rules.includes(id)) m.rules.push(id);
  }
  for (const m of merged.values()) {
    const verdicts = [...m.verdicts].sort((a, b) => VERDICT_ORDER[b] - VERDICT_ORDER[a]);
    const effects = [...m.effects];
    edges.push({ group: "edges", data: {
      ...m, verdicts, verdict: verdicts[0] || "observed", line: m.observed ? "solid" : "dotted",
      effect: effects.length === 1 ? effects[0] : (effects.length ? "mixed" : ""),
      label: `${m.members} edges: ${compactPorts(m.ports)}`, effects: undefined,
    } });
  }
  return [...nodes, ...edges];
}

const STYLE = [
  { selector: "node", style: {
    label: "data(label)", "text-wrap": "wrap", "text-max-width": 180, "font-size": 11,
    "font-family": "system-ui, sans-serif", color: "#1f2933", "text-valign": "bottom",
    "text-margin-y": 4, "text-background-color": "#ffffff", "text-background-opacity": 0.85,
    "text-background-padding": 1, width: 34, height: 34, "border-width": 2,
    "border-color": "#ffffff", "min-zoomed-font-size": 7,
  } },
  // One rule per severity, not a function: a function's value is computed for
  // each element on every style pass, a rule's once.
  { selector: 'node[kind = "image"], node[kind = "host"], node[kind = "collapsed"]', style: {
    "background-color": SEVERITY_COLORS.unknown,
  } },
  ...Object.keys(SEVERITY_COLORS).map((sev) => ({
    selector: ["image", "host", "collapsed"].map((k) => `node[kind = "${k}"][severity = "${sev}"]`).join(", "),
    style: { "background-color": SEVERITY_COLORS[sev] } })),
  { selector: 'node[kind = "image"]', style: { shape: "round-rectangle" } },
  { selector: 'node[kind = "host"]', style: { shape: "rectangle", width: 44, height: 30 } },
  { selector: "node[?running]", style: {} },
  { selector: 'node[kind = "image"][!running]', style: {
    "border-style": "dashed", "border-color": "#546e7a", "background-opacity": 0.55,
  } },
  { selector: 'node[kind = "subnet"]', style: {
    shape: "round-hexagon", "background-color": "#90caf9", "border-color": "#1e88e5", width: 40, height: 36,
  } },
  { selector: 'node[kind = "dns"]', style: {
    shape: "round-diamond", "background-color": "#b39ddb", "border-color": "#5e35b1", width: 40, height: 40,
  } },
  { selector: 'node[kind = "internet"]', style: {
    shape: "ellipse", "background-color": "#e3f2fd", "border-color": "#1565c0", width: 46, height: 46,
    "font-weight": "bold",
  } },
  { selector: 'node[kind = "collapsed"]', style: {
    shape: "round-octagon", width: 56, height: 56, "border-color": "#37474f", "border-width": 3,
    "font-weight": "bold",
  } },
  { selector: 'node[kind = "group"]', style: {
    shape: "round-rectangle", "background-color": "#eceff1", "background-opacity": 0.6,
    "border-color": "#b0bec5", "border-width": 1, "text-valign": "top", "text-halign": "center",
    "font-size": 12, "font-weight": "bold", color: "#37474f", "text-margin-y": -4, padding: 14,
  } },
  { selector: "node:selected", style: { "border-color": "#1565c0", "border-width": 4 } },
  { selector: "edge", style: {
    width: 2, "curve-style": "bezier", "target-arrow-shape": "triangle", "arrow-scale": 1.1,
    "line-color": "#607d8b", "target-arrow-color": "#607d8b", "line-style": "data(line)",
    "line-dash-pattern": [2, 5], label: "data(label)", "font-size": 10,
    "font-family": "system-ui, sans-serif", "text-background-opacity": 1,
    "text-background-padding": 2, "text-background-shape": "roundrectangle",
    "text-rotation": "none", "min-zoomed-font-size": 8, "source-distance-from-node": 2,
    "target-distance-from-node": 2,
  } },
  ...Object.keys(VERDICT_COLORS).map((v) => ({ selector: `edge[verdict = "${v}"]`, style: {
    "text-background-color": VERDICT_COLORS[v], color: VERDICT_TEXT[v],
    "line-color": VERDICT_COLORS[v], "target-arrow-color": VERDICT_COLORS[v],
    width: VERDICT_WIDTH[v],
  } })),
  // Many edges: labels only when zoomed in (measuring thousands of labels
  // costs seconds) and on the selected edge.
  { selector: "edge.quiet", style: { label: "" } },
  { selector: "edge.big", style: { "curve-style": "straight", "arrow-scale": 0.8 } },
  { selector: "edge.quiet:selected", style: { label: "data(label)" } },
  { selector: "edge:selected", style: { width: 5, "line-color": "#1565c0", "target-arrow-color": "#1565c0",
    "text-background-color": "#1565c0", color: "#ffffff" } },
  // Hover: the node, its edges and its neighbours stand out, the rest fades.
  { selector: ".faded", style: { opacity: 0.15 } },
  { selector: "node.hl", style: { "border-color": "#1565c0", "border-width": 3 } },
  { selector: "edge.hl", style: { "z-index": 10 } },
];

function legend() {
  const swatch = (color, text, cls = "swatch") => h("li", {}, h("span", { class: cls, style: `background:${color}` }), text);
  const line = (style, color, text) => h("li", {}, h("span", { class: `line ${style}`, style: `border-color:${color}` }), text);
  return h("details", { id: "legend", class: "legend", open: !document.body.classList.contains("legend-closed"),
    "aria-label": "Legend", ontoggle: (e) => {
      document.body.classList.toggle("legend-closed", !e.target.open);
      if (radar.cy) radar.cy.resize();
    } },
    h("summary", {}, "Legend"),
    h("strong", {}, "Ports (label colour and word)"),
    h("ul", {},
      swatch(VERDICT_COLORS.allowed, "allowed – allowed by a rule"),
      swatch(VERDICT_COLORS.alert, "alert – allowed and audited"),
      swatch(VERDICT_COLORS.blocked, "blocked – prevented by a rule"),
      swatch(VERDICT_COLORS.observed, "observed – no rule matched (a hole)"),
      h("li", { class: "would-legend" }, "“would prevent”, “would alert” – what the policy would do with its staged rules and staged default in force, where that differs from the current verdict (not enforced)"),
      h("li", { class: "would-legend" }, "“seen, would prevent” – enforcement is off: the connections went through; the colour is what the policy would do")),
    h("strong", {}, "Lines (worst current verdict)"),
    h("ul", {},
      line("solid", VERDICT_COLORS.blocked, "solid – connections seen"),
      line("dotted", VERDICT_COLORS.blocked, "dotted – a rule, not seen"),
      h("li", { class: "muted" }, "A line curves where two edges join one pair of nodes, or where a straight line would run through another edge's label."),
      h("li", { class: "muted" }, "Colour: the worst verdict of the edge's ports under the current policy; what was recorded before is in the edge's history.")),
    h("strong", {}, "Nodes (worst vulnerability)"),
    h("ul", {},
      swatch(SEVERITY_COLORS.critical, "critical"), swatch(SEVERITY_COLORS.high, "high"),
      swatch(SEVERITY_COLORS.medium, "medium"), swatch(SEVERITY_COLORS.low, "low"),
      swatch(SEVERITY_COLORS.none, "none"), swatch(SEVERITY_COLORS.unknown, "no report"),
      swatch("#90caf9", "subnet ⬡ · DNS ◆ · internet ●", "swatch ext")));
}

// Ids compared by code unit: the layouts' tie-breaks need an order, not a
// language's. localeCompare's first call loads the ICU collator, which cost
// ~150 ms of the demo's first render here (a third of it).
const byText = (a, b) => (a < b ? -1 : a > b ? 1 : 0);

// Linear-time layered placement for big graphs, on the plain elements before
// they are added: rank = breadth-first distance from the sources (cycles
// broken), columns left to right, members of a group kept together.
export function layeredPositions(elements) {
  const parents = new Set();
  for (const el of elements) if (el.group === "nodes" && el.data.parent) parents.add(el.data.parent);
  const leaves = elements.filter((el) => el.group === "nodes" && !parents.has(el.data.id));
  const out = new Map(leaves.map((el) => [el.data.id, []]));
  const indeg = new Map(leaves.map((el) => [el.data.id, 0]));
  for (const el of elements) {
    if (el.group !== "edges" || el.data.source === el.data.target) continue;
    if (out.has(el.data.source) && indeg.has(el.data.target)) {
      out.get(el.data.source).push(el.data.target);
      indeg.set(el.data.target, indeg.get(el.data.target) + 1);
    }
  }
  const rank = new Map();
  const queue = leaves.filter((el) => !indeg.get(el.data.id)).map((el) => el.data.id);
  if (!queue.length && leaves.length) queue.push(leaves[0].data.id);
  for (const id of queue) rank.set(id, 0);
  for (let i = 0; i < queue.length; i += 1) {
    const r = rank.get(queue[i]);
    for (const next of out.get(queue[i])) {
      if (rank.has(next)) continue;
      rank.set(next, Math.min(r + 1, 12));
      queue.push(next);
    }
  }
  const columns = new Map();
  for (const el of leaves) {
    const r = rank.get(el.data.id) || 0;
    if (!columns.has(r)) columns.set(r, []);
    columns.get(r).push(el);
  }
  const positions = new Map();
  for (const [r, list] of columns) {
    list.sort((a, b) => byText(String(a.data.parent || ""), String(b.data.parent || ""))
      || byText(a.data.id, b.data.id));
    const perColumn = Math.ceil(Math.sqrt(list.length / 2)) || 1;
    const height = Math.ceil(list.length / perColumn);
    list.forEach((el, i) => {
      positions.set(el.data.id, { x: r * 900 + Math.floor(i / height) * 180, y: (i % height) * 70 });
    });
  }
  return positions;
}

// The layered layout for graphs up to SMALL_MAX_NODES (ELK's layered layout
// took 1 to 2 s here for the demo's dozen nodes, most of the first render):
// sources left, destinations right, each group a horizontal band, computed in
// milliseconds on the plain elements before they are added.
// - rank: longest path from the sources (edges that close a cycle left out);
// - bands: one per group (ungrouped nodes share one, last), ordered so that
//   connected groups sit next to each other;
// - order within a band's column: barycentre sweeps over the neighbours;
// - columns wide enough for the widest node name and edge label, rows for
//   the tallest node with its label; a column's nodes centred in their band.
const FONT_W = 6.4; // px per character of an 11 px label, a little generous
const NODE_LABEL_MAX = 180; // the node style's text-max-width
function labelSize(text, max) {
  const lines = String(text || "").split("\n");
  let width = 0;
  let rows = 0;
  for (const line of lines) {
    const w = line.length * FONT_W;
    width = Math.max(width, Math.min(w, max));
    rows += Math.max(1, Math.ceil(w / max));
  }
  return { width, rows };
}

export function bandedPositions(elements) {
  const groups = new Set();
  for (const el of elements) if (el.group === "nodes" && el.data.kind === "group") groups.add(el.data.id);
  const leaves = elements.filter((el) => el.group === "nodes" && el.data.kind !== "group");
  const ids = leaves.map((el) => el.data.id);
  const byId = new Map(leaves.map((el) => [el.data.id, el]));
  const out = new Map(ids.map((id) => [id, []]));
  const inn = new Map(ids.map((id) => [id, []]));
  let labelW = 0;
  for (const el of elements) {
    if (el.group !== "edges") continue;
    const { source, target } = el.data;
    if (source === target || !out.has(source) || !inn.has(target)) continue;
    out.get(source).push(target);
    inn.get(target).push(source);
    labelW = Math.max(labelW, String(el.data.label || "").length * 5.9);
  }
  // Cycles: depth-first, an edge to a node on the current path is left out of the ranking.
  const state = new Map();
  const back = new Set();
  for (const root of [...ids].sort((a, b) => inn.get(a).length - inn.get(b).length || byText(a, b))) {
    if (state.has(root)) continue;
    const stack = [[root, 0]];
    state.set(root, 1);
    while (stack.length) {
      const top = stack[stack.length - 1];
      const next = out.get(top[0])[top[1]++];
      if (next === undefined) { state.set(top[0], 2); stack.pop(); continue; }
      if (state.get(next) === 1) back.add(`${top[0]}\u0000${next}`);
      else if (!state.has(next)) { state.set(next, 1); stack.push([next, 0]); }
    }
  }
  const rank = new Map();
  const pending = new Map(ids.map((id) => [id, inn.get(id).filter((u) => !back.has(`${u}\u0000${id}`)).length]));
  const queue = ids.filter((id) => pending.get(id) === 0);
  for (const id of queue) rank.set(id, 0);
  for (let i = 0; i < queue.length; i += 1) {
    const u = queue[i];
    for (const v of out.get(u)) {
      if (back.has(`${u}\u0000${v}`)) continue;
      rank.set(v, Math.max(rank.get(v) || 0, rank.get(u) + 1));
      pending.set(v, pending.get(v) - 1);
      if (pending.get(v) === 0) queue.push(v);
    }
  }
  // A node that only receives sits one column right of its furthest source:
  // longest-path ranking already does; a node with no edge stays in column 0.
  const bandOf = (id) => {
    const p = byId.get(id).data.parent;
    return p && groups.has(p) ? p : "";
  };
  // Bands: groups by name, then ordered by the bands they connect to (two sweeps).
  let bands = [...groups].sort();
  if (ids.some((id) => !bandOf(id))) bands.push("");
  for (let sweep = 0; sweep < 2 && bands.length > 2; sweep += 1) {
    const index = new Map(bands.map((b, i) => [b, i]));
    const pull = new Map(bands.map((b) => [b, [0, 0]]));
    for (const u of ids) {
      for (const v of out.get(u)) {
        const a = bandOf(u);
        const b = bandOf(v);
        if (a === b) continue;
        pull.get(a)[0] += index.get(b); pull.get(a)[1] += 1;
        pull.get(b)[0] += index.get(a); pull.get(b)[1] += 1;
      }
    }
    const key = (b) => {
      const [sum, n] = pull.get(b);
      return n ? (sum / n + index.get(b)) / 2 : index.get(b);
    };
    bands = bands.filter((b) => b).sort((a, b) => key(a) - key(b) || byText(a, b))
      .concat(bands.includes("") ? [""] : []);
  }
  // Cells: (band, rank) -> nodes, ordered by barycentre sweeps.
  const cells = new Map();
  for (const id of [...ids].sort()) {
    const k = `${bandOf(id)}\u0000${rank.get(id) || 0}`;
    if (!cells.has(k)) cells.set(k, []);
    cells.get(k).push(id);
  }
  const order = new Map();
  const renumber = () => {
    let i = 0;
    for (const b of bands) {
      for (const [k, list] of cells) if (k.startsWith(`${b}\u0000`)) list.forEach((id, j) => order.set(id, i * 10000 + j));
      i += 1;
    }
  };
  renumber();
  for (let sweep = 0; sweep < 4; sweep += 1) {
    for (const list of cells.values()) {
      const bary = new Map(list.map((id) => {
        const near = [...out.get(id), ...inn.get(id)].map((n) => order.get(n));
        return [id, near.length ? near.reduce((a, b) => a + b, 0) / near.length : order.get(id)];
      }));
      list.sort((a, b) => bary.get(a) - bary.get(b) || byText(a, b));
    }
    renumber();
  }
  // Sizes: the widest node label sets the column width, with room for edge labels.
  let nodeW = 60;
  let rowH = 60;
  for (const el of leaves) {
    const { width, rows } = labelSize(el.data.label, NODE_LABEL_MAX);
    nodeW = Math.max(nodeW, width);
    rowH = Math.max(rowH, 86 + rows * 14);
  }
  const colW = nodeW + Math.min(Math.max(labelW, 120), 320) + 60;
  const ranks = Math.max(0, ...[...rank.values()]) + 1;
  const positions = new Map();
  let top = 0;
  for (const b of bands) {
    let tallest = 0;
    for (let r = 0; r < ranks; r += 1) tallest = Math.max(tallest, (cells.get(`${b}\u0000${r}`) || []).length);
    if (!tallest) continue;
    const height = tallest * rowH;
    for (let r = 0; r < ranks; r += 1) {
      const list = cells.get(`${b}\u0000${r}`) || [];
      const start = top + (height - list.length * rowH) / 2;
      list.forEach((id, i) => positions.set(id, { x: r * colW, y: start + i * rowH + rowH / 2 }));
    }
    top += height + (b ? 70 : 40); // a group's padding and title, then the next band
  }
  return positions;
}

// Fit the view to the placed nodes: cy.fit() would compute every edge's
// geometry first, which costs a second with thousands of edges.
function fitToNodes(cy, elements) {
  let x0 = Infinity; let y0 = Infinity; let x1 = -Infinity; let y1 = -Infinity;
  for (const el of elements) {
    if (!el.position) continue;
    x0 = Math.min(x0, el.position.x); x1 = Math.max(x1, el.position.x);
    y0 = Math.min(y0, el.position.y); y1 = Math.max(y1, el.position.y);
  }
  if (x0 === Infinity) return;
  const pad = 80;
  const zoom = Math.min(cy.width() / (x1 - x0 + 2 * pad), cy.height() / (y1 - y0 + 2 * pad), 1.5);
  cy.viewport({ zoom, pan: { x: (cy.width() - (x1 + x0) * zoom) / 2, y: (cy.height() - (y1 + y0) * zoom) / 2 } });
}

// An edge's label sits at its midpoint, but a straight edge across a layer of
// the layered layout passes the nodes of that layer, and its label could cover
// a node's name ("kube/cart:2.3" read "kube/cart:2.3 blocked"). Each label slides
// along its edge (text margins) to the nearest place clear of the nodes, their
// labels, the group titles and the other edge labels, and, where one is in
// reach, of the other edges' lines too (a line through a label hides its
// words); it stays mid-edge when no place is clear.
const LABEL_STEP = 4;
const LABEL_GAP = 3;
const LINE_AVOID_MAX = 250;
// A label's places are measured until this many are clear of every line.
const FREE_ENOUGH = 8;
// Edges tried for a bend at most, and how far from the straight line (model px), nearest first.
const BEND_MAX = 20;
const BENDS = [30, -30, 60, -60, 90, -90, 120, -120, 160, -160];
// Where a label may sit along a bent edge (curve parameter), middle first.
const BEND_SLIDES = [0.5, 0.45, 0.55, 0.4, 0.6, 0.35, 0.65, 0.3, 0.7, 0.25, 0.75];

// An edge's drawn path as a polyline: a straight edge is its two endpoints; a
// bezier (two edges between one pair of nodes) is sampled.
export function edgePath(e) {
  const a = e.sourceEndpoint();
  const b = e.targetEndpoint();
  const ctrl = e.controlPoints() || e.segmentPoints();
  if (!ctrl || !ctrl.length) return [a, b];
  if (e.segmentPoints()) return [a, ...ctrl, b];
  const out = [a];
  // cytoscape joins control points with quadratic pieces through their midpoints
  const pts = [a, ...ctrl, b];
  for (let i = 1; i < pts.length - 1; i += 1) {
    const p0 = i === 1 ? pts[0] : { x: (pts[i - 1].x + pts[i].x) / 2, y: (pts[i - 1].y + pts[i].y) / 2 };
    const p2 = i === pts.length - 2 ? pts[i + 1] : { x: (pts[i].x + pts[i + 1].x) / 2, y: (pts[i].y + pts[i + 1].y) / 2 };
    for (let k = 1; k <= 8; k += 1) {
      const t = k / 8;
      out.push({ x: (1 - t) ** 2 * p0.x + 2 * (1 - t) * t * pts[i].x + t * t * p2.x,
        y: (1 - t) ** 2 * p0.y + 2 * (1 - t) * t * pts[i].y + t * t * p2.y });
    }
  }
  return out;
}

// Whether the segment p-q passes through the box (Liang-Barsky clipping).
export function segmentHitsBox(p, q, box) {
  let t0 = 0;
  let t1 = 1;
  const dx = q.x - p.x;
  const dy = q.y - p.y;
  for (const [num, den] of [[p.x - box.x1, -dx], [box.x2 - p.x, dx], [p.y - box.y1, -dy], [box.y2 - p.y, dy]]) {
    if (den === 0) { if (num < 0) return false; continue; }
    const t = num / den;
    if (den < 0) { if (t > t1) return false; if (t > t0) t0 = t; } else { if (t < t0) return false; if (t < t1) t1 = t; }
  }
  return true;
}

// A group's title, as drawn: its label above the group's box.
const titleBox = (n) => n.boundingBox({ includeNodes: false, includeEdges: false,
  includeLabels: true, includeOverlays: false, includeUnderlays: false });

// Each group's title slides along the top of its group to the place the
// fewest edge lines run through, nearest its middle: centred, a line between
// the bands crossed it (the demo's lines into "namespace: shop-data" ran
// through the title). `lines` are the edges' segments. Returns each title's
// box where it now is (computed here: Cytoscape's cached box of a parent's
// label can lag a text-margin change).
const TITLE_STEP = 6;
const TITLE_BESIDE = 6; // gap between a title beside its group and the group's corner
function placeGroupTitles(cy, lines) {
  const boxes = new Map();
  const nodeBoxes = cy.nodes().filter((n) => !n.isParent())
    .map((n) => n.boundingBox({ includeLabels: true, includeOverlays: false }));
  cy.nodes().forEach((n) => {
    if (!n.isParent() || !n.data("label")) return;
    const box = titleBox(n);
    const body = n.boundingBox({ includeLabels: false, includeOverlays: false, includeUnderlays: false });
    if (box.w === 0) return;
    // only the segments that reach the title's height, once per group
    const near = lines.filter((sg) => sg.y1 <= box.y2 + 2 && sg.y2 >= box.y1 - 2);
    const through = (dx) => {
      const moved = { x1: box.x1 + dx - 2, x2: box.x2 + dx + 2, y1: box.y1 - 2, y2: box.y2 + 2 };
      if (nodeBoxes.some((b) => b.x1 < moved.x2 && moved.x1 < b.x2 && b.y1 < moved.y2 && moved.y1 < b.y2)) return Infinity;
      const ids = new Set();
      for (const sg of near) {
        if (ids.has(sg.id) || sg.x1 > moved.x2 || moved.x1 > sg.x2) continue;
        if (segmentHitsBox(sg.p, sg.q, moved)) ids.add(sg.id);
      }
      return ids.size;
    };
    let best = { dx: 0, lines: through(0) };
    // at least half of it over the group's box: it may overhang a corner (the
    // demo's lines into "shop-data" left no place inside its width clear)
    const left = body.x1 - box.x1 - box.w / 2;
    const right = body.x2 - box.x2 + box.w / 2;
    for (let i = 1; best.lines && (i * TITLE_STEP <= right || -i * TITLE_STEP >= left); i += 1) {
      for (const dx of [-i * TITLE_STEP, i * TITLE_STEP]) {
        if (dx < left || dx > right) continue;
        const lines = through(dx);
        if (lines < best.lines) best = { dx, lines };
        if (!best.lines) break;
      }
    }
    // Last, beside its top corners, left then right (the kube picture's
    // one-node "payments": the lines into its node and out of it leave less
    // than a title's width clear above it).
    for (const dx of [body.x1 - TITLE_BESIDE - box.x2, body.x2 + TITLE_BESIDE - box.x1]) {
      if (!best.lines) break;
      const lines = through(dx);
      if (lines < best.lines) best = { dx, lines };
    }
    if (best.dx) n.scratch("placed", true).style("text-margin-x", best.dx);
    boxes.set(n.id(), { x1: box.x1 + best.dx, x2: box.x2 + best.dx, y1: box.y1, y2: box.y2 });
  });
  return boxes;
}

export function placeEdgeLabels(cy) {
  const overlaps = (a, b) => a.x1 < b.x2 + LABEL_GAP && b.x1 < a.x2 + LABEL_GAP &&
    a.y1 < b.y2 + LABEL_GAP && b.y1 < a.y2 + LABEL_GAP;
  // Only the elements an earlier placement styled (scratch "placed"): removing
  // a style from every edge restyled them all, new ones included.
  cy.elements().filter((el) => el.scratch("placed"))
    .removeStyle("text-margin-x text-margin-y curve-style control-point-distances control-point-weights")
    .removeScratch("placed");
  // Each edge's segments with their boxes (a quick miss before the clip);
  // none beyond LINE_AVOID_MAX edges, where it would cost more than it shows.
  const segments = [];
  const addSegments = (e) => {
    const pts = edgePath(e);
    for (let i = 1; i < pts.length; i += 1) {
      const p = pts[i - 1];
      const q = pts[i];
      segments.push({ id: e.id(), p, q, x1: Math.min(p.x, q.x), x2: Math.max(p.x, q.x),
        y1: Math.min(p.y, q.y), y2: Math.max(p.y, q.y) });
    }
  };
  if (cy.edges().length <= LINE_AVOID_MAX) cy.edges().forEach(addSegments);
  const titleBoxes = placeGroupTitles(cy, segments);
  const titles = [...titleBoxes.values()];
  const fixed = [];
  cy.nodes().forEach((n) => {
    // A group's body holds its members and their edges: only its title is in
    // the way. Without includeOverlays: false its box was the whole body (the
    // overlay's), no place inside a group was ever clear, and a label there
    // stayed mid-edge, on the title if the edge crossed it (the demo's
    // "5432 allowed" over "namespace: shop-data").
    if (n.isParent()) { if (titleBoxes.has(n.id())) fixed.push(titleBoxes.get(n.id())); return; }
    fixed.push(n.boundingBox({ includeLabels: true, includeOverlays: false }));
  });
  // How many other edges' lines run through a box.
  const crossings = (id, box) => {
    const through = new Set();
    for (const sg of segments) {
      if (sg.id === id || through.has(sg.id) || sg.x1 > box.x2 || box.x1 > sg.x2 ||
          sg.y1 > box.y2 || box.y1 > sg.y2) continue;
      if (segmentHitsBox(sg.p, sg.q, box)) through.add(sg.id);
    }
    return through.size;
  };
  // Each label's places along its edge, nearest the middle first, clear of
  // the nodes, their labels and the group titles, with the lines each crosses.
  const jobs = [];
  cy.edges().forEach((e) => {
    if (!e.data("label") || e.hasClass("quiet") || e.source().same(e.target())) return;
    const box = e.boundingBox({ includeNodes: false, includeEdges: false, includeLabels: true });
    const a = e.sourceEndpoint();
    const b = e.targetEndpoint();
    const length = Math.hypot(b.x - a.x, b.y - a.y);
    if (box.w === 0 || length < 1) return;
    const ux = (b.x - a.x) / length;
    const uy = (b.y - a.y) / length;
    // How far the label may slide and stay clear of the arrow and the ends.
    const reach = length / 2 - (Math.abs(ux) * box.w + Math.abs(uy) * box.h) / 2 - 12;
    const places = [];
    let free = 0;
    for (let i = 0; i * LABEL_STEP <= Math.max(reach, 0); i += 1) {
      for (const t of i === 0 ? [0] : [i * LABEL_STEP, -i * LABEL_STEP]) {
        const dx = ux * t;
        const dy = uy * t;
        const moved = { x1: box.x1 + dx, x2: box.x2 + dx, y1: box.y1 + dy, y2: box.y2 + dy };
        if (fixed.some((o) => overlaps(moved, o))) continue;
        const margin = { x1: moved.x1 - 2, x2: moved.x2 + 2, y1: moved.y1 - 2, y2: moved.y2 + 2 };
        const lines = crossings(e.id(), margin);
        places.push({ dx, dy, moved, lines });
        if (!lines) free += 1;
      }
      // enough clear places to choose from: the rest are not measured
      if (free >= FREE_ENOUGH) break;
    }
    jobs.push({ e, box, places, free });
  });
  // The labels with the fewest places clear of every line choose first (a
  // label with no place at all stays mid-edge, and goes before them, so that
  // they keep clear of it); those no line spares choose last, the place with
  // the fewest lines through it. In edge order, the demo's "9090 allowed" found
  // its one clear place taken by "5432 allowed" and sat on "5432 blocked"'s line.
  const rank = (j) => (!j.places.length ? -1 : j.free || 1e9);
  jobs.sort((x, y) => rank(x) - rank(y));
  const placed = [];
  const chosen = [];
  for (const job of jobs) {
    let best = null;
    for (const p of job.places) {
      if (best && p.lines >= best.lines) continue;
      if (!placed.some((o) => overlaps(p.moved, o))) best = p;
      if (best && !best.lines) break;
    }
    chosen.push({ job, best, index: placed.length });
    placed.push(best ? best.moved : job.box);
  }
  cy.batch(() => {
    for (const { job, best } of chosen) {
      if (best && (best.dx || best.dy)) job.e.scratch("placed", true).style({ "text-margin-x": best.dx, "text-margin-y": best.dy });
    }
  });
  if (!segments.length) return;
  // A label that no place along its straight edge spares (the demo's "9090
  // allowed" between api -> db's line and the lines that cross api -> payments):
  // its edge bends (a curve through a control point beside the straight line,
  // the label at the curve's middle) where the label sits clear of every line,
  // node and label, and the bent line crosses no other label and no node.
  const nodeBoxes = cy.nodes().filter((n) => !n.isParent()).map((n) =>
    ({ id: n.id(), box: n.boundingBox({ includeLabels: true, includeOverlays: false }) }));
  const pathHits = (pts, box) => pts.some((q, k) => k > 0 && segmentHitsBox(pts[k - 1], q, box));
  const margin = (b) => ({ x1: b.x1 - 2, x2: b.x2 + 2, y1: b.y1 - 2, y2: b.y2 + 2 });
  let tries = 0;
  const bend = (entry) => {
    const { job, best, index } = entry;
    const e = job.e;
    // each edge is tried once, BEND_MAX edges at most (a pair of edges is curved already)
    if (entry.tried || tries >= BEND_MAX || e.controlPoints() || e.segmentPoints()) return false;
    entry.tried = true;
    tries += 1;
    e.scratch("placed", true);
    const ends = [e.source().id(), e.target().id()];
    for (const d of BENDS) {
      e.style({ "curve-style": "unbundled-bezier", "control-point-distances": d,
        "control-point-weights": 0.5, "text-margin-x": 0, "text-margin-y": 0 });
      const pts = edgePath(e);
      if (placed.some((o, i) => i !== index && pathHits(pts, o)) || titles.some((t) => pathHits(pts, t)) ||
          nodeBoxes.some((n) => !ends.includes(n.id) && pathHits(pts, n.box))) continue;
      // the label at the curve's middle, or slid along the curve
      const box = e.boundingBox({ includeNodes: false, includeEdges: false, includeLabels: true });
      const a = e.sourceEndpoint();
      const b = e.targetEndpoint();
      const c = e.controlPoints()[0];
      const at = (t) => ({ x: (1 - t) ** 2 * a.x + 2 * (1 - t) * t * c.x + t * t * b.x,
        y: (1 - t) ** 2 * a.y + 2 * (1 - t) * t * c.y + t * t * b.y });
      const middle = at(0.5);
      for (const t of BEND_SLIDES) {
        const p = at(t);
        const dx = p.x - middle.x;
        const dy = p.y - middle.y;
        const moved = { x1: box.x1 + dx, x2: box.x2 + dx, y1: box.y1 + dy, y2: box.y2 + dy };
        if (fixed.some((o) => overlaps(moved, o)) || placed.some((o, i) => i !== index && overlaps(moved, o)) ||
            crossings(e.id(), margin(moved))) continue;
        if (dx || dy) e.style({ "text-margin-x": dx, "text-margin-y": dy });
        placed[index] = moved;
        for (let i = segments.length - 1; i >= 0; i -= 1) if (segments[i].id === e.id()) segments.splice(i, 1);
        addSegments(e);
        return true;
      }
    }
    e.removeStyle("curve-style control-point-distances control-point-weights");
    e.style({ "text-margin-x": best ? best.dx : 0, "text-margin-y": best ? best.dy : 0 });
    return false;
  };
  const byEdge = new Map(chosen.map((entry) => [entry.job.e.id(), entry]));
  for (const entry of chosen) {
    if (!entry.best || !crossings(entry.job.e.id(), margin(placed[entry.index]))) continue;
    if (bend(entry)) continue;
    // Or bend the edges whose lines cross it (their labels clear too).
    for (const sg of [...segments]) {
      const other = byEdge.get(sg.id);
      if (sg.id === entry.job.e.id() || !other || !segmentHitsBox(sg.p, sg.q, margin(placed[entry.index]))) continue;
      bend(other);
      if (!crossings(entry.job.e.id(), margin(placed[entry.index]))) break;
    }
  }
  // A group title that no place along its group spares: the labelled edges
  // whose lines run through it bend, where a bend is clear.
  for (const t of titles) {
    for (const sg of [...segments]) {
      const entry = byEdge.get(sg.id);
      if (entry && segmentHitsBox(sg.p, sg.q, margin(t))) bend(entry);
    }
  }
}

function countEdges(elements) {
  let n = 0;
  for (const el of elements) if (el.group === "edges") n += 1;
  return n;
}

function isSmall(elements) {
  let nodes = 0;
  let edges = 0;
  for (const el of elements) {
    if (el.group === "edges") edges += 1;
    else if (el.data.kind !== "group") nodes += 1;
  }
  return nodes <= SMALL_MAX_NODES && edges <= SMALL_MAX_EDGES;
}

// The boot script's /radar request (see boot.js), taken once: used if it asked
// for the URL the page would ask for now, with the token signed in now, and is
// young (an older answer is no longer "live"; main.js drops it after the first
// page shown in any case).
const BOOT_MAX_AGE_MS = 5000;
function bootAnswer(url) {
  const boot = window.cnnfBoot;
  delete window.cnnfBoot;
  return boot && boot.url === url && boot.token === session.token &&
    performance.now() - boot.at <= BOOT_MAX_AGE_MS ? boot : null;
}

// The first /radar request: the boot script's, or one started now, before
// Cytoscape is set up (which forces the page's first layout).
function firstRequest() {
  const { url, init } = apiRequest("GET", "/radar", { query: query() });
  const boot = bootAnswer(url);
  if (boot) return boot;
  performance.mark("cnnf:radar-request");
  return { url, at: performance.now(), answer: fetch(url, init).then((response) => { performance.mark("cnnf:radar-answer"); return { response }; }, (error) => ({ error })) };
}

export async function renderRadar(main, _args, link) {
  applyLink(link);
  let first = firstRequest();
  const help = "Radar graph. Left and right arrows move between nodes, up and down between the edges of the node; Enter opens the details, Escape closes them.";
  // busy until the first picture is drawn (Cytoscape is set up with it)
  const graphBox = h("div", { id: "graph", class: "graph", tabindex: 0, role: "application",
    "aria-roledescription": "network graph", "aria-label": help, "aria-busy": "true" });
  const panel = h("aside", { id: "panel", class: "panel", hidden: true, "aria-label": "Details" });
  const empty = h("p", { id: "radar-empty", class: "radar-empty", hidden: true, role: "status" });
  const note = h("p", { id: "enforcement-note", class: "radar-note", hidden: true, role: "note" });
  const focusText = h("span", { id: "radar-focus", class: "visually-hidden", "aria-live": "polite" });
  const live = h("span", { id: "live", class: "live", "aria-live": "polite" }, "● loading…");
  const status = h("span", { id: "radar-status", class: "muted" });
  const input = (name, placeholder) => h("input", { name, placeholder, value: state[name],
    oninput: debounce((e) => { state[name] = e.target.value; refresh(true); }, 350) });
  const select = (name, options) => h("select", { name, onchange: (e) => {
    state[name] = e.target.value; if (name === "view" || name === "group") state.collapsed.clear();
    refresh(true);
  } }, options.map(([value, text]) => h("option", { value, selected: state[name] === value }, text)));
  const pause = h("button", { type: "button", class: "secondary", id: "pause", onclick: () => {
    state.paused = !state.paused;
    pause.textContent = state.paused ? "Resume live" : "Pause live";
    live.classList.toggle("paused", state.paused);
    if (!state.paused) refresh(false);
  } }, state.paused ? "Resume live" : "Pause live");
  const toolbar = h("form", { class: "toolbar", id: "radar-filters", onsubmit: (e) => e.preventDefault() },
    h("label", {}, "View ", select("view", [["container", "Containers"], ["host", "Hosts"]])),
    h("label", { id: "group-by" }, "Group by ", select("group", [["namespace", "namespace"], ["host", "host"], ["none", "nothing"]])),
    h("label", {}, "Namespace ", input("namespace", "any")),
    h("label", {}, "Host ", input("host", "any")),
    h("label", {}, "Verdict ", select("verdict", [["", "any"], ["allowed", "allowed"], ["alert", "alert"], ["blocked", "blocked"], ["observed", "observed (holes)"]])),
    h("label", {}, "Window ", select("window", WINDOWS.map(([k]) => [k, k === "all" ? "all time" : `last ${k}`]))),
    h("label", {}, "Search ", input("q", "image, host, name…")),
    h("button", { type: "button", class: "secondary", onclick: () => radar.cy && radar.cy.fit(undefined, 30) }, "Fit"),
    pause);
  const statusBar = h("div", { class: "statusbar" }, live, status);
  clear(main).append(h("section", { class: "radar" }, toolbar, statusBar,
    h("div", { class: "radar-body" }, graphBox, legend(), empty, note, focusText, panel)));

  // The graph shown: null until the first picture (create()).
  let cy = null;
  radar.cy = null;
  radar.ready = false;
  let etag = null;
  let lastQuery = "";
  let lastKey = "";
  let timer = null;
  let stopped = false;
  let inFlight = false;
  let lastChange = "";
  let firstData = true;

  // Cytoscape itself is set up at once, empty, while the first answer is on its
  // way (the boot script sent the request): measured beside main
  // (bench/ui_load.py), setting it up with the elements after the answer cost
  // 150 ms more on the demo; it is "cy" (the graph shown) from the first picture.
  const early = cytoscape({
    container: graphBox, style: STYLE, elements: [], layout: { name: "preset", fit: false },
    minZoom: 0.02, maxZoom: 3, textureOnViewport: true, hideEdgesOnViewport: false,
  });
  function create(elements, viewport) {
    // The first picture: its elements come with their positions, added in one batch.
    graphBox.removeAttribute("aria-busy");
    cy = early;
    cy.viewport(viewport);
    cy.batch(() => cy.add(elements));
    radar.cy = cy;
    if (!performance.getEntriesByName("cnnf:cytoscape").length) performance.mark("cnnf:cytoscape");
    cy.on("tap", "edge", (e) => { focused = e.target; showEdge(e.target.data()); });
    cy.on("tap", "node", (e) => { focused = e.target; anchor = e.target; showNode(e.target); });
    // Deferred: the handler must not remove the element its event is still on.
    cy.on("dbltap", 'node[kind = "collapsed"], node[kind = "group"]', (e) => {
      const id = e.target.id();
      setTimeout(() => toggleGroup(id), 0);
    });
    cy.on("tap", (e) => { if (e.target === cy) closePanel(); });
    // Hover: a node's edges and neighbours stand out.
    cy.on("mouseover", "node", (e) => highlight(e.target));
    cy.on("mouseout", "node", () => highlight(null));
    cy.on("zoom", debounce(quietLabels, 150));
    cy.on("dragfree", "node", placeLabels);
  }

  graphBox.addEventListener("mouseleave", () => highlight(null));
  function highlight(node) {
    if (!cy) return;
    cy.batch(() => {
      cy.elements(".hl").removeClass("hl");
      cy.elements(".faded").removeClass("faded");
      if (!node || node.data("kind") === "group") return;
      const near = node.closedNeighborhood();
      near.addClass("hl");
      if (cy.elements().length <= FADE_MAX_ELEMENTS) {
        cy.elements().difference(near).difference(near.parents()).addClass("faded");
      }
    });
  }

  // --- keyboard ------------------------------------------------------------------
  let focused = null;
  let anchor = null; // the node whose edges up and down walk through
  const byPlace = (a, b) => a.position("x") - b.position("x") || a.position("y") - b.position("y")
    || byText(a.id(), b.id());
  function describe(el) {
    if (el.isEdge()) {
      const d = el.data();
      return `Edge ${nameOf(d.source)} to ${nameOf(d.target)}: ${d.label}`;
    }
    const d = el.data();
    return `${d.kind === "collapsed" ? "collapsed group" : d.kind} ${String(d.label).replace(/\n/g, ", ")}`;
  }
  function focusOn(el) {
    if (!el || el.empty()) return;
    focused = el;
    if (el.isNode()) anchor = el;
    cy.elements(":selected").unselect();
    el.select();
    highlight(el.isNode() ? el : null);
    const box = el.renderedBoundingBox();
    if (box.x2 < 0 || box.y2 < 0 || box.x1 > cy.width() || box.y1 > cy.height()) cy.center(el);
    focusText.textContent = describe(el);
    graphBox.dataset.focused = el.id();
  }
  graphBox.addEventListener("keydown", (ev) => {
    if (!cy) {
      if (ev.key.startsWith("Arrow") || ev.key === "Enter") {
        focusText.textContent = `Radar is loading: ${live.textContent.replace(/^● /, "")}`;
        ev.preventDefault();
      }
      return;
    }
    const nodes = cy.nodes().filter((n) => n.data("kind") !== "group").sort(byPlace);
    if (!nodes.length) return;
    const from = focused && focused.inside() ? focused : null;
    const node = anchor && anchor.inside() ? anchor : from && from.isEdge() ? from.source() : null;
    if (ev.key === "ArrowRight" || ev.key === "ArrowLeft") {
      const i = node ? nodes.indexOf(node) : -1;
      const step = ev.key === "ArrowRight" ? 1 : -1;
      focusOn(nodes[(i + step + nodes.length) % nodes.length] || nodes[0]);
    } else if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
      const edges = (node ? node.connectedEdges() : cy.edges()).sort((a, b) =>
        byPlace(a.source(), b.source()) || byPlace(a.target(), b.target()));
      if (!edges.length) { focusText.textContent = `${describe(node)}: no edges`; ev.preventDefault(); return; }
      const i = from && from.isEdge() ? edges.indexOf(from) : -1;
      const step = ev.key === "ArrowDown" ? 1 : -1;
      focusOn(edges[(i + step + edges.length) % edges.length] || edges[0]);
    } else if ((ev.key === "Enter" || ev.key === " ") && from) {
      if (from.isEdge()) showEdge(from.data());
      else showNode(from);
    } else {
      return;
    }
    ev.preventDefault();
  });
  function onEscape(ev) {
    if (ev.key !== "Escape" || panel.hidden) return;
    closePanel();
    if (focused && focused.inside()) graphBox.focus();
  }
  document.addEventListener("keydown", onEscape);

  function quietLabels() {
    const quiet = cy.edges().length > QUIET_EDGES && cy.zoom() < QUIET_ZOOM;
    const edges = cy.edges();
    if (quiet && edges.some((e) => !e.hasClass("quiet"))) edges.addClass("quiet");
    else if (!quiet && edges.some((e) => e.hasClass("quiet"))) edges.removeClass("quiet");
  }
  // Labels are placed again only when a label or a node's place changed (a poll
  // that brings the same picture, a node dropped where it was, costs nothing).
  let placedFor = "";
  function placeLabels() {
    if (cy.edges().length > SMALL_MAX_EDGES) return;
    const key = cy.elements().map((el) => (el.isEdge() ? `${el.id()}\t${el.data("label")}`
      : `${el.id()}\t${el.data("label")}\t${Math.round(el.position("x"))},${Math.round(el.position("y"))}`)).join("\n");
    if (key === placedFor) return;
    placedFor = key;
    placeEdgeLabels(cy);
  }

  function toggleGroup(id) {
    if (state.collapsed.has(id)) state.collapsed.delete(id);
    else state.collapsed.add(id);
    draw(radar.data, true).catch((err) => radar.errors.push(String(err)));
  }

  async function draw(data, relayout) {
    const t0 = performance.now();
    const elements = visibleElements(data);
    const ids = new Set(elements.map((el) => el.data.id));
    const same = cy !== null && cy.elements().length === ids.size && cy.elements().every((el) => ids.has(el.id()));
    let added = 0;
    const layout = !same || relayout;
    const small = layout && isSmall(elements);
    if (layout) {
      // Positions (and, for big graphs, quiet labels) go in with the elements,
      // so nothing is measured or moved twice.
      const positions = small ? bandedPositions(elements) : layeredPositions(elements);
      for (const el of elements) {
        if (positions.has(el.data.id)) el.position = positions.get(el.data.id);
      }
    }
    const mark = (name) => { if (!radar.ready) performance.mark(`cnnf:${name}`); };
    mark("radar-layout");
    if (layout && countEdges(elements) > QUIET_EDGES) {
      for (const el of elements) if (el.group === "edges") el.classes = "quiet big";
    }
    if (!cy) {
      // The first picture: set up with its elements in place and the view on
      // the placed nodes; a small graph is fitted to its labels too once they
      // are placed (their boxes are measured then, once).
      create(elements, { zoom: 1, pan: { x: 0, y: 0 } });
      fitToNodes(cy, elements);
      placedFor = "";
      added = elements.length;
    } else {
      cy.batch(() => {
        if (!layout) {
          for (const el of elements) cy.getElementById(el.data.id).data(el.data);
        } else {
          const before = new Set(cy.elements().map((el) => el.id()));
          cy.elements().remove();
          cy.add(elements);
          placedFor = ""; // new elements: no label placed yet
          added = elements.filter((el) => !before.has(el.data.id)).length;
        }
      });
      cy.resize(); // the container may have moved: refresh the cached geometry for clicks
      if (layout && !small) fitToNodes(cy, elements);
    }
    const t1 = performance.now();
    mark("radar-added");
    quietLabels();
    placeLabels();
    mark("radar-labels");
    // after the labels: their boxes are measured by then, and placed
    if (small) cy.fit(undefined, 30);
    const t2 = performance.now();
    radar.timing.buildMs = Math.round(t1 - t0);
    radar.timing.layoutMs = Math.round(t2 - t1);
    status.textContent = `${data.nodes.length} nodes · ${data.edges.length} edges` +
      (state.collapsed.size ? ` · ${state.collapsed.size} groups collapsed (double-click to expand)` : "");
    const q = state.q.trim();
    const filtered = q || state.namespace.trim() || state.host.trim() || state.verdict;
    empty.hidden = data.nodes.length > 0;
    empty.textContent = q ? `No node matches “${q}”${filtered !== q ? " with these filters" : ""}.`
      : filtered ? "Nothing matches these filters."
        : state.view === "host" ? "No hosts yet: a Defender reports its host when it connects."
          : "Nothing to show yet: no running containers, rules or flows.";
    const what = state.view === "host" ? "Host" : "Container";
    note.hidden = data.enforced !== false;
    note.textContent = `${what} enforcement is off: ${what.toLowerCase()} rules are drawn but not enforced, connections are only observed. Turn it on in Settings.`;
    return added;
  }

  async function refresh(relayout) {
    if (stopped || inFlight) return;
    inFlight = true;
    let t0 = performance.now();
    try {
      const q = query();
      const same = JSON.stringify(q) === lastQuery && etag && !relayout;
      let response;
      if (first) {
        const { at, answer } = first;
        first = null;
        t0 = at;
        const { response: r, error } = await answer;
        if (error) throw error;
        response = await apiAnswer("/radar", r, { raw: true });
      } else {
        response = await api("GET", "/radar", { query: q, raw: true,
          headers: same ? { "If-None-Match": etag } : {} });
      }
      if (stopped) return;
      if (response.status === 304) {
        live.textContent = `● Live · checked ${fmtClock()}${lastChange ? ` · new data at ${lastChange}` : ""}`;
        live.dataset.updated = String(radar.renders);
        return;
      }
      const data = await response.json();
      etag = response.headers.get("ETag");
      lastQuery = JSON.stringify(q);
      const t1 = performance.now();
      if (firstData) { performance.mark("cnnf:radar-data"); firstData = false; }
      const key = `${state.view}/${state.group}`;
      if (key !== lastKey) {
        lastKey = key;
        if (data.nodes.length > BIG_GRAPH && state.autoCollapsedFor !== key) {
          state.autoCollapsedFor = key;
          for (const g of data.groups) if (g.children > COLLAPSE_MIN_CHILDREN) state.collapsed.add(g.id);
        }
        relayout = true;
      }
      // A 200 means the graph changed (the server answers 304 otherwise).
      const changed = true;
      const firstRender = !radar.ready;
      const previous = radar.data;
      radar.data = data;
      const added = await draw(data, relayout || !previous);
      if (firstRender) performance.mark("cnnf:radar-drawn");
      // Wait for the frame to be painted before taking the time.
      await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
      const t2 = performance.now();
      radar.timing.fetchMs = Math.round(t1 - t0);
      radar.timing.totalMs = Math.round(t2 - t0);
      if (firstRender) {
        radar.timing.firstRenderMs = radar.timing.totalMs;
        // From navigation start: the whole wait of a page opened on Radar.
        performance.mark("cnnf:radar-painted");
        radar.timing.sincePageMs = Math.round(t2);
      }
      radar.renders += 1;
      radar.ready = true;
      if (firstRender && link) focusLink(link);
      const now = fmtClock();
      if (changed && !firstRender) lastChange = `${now}${added ? ` (+${added})` : ""}`;
      live.textContent = `● Live · checked ${now}${lastChange ? ` · new data at ${lastChange}` : ""}`;
      live.classList.toggle("fresh", changed && !firstRender);
      live.dataset.updated = String(radar.renders);
    } catch (err) {
      live.textContent = `● Not updating: ${err.message}`;
      live.classList.add("down");
      radar.errors.push(String(err.message));
    } finally {
      inFlight = false;
    }
  }

  function schedule() {
    timer = setTimeout(async () => {
      if (!state.paused && !document.hidden) await refresh(false);
      if (!stopped && session.token) schedule();
    }, pollMs());
  }

  // --- side panel --------------------------------------------------------------

  // The panel takes its width from the graph (never covers it): the graph is
  // resized and fitted again, around the element shown when the graph is big.
  function openPanel(...content) {
    clear(panel).append(h("div", {},
      h("button", { type: "button", class: "close", "aria-label": "Close details (Escape)", onclick: closePanel }, "×"),
      ...content));
    const wasHidden = panel.hidden;
    panel.hidden = false;
    if (wasHidden) refit(true);
  }

  function closePanel() {
    if (panel.hidden) return;
    panel.hidden = true;
    refit(false);
  }

  function refit(open) {
    document.body.classList.toggle("panel-open", open);
    if (!cy) return;
    cy.resize();
    if (cy.edges().length <= SMALL_MAX_EDGES) cy.fit(undefined, 30);
    else if (focused && focused.inside()) cy.center(focused);
  }

  function auditList(queries) {
    const box = h("div", { class: "audits" }, h("p", { class: "muted" }, "Loading audits…"));
    Promise.all(queries.map((q) => api("GET", "/audits", { query: { ...q, limit: 10 } })))
      .then((pages) => {
        const items = pages.flatMap((p) => p.items)
          .filter((a, i, all) => all.findIndex((b) => b.id === a.id) === i)
          .sort((a, b) => (a.time < b.time ? 1 : -1)).slice(0, 10);
        clear(box).append(items.length
          ? h("ul", { class: "audit-list" }, items.map((a) => (a.type === "overload"
            ? h("li", { class: "overload" },
              h("span", { class: "badge overload" }, "overload"),
              ` ${fmtTime(a.time)} · ${a.count.toLocaleString("en-US")} SYNs dropped on ${a.dstHostname}`,
              h("div", { class: "muted small" }, a.msg))
            : h("li", {},
              auditBadge(a),
              ` ${fmtTime(a.time)} · port ${a.port} · ${a.ruleName || "no rule"} ×${a.count}`,
              h("div", { class: "muted small" }, a.msg)))))
          : h("p", { class: "muted" }, "No audits."));
      })
      .catch((err) => { clear(box).append(h("p", { class: "error" }, err.message)); });
    return box;
  }

  function nameOf(id) {
    const n = cy.getElementById(id);
    return n.nonempty() ? (n.data("name") || n.id()) : id;
  }

  function ruleOf(id) {
    return radar.data && radar.data.rules ? radar.data.rules[String(id)] : undefined;
  }

  // A link from an audit (#/radar?src=ID&dst=ID&port=N): open that edge, or the source node.
  function focusLink(q) {
    const src = q.get("src");
    if (!src) return;
    const dst = q.get("dst");
    const port = Number(q.get("port"));
    // An edge's ports are strings: "5432", "8000-8080" or "*".
    const covers = (p) => {
      if (String(p.port) === "*") return true;
      const [a, b = a] = String(p.port).split("-").map(Number);
      return port >= a && port <= b;
    };
    const edges = cy.edges().filter((e) => e.data("source") === src && (!dst || e.data("target") === dst)
      && (!port || (e.data("ports") || []).some(covers)));
    if (edges.length === 1) { cy.elements().unselect(); edges.select(); showEdge(edges.data()); return; }
    const node = cy.getElementById(src);
    if (node.nonempty()) { cy.elements().unselect(); node.select(); showNode(node); }
  }

  function showEdge(e) {
    const kind = state.view;
    const rules = e.rules.map(ruleOf).filter(Boolean);
    const ruleLink = (id, name) => (id ? h("a", { href: `#/rules/${kind}?edit=${id}`, title: name || ruleOf(id)?.name || "" }, `#${id}`) : "no rule");
    const rows = e.ports.map((p) => h("tr", {},
      h("td", {}, p.port),
      h("td", {}, p.seen
        // enforcement off: the connections went through; the rule's verdict is what would happen
        ? [h("span", { class: "badge observed" }, "seen"), " ", h("span", { class: "badge would",
          title: `${p.ruleId ? `rule #${p.ruleId}` : "the default effect"}, not enforced: enforcement is off` },
          `would ${WOULD_WORD[p.verdict]}${p.ruleId ? ` #${p.ruleId}` : ""}`)]
        : h("span", { class: `badge ${p.verdict}` }, p.verdict),
        // what the policy would do (a staged rule or default, or enforcement off): not enforced
        p.would ? [" ", h("span", { class: "badge would", title: p.wouldRuleId ? `rule #${p.wouldRuleId}, not enforced` : "the default effect, not enforced" },
          `would ${WOULD_WORD[p.would]}${p.wouldRuleId ? ` #${p.wouldRuleId}` : ""}`)] : null),
      h("td", {}, !p.observed ? "rule" : !p.unenforced ? "seen"
        : p.unenforced >= p.count ? "seen, not enforced" : `seen (${p.unenforced} not enforced)`),
      h("td", { class: "num" }, p.observed ? p.count : "–"),
      h("td", {}, ruleLink(p.ruleId)),
      h("td", { class: "small" }, p.observed ? `${fmtTime(p.firstSeen)} – ${fmtTime(p.lastSeen)}` : "")));
    // What the flows recorded, under the policy of their time.
    const history = e.ports.flatMap((p) => (p.history || []).map((x) => ({ port: p.port, ...x })))
      .sort((a, b) => (b.lastSeen || 0) - (a.lastSeen || 0));
    const historyRows = history.map((x) => h("tr", {},
      h("td", {}, x.port),
      h("td", {}, h("span", { class: `badge ${x.verdict}` }, x.verdict),
        // the "would" verdict those connections recorded, and whether they were enforced
        x.would ? [" ", h("span", { class: "badge would", title: x.wouldRuleId ? `rule #${x.wouldRuleId}, not enforced` : "the default effect, not enforced" },
          `would ${WOULD_WORD[x.would]}${x.wouldRuleId ? ` #${x.wouldRuleId}` : ""}`)] : null,
        x.unenforced ? h("span", { class: "muted small" }, x.unenforced >= x.count ? " not enforced" : ` (${x.unenforced} not enforced)`) : null),
      h("td", { class: "num" }, x.count),
      h("td", {}, ruleLink(x.ruleId, x.ruleName)),
      h("td", { class: "small" }, `${fmtTime(x.firstSeen)} – ${fmtTime(x.lastSeen)}`)));
    const src = cy.getElementById(e.source);
    const dst = cy.getElementById(e.target);
    // An edge is connections: its audits are the container and host ones (overload
    // audits are about a source, not a connection; the nodes show them).
    const auditQueries = [];
    const connections = (q) => [{ ...q, type: "container" }, { ...q, type: "host" }];
    if (kind === "container" && src.data("kind") === "image") {
      const q = { src_image: `${imageName(src.data("name"))}*` };
      if (dst.data("kind") === "image") q.dst_image = `${imageName(dst.data("name"))}*`;
      auditQueries.push(...connections(q));
    } else if (src.data("kind") === "host") {
      auditQueries.push(...connections({ host: src.data("name") }));
    }
    openPanel(
      h("h2", {}, `${nameOf(e.source)} → ${nameOf(e.target)}`),
      h("p", { id: "edge-summary" },
        // enforcement off and the worst port went through: what happened, then what would
        e.ports.some((p) => p.seen && p.verdict === e.verdict)
          ? [h("span", { class: "badge observed" }, "seen"), " ", h("span", { class: "badge would" }, `would ${WOULD_WORD[e.verdict]}`)]
          : h("span", { class: `badge ${e.verdict}` }, e.verdict), " ",
        e.observed ? "Connections seen (solid line)." : "A rule, no connection seen (dotted line).",
        e.ports.some((p) => p.seen) ? h("span", { id: "edge-not-enforced" },
          ` Enforcement is off: connections the policy would ${e.ports.some((p) => p.seen && p.verdict === "blocked") ? "prevent" : "audit"} went through, not enforced. Turn it on in Settings.`) : null,
        e.merged ? ` ${e.members} edges of a collapsed group.` : ""),
      h("h3", {}, "Now (current policy)"),
      h("table", { class: "ports", id: "ports-now" },
        h("thead", {}, h("tr", {}, ["Port", "Verdict", "", "Count", "Rule", "First – last seen"].map((t) => h("th", {}, t)))),
        h("tbody", {}, rows)),
      history.length ? h("details", { id: "port-history", open: history.some((x) => !e.ports.some((p) => p.port === x.port && p.verdict === x.verdict)) },
        h("summary", {}, `History: ${history.length} recorded verdict${history.length === 1 ? "" : "s"}`),
        h("p", { class: "muted small" }, "What the connections got when they were made, under the policy of that time."),
        h("table", { class: "ports" },
          h("thead", {}, h("tr", {}, ["Port", "Verdict then", "Count", "Rule then", "First – last seen"].map((t) => h("th", {}, t)))),
          h("tbody", {}, historyRows))) : null,
      h("p", {}, `Connections: ${e.count} · first seen ${fmtTime(e.firstSeen)} · last seen ${fmtTime(e.lastSeen)}`),
      rules.length ? h("div", {}, h("h3", {}, "Rules"), h("ul", {}, rules.map((r) => h("li", {},
        h("a", { href: `#/rules/${r.kind}?edit=${r.id}`, class: "rule-link" }, `#${r.id} ${r.name}`),
        ` – ${r.effect} ${r.src} → ${r.dst} ports ${r.ports.join(",")} `,
        h("a", { href: `#/rules/${r.kind}?edit=${r.id}` }, "edit"))))) : null,
      e.hole && !e.merged ? h("button", { type: "button", id: "create-rule", onclick: () => ruleForm(e) }, "Create rule for this connection")
        : e.observed && !e.merged ? h("p", { class: "muted small", id: "covered" },
          e.ports.some((p) => p.observed && !p.ruleId && p.wouldRuleId)
            ? "Every port seen here is covered by a rule now, some only by a staged rule (not enforced until it is promoted)."
            : "Every port seen here is covered by a rule now.") : null,
      h("h3", {}, "Recent audits"),
      auditQueries.length ? auditList(auditQueries) : h("p", { class: "muted" }, "No audits for external sources."));
  }

  function showNode(node) {
    const d = node.data();
    if (d.kind === "group" || d.kind === "collapsed") {
      openPanel(h("h2", {}, `${d.groupBy}: ${d.name}`),
        h("p", {}, `${d.children} ${state.view === "container" ? "images" : "hosts"} in this group.`),
        h("button", { type: "button", id: "toggle-group", onclick: () => toggleGroup(d.id) },
          d.kind === "collapsed" ? "Expand group" : "Collapse group"));
      return;
    }
    const vulns = d.vulnerabilities;
    const sevRows = vulns ? ["critical", "high", "medium", "low", "unknown"].map((s) => h("tr", {},
      h("td", {}, h("span", { class: "swatch", style: `background:${SEVERITY_COLORS[s]}` }), s),
      h("td", { class: "num" }, vulns[s] || 0))) : null;
    const runtime = [];
    // A pod is one workload: pods are counted and listed by name (their container
    // names repeat in every replica), with the images of a pod of several
    // containers; the containers that run in no pod by name.
    const more = (listed, all) => (all > listed ? [h("li", { class: "muted" }, `and ${all - listed} more`)] : []);
    if (d.kind === "image") {
      const pods = d.pods || [];
      const names = d.containerNames || [];
      const spread = new Set(pods.map((p) => p.namespace)).size > 1;
      const podName = (p) => (spread ? `${p.namespace}/${p.name}` : p.name);
      if (d.podCount) {
        runtime.push(h("li", { id: "pods" }, `Pods: ${d.podCount}`, h("ul", {},
          pods.map((p) => h("li", {}, p.images.length > 1 ? `${podName(p)} (${p.images.join(" + ")})` : podName(p))),
          more(pods.length, d.podCount))));
      }
      if (d.containers || !d.podCount) {
        runtime.push(h("li", { id: "containers" }, `Containers: ${d.containers || 0}`,
          names.length ? h("ul", {}, names.map((n) => h("li", {}, n)), more(names.length, d.containers)) : ""));
      }
      runtime.push(h("li", {}, `Namespaces: ${(d.namespaces || []).filter(Boolean).join(", ") || "–"}`),
        h("li", {}, `Hosts: ${(d.hosts || []).join(", ") || "–"}`));
    } else if (d.kind === "host") {
      runtime.push(h("li", {}, `Addresses: ${(d.addresses || []).join(", ") || "–"}`));
      if (d.podCount) runtime.push(h("li", {}, `Pods: ${d.podCount}`));
      if (d.containers || !d.podCount) runtime.push(h("li", {}, `Containers: ${d.containers || 0}`));
    } else if (d.detail) {
      runtime.push(h("li", {}, d.kind === "dns" ? `Domains: ${d.detail}` : `CIDRs: ${d.detail}`));
    } else if (d.kind === "internet") {
      const seen = d.seen || [];
      runtime.push(h("li", { id: "seen" }, `Addresses and names seen: ${d.seenCount || 0}`,
        seen.length ? h("ul", {}, seen.map((a) => h("li", {}, h("code", {}, a))), more(seen.length, d.seenCount || 0)) : ""));
    }
    const labels = Object.entries(d.labels || {});
    if (labels.length) runtime.push(h("li", {}, "Labels: ", labels.map(([k, v]) => h("code", {}, `${k}=${v}`)), ""));
    // Each container or pod of an image: where it runs and its addresses.
    const drill = (d.workloads || []).length ? h("details", { id: "workloads" },
      h("summary", {}, `Each workload (${d.workloads.length}${d.workloads.length < (d.podCount || 0) + (d.containers || 0) ? ` of ${(d.podCount || 0) + (d.containers || 0)}` : ""})`),
      h("table", {}, h("thead", {}, h("tr", {}, ["Container", "Pod", "Namespace", "Host", "Addresses", "ID"].map((t) => h("th", {}, t)))),
        h("tbody", {}, d.workloads.map((w) => h("tr", {},
          h("td", {}, w.name || "–"), h("td", {}, w.pod || "–"), h("td", {}, w.namespace || "–"),
          h("td", {}, w.host || "–"), h("td", {}, w.addresses.join(", ")),
          h("td", {}, w.id ? h("code", {}, w.id) : "–")))))) : null;
    const audits = d.kind === "image"
      ? auditList([{ src_image: `${imageName(d.name)}*` }, { dst_image: `${imageName(d.name)}*` }])
      : d.kind === "host" ? auditList([{ host: d.name }]) : h("p", { class: "muted" }, "–");
    const scanned = d.kind === "image" || d.kind === "host";
    openPanel(
      h("h2", {}, d.name),
      h("p", { class: "muted" }, d.kind === "image" ? "Image" : d.kind),
      scanned ? h("h3", {}, "Vulnerabilities") : null,
      !scanned ? null : vulns ? h("table", { id: "vulns" }, h("tbody", {}, sevRows),
        h("caption", {}, "Worst: ", h("span", { class: `badge sev-${d.severity}` }, d.severity)))
        : h("p", { class: "muted", id: "vulns" }, "No vulnerability report yet."),
      vulns ? findings(d) : null,
      scanned ? trivyUpload(d) : null,
      scanned ? h("h3", {}, "Compliance") : null,
      !scanned ? null : d.compliance ? h("p", { id: "compliance" }, `${d.compliance.passed} passed · ${d.compliance.failed} failed`)
        : h("p", { class: "muted", id: "compliance" }, "No compliance report."),
      h("h3", {}, "Runtime"), h("ul", { id: "runtime" }, runtime), drill,
      h("h3", {}, "Recent audits"), audits);
  }

  // The most severe findings of a node's report (the Console keeps the top 20).
  function findings(d) {
    const box = h("div", { id: "cves" }, h("p", { class: "muted small" }, "Loading the findings…"));
    const path = `/overlays/${d.kind}/${d.name.split("/").map(encodeURIComponent).join("/")}`;
    const show = (o) => {
      clear(box).append(o.top.length ? h("table", {},
        h("caption", { class: "small" }, `The ${o.top.length} most severe of ${Object.values(o.vulnerabilities).reduce((a, b) => a + b, 0)} (report ${o.source || o.name}, ${fmtTime(o.updated)})`),
        h("thead", {}, h("tr", {}, ["CVE", "Severity", "Package", "Installed", "Fixed"].map((t) => h("th", {}, t)))),
        h("tbody", {}, o.top.map((f) => h("tr", {}, h("td", {}, f.id),
          h("td", {}, h("span", { class: `badge sev-${f.severity}` }, f.severity)),
          h("td", {}, f.package || "–"), h("td", {}, f.installed || "–"), h("td", {}, f.fixed || "–")))))
        : h("p", { class: "muted small" }, "The report lists no vulnerabilities."));
    };
    // The graph matches an overlay by the image with or without its tag.
    api("GET", path).catch((err) => {
      if (d.kind === "image" && err.status === 404 && imageName(d.name) !== d.name) {
        return api("GET", `/overlays/image/${imageName(d.name).split("/").map(encodeURIComponent).join("/")}`);
      }
      throw err;
    }).then(show).catch((err) => { clear(box).append(h("p", { class: "error" }, err.message)); });
    return box;
  }

  // Upload a Trivy JSON report for this image or host. A report names what it
  // scanned (ArtifactName): one for another image is stored only when asked.
  function trivyUpload(d) {
    const message = h("p", { id: "trivy-message", role: "status" });
    const file = h("input", { type: "file", name: "trivy", id: "trivy-file", accept: ".json,application/json",
      "aria-label": `Trivy JSON report for ${d.name}` });
    const form = h("form", { id: "trivy-form", class: "upload" },
      h("label", { for: "trivy-file", class: "small" }, `Upload a Trivy report (trivy ${d.kind === "host" ? "rootfs" : "image"} -f json) for this ${d.kind}`),
      file, h("button", { type: "submit", class: "secondary" }, "Upload"), message);
    const store = async (report) => {
      const info = await api("POST", `/overlays/${d.kind}/trivy`, { query: { name: d.name }, body: report });
      await refresh(true);
      const now = cy.getElementById(d.id);
      if (now.nonempty()) showNode(now);
      const shown = document.getElementById("trivy-message");
      if (shown) {
        shown.className = "ok";
        shown.textContent = `Report stored for ${info.name}: ${Object.entries(info.vulnerabilities).filter(([, n]) => n).map(([s, n]) => `${n} ${s}`).join(", ") || "no vulnerabilities"}.`;
      }
    };
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      message.className = "";
      message.textContent = "";
      const chosen = file.files[0];
      if (!chosen) { message.className = "error"; message.textContent = "Choose a Trivy JSON file first."; return; }
      let report;
      try {
        report = JSON.parse(await chosen.text());
      } catch (err) {
        message.className = "error";
        message.textContent = `${chosen.name} is not JSON: ${err.message}`;
        return;
      }
      const artifact = report && typeof report === "object" ? String(report.ArtifactName || "") : "";
      const same = (a, b) => imageName(normaliseImage(a)) === imageName(normaliseImage(b));
      const matches = d.kind === "host" ? artifact === d.name || !artifact : !artifact || same(artifact, d.name);
      try {
        if (matches) {
          await store(report);
          return;
        }
        message.className = "error";
        message.append(`This report scanned ${artifact}, not ${d.name}. `,
          h("button", { type: "button", id: "trivy-confirm", class: "secondary", onclick: async () => {
            try { await store(report); } catch (err) { message.className = "error"; message.textContent = err.message; }
          } }, `Store it for ${d.name}`));
      } catch (err) {
        message.className = "error";
        message.textContent = err instanceof ApiError && err.errors.length
          ? err.errors.map((x) => (x.path ? `${x.path}: ${x.message}` : x.message)).join("; ") : err.message;
      }
    });
    return form;
  }

  // --- from hole to rule -------------------------------------------------------

  // The object a rule end should use: an existing object that selects exactly
  // this node (every container of the image, no other node) is reused; else a
  // new one, named as readably as is free ("cache", then "shop-cache").
  // Broader objects that also select the node are offered in the list, never
  // chosen for the user: a rule for one hole must not open it for others.
  function proposal(node, objects) {
    const d = node.data();
    const slug = (s) => s.replace(/[^A-Za-z0-9._-]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 150);
    const existing = (name, why) => ({ name, existing: true, text: `${name} (existing${why ? `, ${why}` : ""})` });
    const free = (names) => names.find((n) => n && !objects.some((o) => o.name === n));
    const exact = (d.objects || []).find((o) => o.nodes === 1);
    let wanted;
    if (d.kind === "image") {
      if (exact) return existing(exact.name, "selects this image");
      const name = imageName(d.name);
      const found = objects.find((o) => o.kind === "container" && o.selector.images?.length === 1
        && o.selector.images[0] === name && Object.keys(o.selector).every((k) => k === "images" || !o.selector[k]?.length));
      if (found) return existing(found.name, "selects this image");
      const short = name.slice(name.lastIndexOf("/") + 1);
      wanted = { name: free([slug(short), slug(name), `image-${slug(name)}`]), kind: "container",
        selector: { images: [name] }, description: "created from Radar" };
    } else if (d.kind === "host") {
      if (exact) return existing(exact.name, "selects this host");
      const found = objects.find((o) => o.kind === "host" && o.selector.hosts?.length === 1 && o.selector.hosts[0] === d.name);
      if (found) return existing(found.name, "selects this host");
      wanted = { name: free([slug(d.name), `host-${slug(d.name)}`]), kind: "host", selector: { hosts: [d.name] }, description: "created from Radar" };
    } else if (d.kind === "subnet" || d.kind === "dns") {
      return existing(d.name);
    } else {
      const found = objects.find((o) => o.name === "internet");
      if (found) return existing(found.name);
      wanted = { name: "internet", kind: "subnet", cidrs: ["0.0.0.0/0", "::/0"], description: "created from Radar" };
    }
    if (!wanted.name) wanted.name = `${wanted.kind}-${Date.now()}`;
    const exists = objects.some((o) => o.name === wanted.name);
    return { name: wanted.name, existing: exists, create: exists ? null : wanted,
      text: exists ? `${wanted.name} (existing)` : `${wanted.name} (new ${wanted.kind} object)` };
  }

  async function ruleForm(e) {
    const objects = await api("GET", "/objects");
    const kind = state.view;
    const src = proposal(cy.getElementById(e.source), objects);
    const dst = proposal(cy.getElementById(e.target), objects);
    const srcKinds = kind === "container" ? ["container"] : ["host"];
    const dstKinds = kind === "container" ? ["container", "subnet", "dns"] : ["host", "subnet"];
    const selecting = (node) => new Map((node.data("objects") || []).map((o) => [o.name, o.nodes]));
    const options = (p, kinds, node) => {
      const near = selecting(node);
      const rest = objects.filter((o) => kinds.includes(o.kind) && o.name !== p.name)
        .sort((a, b) => (near.has(a.name) ? near.get(a.name) : 1e9) - (near.has(b.name) ? near.get(b.name) : 1e9));
      return [h("option", { value: p.name, selected: true }, p.text),
        ...rest.map((o) => h("option", { value: o.name }, near.has(o.name)
          ? `${o.name} (${o.kind}, selects this and ${near.get(o.name) - 1} more)` : `${o.name} (${o.kind})`))];
    };
    // a port a rule covers, in force or staged, is no hole
    const holePorts = [...new Set(e.ports.filter((p) => p.observed && !p.ruleId && !p.wouldRuleId).map((p) => p.port))];
    const message = h("p", { class: "error", role: "alert", id: "rule-form-error" });
    const form = h("form", { id: "rule-form", class: "stack" },
      h("h3", {}, "Create a rule"),
      h("label", {}, "Name", h("input", { name: "name", value: `${src.name}-to-${dst.name}-${holePorts.join("-")}`.slice(0, 200), required: true })),
      h("label", {}, "Source", h("select", { name: "src" }, options(src, srcKinds, cy.getElementById(e.source)))),
      h("label", {}, "Destination", h("select", { name: "dst" }, options(dst, dstKinds, cy.getElementById(e.target)))),
      h("label", {}, "Ports", h("input", { name: "ports", value: holePorts.join(","), placeholder: "80, 8000-8080 or *" })),
      h("fieldset", { class: "effects" }, h("legend", {}, "Effect (saves the rule)"),
        ["allow", "alert", "prevent"].map((effect) => h("button", { type: "submit", name: "effect", value: effect, class: `effect ${effect}` }, effect))),
      message);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const data = new FormData(form);
      const effect = ev.submitter ? ev.submitter.value : "allow";
      try {
        for (const p of [src, dst]) {
          if (p.create && data.get(p === src ? "src" : "dst") === p.name && !p.created) {
            await api("POST", "/objects", { body: p.create });
            p.created = true;
          }
        }
        const ports = String(data.get("ports")).split(",").map((s) => s.trim()).filter(Boolean);
        const rule = await api("POST", `/rules/${kind}`, { body: {
          name: data.get("name"), src: data.get("src"), dst: data.get("dst"),
          ports: ports.map((p) => (/^\d+$/.test(p) ? Number(p) : p)), effect,
          notes: "created from Radar" } });
        await refresh(true);
        // Show the edge as Radar now draws it, with the new rule on it.
        const now = cy.getElementById(e.id);
        if (now.nonempty()) showEdge(now.data());
        panel.firstChild.append(h("p", { class: "ok", id: "rule-created" },
          `Rule #${rule.id} ${rule.name} saved (${rule.effect}); it applies to new connections. `,
          h("a", { href: `#/rules/${kind}?edit=${rule.id}` }, "Edit it")));
      } catch (err) {
        if (err instanceof ApiError) showFieldErrors(form, err.errors, message);
        if (!message.textContent) message.textContent = err.message;
      }
    });
    panel.append(form);
    form.scrollIntoView({ block: "nearest" });
  }

  const stop = () => {
    stopped = true;
    clearTimeout(timer);
    document.removeEventListener("keydown", onEscape);
    document.body.classList.remove("panel-open");
    early.destroy();
    radar.cy = null;
    radar.ready = false;
  };
  await refresh(true);
  // The session ended on the first answer (401): the login is shown, no polling.
  if (!session.token) { stop(); return null; }
  schedule();
  return stop;
}

function debounce(fn, ms) {
  let t = null;
  return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
}
