// The page and its arguments from the URL hash: #/page/arg?key=value.
export function route() {
  const [path, queryString] = location.hash.replace(/^#\/?/, "").split("?");
  const [page, ...rest] = path.split("/");
  return { page: page || "radar", args: rest, query: new URLSearchParams(queryString || "") };
}
