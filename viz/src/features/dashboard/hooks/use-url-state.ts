import { useCallback, useEffect, useState } from 'react';
import { buildSearch, parseUrlState, type UrlState } from '../utils/url-state';

interface Snapshot {
  state: UrlState;
  /** When this state was entered: relative times (`now-6h`) resolve against it. */
  at: number;
}

const read = (): Snapshot => ({ state: parseUrlState(window.location.search), at: Date.now() });

/**
 * The URL is the single source of truth for sensor, range and live mode.
 * `navigate` pushes a history entry (Back undoes a zoom); `replace` does not.
 */
export function useUrlState() {
  const [snap, setSnap] = useState<Snapshot>(read);

  useEffect(() => {
    const onPop = () => setSnap(read());
    window.addEventListener('popstate', onPop);
    return () => window.removeEventListener('popstate', onPop);
  }, []);

  const navigate = useCallback((patch: Partial<UrlState>, opts: { replace?: boolean } = {}) => {
    const next = { ...parseUrlState(window.location.search), ...patch };
    const url = `${window.location.pathname}${buildSearch(next)}${window.location.hash}`;
    if (opts.replace) window.history.replaceState(null, '', url);
    else window.history.pushState(null, '', url);
    setSnap({ state: next, at: Date.now() });
  }, []);

  /** Re-resolves relative times against the current time. */
  const refresh = useCallback(() => setSnap((s) => ({ ...s, at: Date.now() })), []);

  return { ...snap, navigate, refresh };
}
