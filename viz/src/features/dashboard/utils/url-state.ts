/**
 * The dashboard's state lives in the URL, so every view is a link:
 * `?sensor=<id>[&sensor=<id>...]&from=<ms|now-6h>&to=<ms|now>[&live=1]`.
 */

export interface UrlState {
  /** The first sensor: the one the picker shows, the chart's main line. */
  sensor: string | null;
  /** Sensors drawn beside it (`sensor` repeated in the URL), in order. */
  more?: string[];
  from: string | null;
  to: string | null;
  live: boolean;
}

export function parseUrlState(search: string): UrlState {
  const p = new URLSearchParams(search);
  const first = p.get('sensor');
  const more = p.getAll('sensor').slice(1).filter((id, i, all) => id !== '' && id !== first && all.indexOf(id) === i);
  const nonEmpty = (v: string | null) => (v === null || v.trim() === '' ? null : v.trim());
  return {
    // Sensor ids are arbitrary UTF-8; keep them exactly (no trimming).
    sensor: first || null,
    ...(more.length > 0 ? { more } : {}),
    from: nonEmpty(p.get('from')),
    to: nonEmpty(p.get('to')),
    live: p.get('live') === '1',
  };
}

/** Builds `?sensor=..&from=..&to=..` with every value percent-encoded (spaces as %20). */
export function buildSearch(state: UrlState): string {
  const parts: string[] = [];
  const add = (k: string, v: string) => parts.push(`${k}=${encodeURIComponent(v)}`);
  if (state.sensor !== null) add('sensor', state.sensor);
  if (state.sensor !== null) for (const id of state.more ?? []) add('sensor', id);
  if (state.from !== null) add('from', state.from);
  if (state.to !== null) add('to', state.to);
  if (state.live) parts.push('live=1');
  return parts.length ? `?${parts.join('&')}` : '';
}
