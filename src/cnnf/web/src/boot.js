// Loaded in the page's head, before the bundle: when the page opens on Radar
// signed in, Radar's first /radar request starts now, while the bundle is
// downloaded and compiled (the larger part of a first visit's wait), instead
// of after. radar.js takes the answer once, if it asks the same URL with the
// same token within a few seconds; main.js drops it after the first page shown.
import { apiRequest, session } from "./api.js";
import { applyLink, query } from "./radarquery.js";
import { route } from "./route.js";

const { page, query: link } = route();
if (session.token && page === "radar") {
  applyLink(link);
  const { url, init } = apiRequest("GET", "/radar", { query: query() });
  performance.mark("cnnf:radar-request");
  window.cnnfBoot = { url, token: session.token, at: performance.now(), answer: fetch(url, init).then((response) => { performance.mark("cnnf:radar-answer"); return { response }; }, (error) => ({ error })) };
}
