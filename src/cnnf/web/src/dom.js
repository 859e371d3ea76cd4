// A tiny DOM builder: h("div", {class: "x", onclick: f}, "text", child, [children]).
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "class") {
      el.className = value;
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (key === "value") {
      el.value = value;
    } else if (value === true) {
      el.setAttribute(key, "");
    } else {
      el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

// One time format everywhere: the browser's local time, ISO date order, seconds,
// and the zone it is in ("2026-11-30 12:48:05 CET"), from ISO strings or UNIX
// seconds (the radar graph's times).
const pad = (n) => String(n).padStart(2, "0");

// One formatter, made on first use: making one per call cost ~0.1 ms each,
// the first (ICU's time zone data) 15-30 ms here.
let zoneFormat = null;
export function zoneName(d = new Date()) {
  zoneFormat ||= new Intl.DateTimeFormat("en-US", { timeZoneName: "short" });
  const part = zoneFormat.formatToParts(d).find((p) => p.type === "timeZoneName");
  return part ? part.value : "";
}

export function fmtClock(d = new Date()) {
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())} ${zoneName(d)}`;
}

export function fmtTime(iso) {
  if (iso === undefined || iso === null || iso === "") return "–";
  const d = typeof iso === "number" ? new Date(iso * 1000) : new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${fmtClock(d)}`;
}

// Field-level errors: a path like "selector.images[0]" or "ports[0].start" is
// shown at the form field named by its last word that names one ("images",
// "ports"); the rest go to the fallback line.
export function fieldFor(form, path) {
  const words = String(path || "").replace(/\[\d+\]/g, "").split(".").filter(Boolean);
  for (let i = words.length - 1; i >= 0; i -= 1) {
    const input = form.querySelector(`[name="${CSS.escape(words[i])}"]`);
    if (input) return input;
  }
  return null;
}

export function showFieldErrors(form, errors, fallback) {
  form.querySelectorAll(".field-error").forEach((e) => e.remove());
  form.querySelectorAll(".invalid").forEach((e) => e.classList.remove("invalid"));
  const loose = [];
  const shown = new Map();
  for (const err of errors) {
    const input = fieldFor(form, err.path);
    if (!input) {
      loose.push(err.path ? `${err.path}: ${err.message}` : err.message);
      continue;
    }
    input.classList.add("invalid");
    let box = shown.get(input);
    if (!box) {
      box = h("div", { class: "field-error", role: "alert" });
      input.insertAdjacentElement("afterend", box);
      shown.set(input, box);
    }
    if (!box.textContent.includes(err.message)) {
      box.textContent += (box.textContent ? "; " : "") + err.message;
    }
  }
  if (fallback) fallback.textContent = loose.join("; ");
}

/** An audit's outcome as a badge: blocked, alert, or, when nothing was enforced
 * (a staged rule or default, or enforcement off), "would prevent" / "would alert". */
export function auditBadge(a) {
  if (a.would) {
    return h("span", { class: "badge would", title: "not enforced: a staged rule or default, or enforcement off" },
      a.effect === "prevent" ? "would prevent" : "would alert");
  }
  return h("span", { class: `badge ${a.blocked ? "blocked" : "alert"}` }, a.blocked ? "blocked" : "alert");
}
