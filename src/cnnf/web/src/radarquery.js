// Radar's filter state and the query of its /radar request: shared by the
// page and by the boot script, which starts the first request before the
// bundle has loaded (the page uses that answer only if its query is the same).
export const WINDOWS = [["15m", 900], ["1h", 3600], ["24h", 86400], ["7d", 604800], ["all", 0]];

export const state = {
  view: "container",
  group: "namespace",
  namespace: "",
  host: "",
  verdict: "",
  window: "all",
  q: "",
  paused: false,
  collapsed: new Set(),
  autoCollapsedFor: "",
};

// A link to Radar (#/radar?view=host&...) chooses the view.
export function applyLink(link) {
  if (link && ["container", "host"].includes(link.get("view"))) state.view = link.get("view");
}

export function query() {
  const seconds = Object.fromEntries(WINDOWS)[state.window];
  return {
    view: state.view,
    group: state.group,
    namespace: state.namespace.trim(),
    host: state.host.trim(),
    verdict: state.verdict,
    q: state.q.trim(),
    since: seconds ? new Date(Date.now() - seconds * 1000).toISOString() : "",
  };
}
