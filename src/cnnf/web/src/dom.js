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

export function fmtTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

// Field-level errors: paths like "selector.images[0]" or "ports[1]" -> the
// form field named by the last word before any index ("images", "ports").
export function fieldOf(path) {
  const words = String(path || "").replace(/\[\d+\]/g, "").split(".").filter(Boolean);
  return words.length ? words[words.length - 1] : "";
}

export function showFieldErrors(form, errors, fallback) {
  form.querySelectorAll(".field-error").forEach((e) => e.remove());
  form.querySelectorAll(".invalid").forEach((e) => e.classList.remove("invalid"));
  const loose = [];
  for (const err of errors) {
    const name = fieldOf(err.path);
    const input = name && form.querySelector(`[name="${CSS.escape(name)}"]`);
    if (input) {
      input.classList.add("invalid");
      input.insertAdjacentElement("afterend", h("div", { class: "field-error", role: "alert" },
        err.message));
    } else {
      loose.push(err.path ? `${err.path}: ${err.message}` : err.message);
    }
  }
  if (fallback) fallback.textContent = loose.join("; ");
}
