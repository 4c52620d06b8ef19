import type { LivePoints, SeriesResponse } from '../types';

/** Quality at or above this is good. */
export const QUALITY_GOOD = 192;
/** Quality below this is bad; between the two, uncertain. */
export const QUALITY_UNCERTAIN = 64;

export type QualityKind = 'good' | 'uncertain' | 'bad';

export function qualityKind(q: number): QualityKind {
  if (q >= QUALITY_GOOD) return 'good';
  if (q >= QUALITY_UNCERTAIN) return 'uncertain';
  return 'bad';
}

/** Columnar points, the shape uPlot draws. */
export interface Points {
  timestamps: number[];
  values: (number | null)[];
  qualities: number[];
}

/** A run of consecutive points of one non-good quality, drawn as a shaded stripe. */
export interface QualitySpan {
  kind: Exclude<QualityKind, 'good'>;
  start: number;
  end: number;
}

export interface ChartSeries {
  /** uPlot data: x (ms), value, uncertain-only values, bad-only values. */
  data: [number[], (number | null)[], (number | null)[], (number | null)[]];
  spans: QualitySpan[];
  uncertainCount: number;
  badCount: number;
}

function finiteOrNull(v: number | null | undefined): number | null {
  return typeof v === 'number' && Number.isFinite(v) ? v : null;
}

/** Shapes points for the chart: the line, markers for uncertain and bad points, stripes. */
export function toChartSeries(p: Points): ChartSeries {
  const n = p.timestamps.length;
  const values = new Array<number | null>(n);
  const uncertain = new Array<number | null>(n);
  const bad = new Array<number | null>(n);
  const spans: QualitySpan[] = [];
  let uncertainCount = 0;
  let badCount = 0;
  for (let i = 0; i < n; i++) {
    const v = finiteOrNull(p.values[i]);
    const kind = qualityKind(p.qualities[i] ?? QUALITY_GOOD);
    const t = p.timestamps[i]!;
    values[i] = v;
    uncertain[i] = kind === 'uncertain' ? v : null;
    bad[i] = kind === 'bad' ? v : null;
    if (kind === 'good') continue;
    if (kind === 'bad') badCount++;
    else uncertainCount++;
    const last = spans[spans.length - 1];
    const prevKind = i > 0 ? qualityKind(p.qualities[i - 1] ?? QUALITY_GOOD) : 'good';
    if (last && last.kind === kind && prevKind === kind) last.end = t;
    else spans.push({ kind, start: t, end: t });
  }
  return { data: [p.timestamps, values, uncertain, bad], spans, uncertainCount, badCount };
}

export function fromResponse(r: SeriesResponse): Points {
  return {
    timestamps: r.timestamps,
    values: r.values.map(finiteOrNull),
    qualities: r.qualities,
  };
}

/**
 * Appends live points to a window: keeps time order (points not after the last are
 * dropped as duplicates), then trims points before `windowStart`.
 * Returns how many points were added, so the raw count can follow.
 */
export function appendLive(current: Points, live: LivePoints, windowStart: number): { points: Points; added: number } {
  const last = current.timestamps.length ? current.timestamps[current.timestamps.length - 1]! : -Infinity;
  const timestamps = current.timestamps.slice();
  const values = current.values.slice();
  const qualities = current.qualities.slice();
  let added = 0;
  let prev = last;
  for (let i = 0; i < live.timestamps.length; i++) {
    const t = live.timestamps[i]!;
    if (!(t > prev)) continue;
    timestamps.push(t);
    values.push(finiteOrNull(live.values[i]));
    qualities.push(live.qualities[i] ?? QUALITY_GOOD);
    prev = t;
    added++;
  }
  let cut = 0;
  while (cut < timestamps.length && timestamps[cut]! < windowStart) cut++;
  return {
    points: { timestamps: timestamps.slice(cut), values: values.slice(cut), qualities: qualities.slice(cut) },
    added,
  };
}

/** Excel's sheet holds 1,048,576 rows; the CSV's header line takes one of them. */
export const EXCEL_MAX_ROWS = 1_048_576;

export function exceedsExcel(rawCount: number): boolean {
  return rawCount + 1 > EXCEL_MAX_ROWS;
}

/** The most points `/api/v1/series` returns. */
const SERIES_CAP = 10_000;

/**
 * Points asked of the server: four (first/min/max/last) per pixel column of the
 * plot, so the M4 buckets line up with the pixels. Past the server's cap (wide
 * HiDPI plots) a bucket spans a whole number of pixels, so they still line up.
 */
export function maxPointsFor(plotPixels: number): number {
  const px = Math.max(100, Math.round(plotPixels));
  const perBucket = Math.ceil((4 * px) / SERIES_CAP);
  return 4 * Math.floor(px / perBucket);
}
