/**
 * Time range expressions, as in Grafana's time picker.
 *
 * A time is written either as epoch milliseconds (`1767225600000`), as a relative
 * expression (`now`, `now-6h`, `now-1d-12h`, `now+5m`), or as a local date-time
 * (`2026-01-01 01:00`, `2026-01-01 01:00:00.250`, `2026-01-01`; an ISO string with
 * `Z` or an offset is taken as written). Local means the browser's time zone.
 */

const UNIT_MS = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 } as const;
type Unit = keyof typeof UNIT_MS;

const RELATIVE = /^now((?:\s*[+-]\s*\d+\s*[smhdw])*)$/;
const OFFSET = /([+-])\s*(\d+)\s*([smhdw])/g;
const LOCAL_DATE_TIME = /^(\d{4})-(\d{2})-(\d{2})(?:[ T](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,3}))?)?)?$/;

/** True when `raw` is relative to the current time (`now`, `now-6h`). */
export function isRelative(raw: string): boolean {
  return RELATIVE.test(raw.trim());
}

/** Parses one time expression to epoch ms, or `null` when it is not one. */
export function parseTime(raw: string, now: number): number | null {
  const s = raw.trim();
  if (s === '') return null;
  if (/^-?\d+$/.test(s)) {
    const n = Number(s);
    return Number.isSafeInteger(n) ? n : null;
  }
  const rel = RELATIVE.exec(s);
  if (rel) {
    let t = now;
    for (const m of (rel[1] ?? '').matchAll(OFFSET)) {
      const amount = Number(m[2]) * UNIT_MS[m[3] as Unit];
      t += m[1] === '-' ? -amount : amount;
    }
    return t;
  }
  const local = LOCAL_DATE_TIME.exec(s);
  if (local) {
    const [y, mo, d, h, mi, sec] = local.slice(1, 7).map((p) => (p === undefined ? 0 : Number(p)));
    const ms = local[7] === undefined ? 0 : Number(local[7].padEnd(3, '0'));
    const date = new Date(y!, mo! - 1, d!, h!, mi!, sec!, ms);
    // Reject impossible dates such as 2026-02-31, which Date would roll over.
    if (date.getFullYear() !== y || date.getMonth() !== mo! - 1 || date.getDate() !== d) return null;
    return date.getTime();
  }
  if (/^\d{4}-\d{2}-\d{2}T.*(Z|[+-]\d{2}:?\d{2})$/.test(s)) {
    const t = Date.parse(s);
    return Number.isNaN(t) ? null : t;
  }
  return null;
}

export interface RawRange {
  from: string;
  to: string;
}

export interface AbsoluteRange {
  start: number;
  end: number;
}

export type ResolvedRange = { ok: true; range: AbsoluteRange } | { ok: false; message: string };

/** Resolves a raw range against `now`; the range is half-open, [start, end). */
export function resolveRange(raw: RawRange, now: number): ResolvedRange {
  const start = parseTime(raw.from, now);
  if (start === null) return { ok: false, message: `"${raw.from}" is not a time. Use e.g. now-6h, 2026-01-01 00:00 or epoch ms.` };
  const end = parseTime(raw.to, now);
  if (end === null) return { ok: false, message: `"${raw.to}" is not a time. Use e.g. now, 2026-01-02 00:00 or epoch ms.` };
  if (end <= start) return { ok: false, message: 'The start of the range must be before its end.' };
  return { ok: true, range: { start, end } };
}

export interface QuickRange {
  from: string;
  to: string;
  label: string;
}

export const QUICK_RANGES: readonly QuickRange[] = [
  { from: 'now-15m', to: 'now', label: 'Last 15 minutes' },
  { from: 'now-1h', to: 'now', label: 'Last 1 hour' },
  { from: 'now-6h', to: 'now', label: 'Last 6 hours' },
  { from: 'now-24h', to: 'now', label: 'Last 24 hours' },
  { from: 'now-7d', to: 'now', label: 'Last 7 days' },
  { from: 'now-30d', to: 'now', label: 'Last 30 days' },
];

const pad = (n: number, w = 2) => String(n).padStart(w, '0');

/** `2026-01-01 01:00:00` in the browser's zone; milliseconds only when not zero. */
export function formatTime(ms: number): string {
  const d = new Date(ms);
  const base = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return d.getMilliseconds() === 0 ? base : `${base}.${pad(d.getMilliseconds(), 3)}`;
}

/** How a raw time reads in an input: relative expressions as written, instants as local time. */
export function formatRawTime(raw: string): string {
  return /^-?\d+$/.test(raw.trim()) ? formatTime(Number(raw)) : raw;
}

/** Human label of a raw range: a quick range's name, else `from → to`. */
export function describeRange(raw: RawRange): string {
  const quick = QUICK_RANGES.find((q) => q.from === raw.from && q.to === raw.to);
  if (quick) return quick.label;
  return `${formatRawTime(raw.from)} → ${formatRawTime(raw.to)}`;
}

/** `Europe/Berlin (UTC+01:00)`: the zone all times on screen are shown in. */
export function zoneLabel(at: number = Date.now()): string {
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || 'local time';
  const off = -new Date(at).getTimezoneOffset();
  const sign = off >= 0 ? '+' : '-';
  const abs = Math.abs(off);
  return `${zone} (UTC${sign}${pad(Math.floor(abs / 60))}:${pad(abs % 60)})`;
}

/** Twice the span around the same centre (Grafana's "zoom out"), as absolute ms. */
export function zoomOut({ start, end }: AbsoluteRange): AbsoluteRange {
  const span = end - start;
  const centre = start + span / 2;
  return { start: Math.floor(centre - span), end: Math.ceil(centre + span) };
}

/** Length of a raw range in ms, used to keep a window's size when going live. */
export function spanOf(raw: RawRange, now: number): number | null {
  const r = resolveRange(raw, now);
  return r.ok ? r.range.end - r.range.start : null;
}

/** Turns a span into a relative `from` (`now-6h`), in the largest whole unit. */
export function relativeFrom(spanMs: number): string {
  for (const unit of ['w', 'd', 'h', 'm', 's'] as const) {
    if (spanMs % UNIT_MS[unit] === 0 && spanMs >= UNIT_MS[unit]) return `now-${spanMs / UNIT_MS[unit]}${unit}`;
  }
  return `now-${Math.max(1, Math.round(spanMs / 1000))}s`;
}

/** Short human duration: `6 h`, `1.5 d`, `250 ms`. */
export function formatDuration(ms: number): string {
  const units: [number, string][] = [[86_400_000, 'd'], [3_600_000, 'h'], [60_000, 'min'], [1_000, 's']];
  for (const [size, name] of units) {
    if (ms >= size) return `${Number((ms / size).toFixed(ms / size >= 10 ? 0 : 1))} ${name}`;
  }
  return `${ms} ms`;
}

/**
 * A time-axis tick label in 24-hour local time, as precise as the tick spacing
 * needs; the date is added on the first tick and wherever the day changes.
 */
export function formatTick(ms: number, incrMs: number, prevMs: number | null): string {
  const d = new Date(ms);
  const date = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  if (incrMs >= 86_400_000) return date;
  let time = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  if (incrMs < 60_000) time += `:${pad(d.getSeconds())}`;
  if (incrMs < 1_000) time += `.${pad(d.getMilliseconds(), 3)}`;
  const p = prevMs === null ? null : new Date(prevMs);
  const newDay = p === null || p.getDate() !== d.getDate() || p.getMonth() !== d.getMonth() || p.getFullYear() !== d.getFullYear();
  return newDay ? `${time}\n${date}` : time;
}

/**
 * A drag-selected range with round ends: to whole minutes, seconds, … as fine as
 * about two pixels of the chart allow, so zoomed links read well.
 */
export function snapRange(start: number, end: number, msPerPixel: number): AbsoluteRange {
  const unit = [60_000, 1_000, 100, 10, 1].find((u) => u <= 2 * msPerPixel) ?? 1;
  const s = Math.floor(start / unit) * unit;
  const e = Math.ceil(end / unit) * unit;
  return { start: s, end: e > s ? e : s + unit };
}
