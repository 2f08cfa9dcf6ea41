// Hash routing: `#/path?query` picks a page. Each page gets the outlet to
// draw in and an AbortSignal that fires when the user leaves it, which stops
// its timers, streams and calls.

/** `routes`: [[/^\/task\/([^/]+)$/, page], ...]; a page is
 *  `async (outlet, {params, query, signal}) => void`. */
export function startRouter(outlet, routes, fallback, onError) {
  let leave = null;
  async function show() {
    if (leave) leave.abort();
    leave = new AbortController();
    const { path, query } = currentLocation();
    const match = routes.map(([pattern, page]) => [path.match(pattern), page]).find(([found]) => found);
    if (!match) { location.replace(fallback); return; }
    const [found, page] = match;
    const params = found.slice(1).map(decodeURIComponent);
    const signal = leave.signal;
    window.dispatchEvent(new CustomEvent('apiary:route', { detail: { path } }));
    try {
      await page(outlet, { params, query, signal });
    } catch (error) {
      if (!signal.aborted && error.name !== 'AbortError') onError(error, outlet);
    }
  }
  window.addEventListener('hashchange', show);
  show();
}

/** The path and query of the current hash. */
export function currentLocation() {
  const hash = location.hash.replace(/^#/, '') || '/';
  const [path, search = ''] = hash.split('?');
  return { path, query: new URLSearchParams(search) };
}

/** Records filters in the address without redrawing the page, so a filtered
 *  view can be bookmarked, shared and reloaded. */
export function replaceQuery(path, query) {
  const text = query.toString();
  history.replaceState(null, '', `#${path}${text ? `?${text}` : ''}`);
}
