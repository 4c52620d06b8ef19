import type { Points } from './series';

/** A sensor drawn beside the main one. */
export interface ExtraSeries {
  sensorId: string;
  points: Points;
}

/** Where each extra series is drawn: on the main y scale, or on one of its own. */
export interface ExtraLayout {
  /** uPlot scale key: `y` (shared with the main line) or `y1`, `y2`, ... */
  scale: string;
  /** Whether this series brings its own axis (on the right). */
  ownAxis: boolean;
}

function extent(values: readonly (number | null)[]): [number, number] | null {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of values) {
    if (v === null || !Number.isFinite(v)) continue;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  return lo <= hi ? [lo, hi] : null;
}

/**
 * Separate y axes when ranges differ much: a series shares the main scale
 * when its range overlaps the main one and neither spans more than 5 times
 * the other; otherwise it gets a scale and an axis of its own.
 */
export function layoutExtras(main: readonly (number | null)[], extras: readonly ExtraSeries[]): ExtraLayout[] {
  const base = extent(main);
  let own = 0;
  return extras.map((e) => {
    const range = extent(e.points.values);
    const fits =
      base !== null &&
      range !== null &&
      range[0] <= base[1] &&
      range[1] >= base[0] &&
      (range[1] - range[0]) <= 5 * Math.max(base[1] - base[0], 1e-12) &&
      (base[1] - base[0]) <= 5 * Math.max(range[1] - range[0], 1e-12);
    if (fits || range === null) return { scale: 'y', ownAxis: false };
    own += 1;
    return { scale: `y${own}`, ownAxis: true };
  });
}

/**
 * Aligns the main series' columns and every extra series on one x column
 * (the union of their timestamps), null where a series has no point.
 */
export function alignColumns(
  main: readonly [number[], ...(number | null)[][]],
  extras: readonly ExtraSeries[],
): [number[], ...(number | null)[][]] {
  const xs = Array.from(new Set([...main[0], ...extras.flatMap((e) => e.points.timestamps)])).sort((a, b) => a - b);
  const index = new Map(xs.map((x, i) => [x, i]));
  const place = (ts: readonly number[], vs: readonly (number | null)[]) => {
    const out = new Array<number | null>(xs.length).fill(null);
    ts.forEach((t, i) => (out[index.get(t)!] = vs[i] ?? null));
    return out;
  };
  const columns: (number | null)[][] = main.slice(1).map((col) => place(main[0], col as (number | null)[]));
  for (const e of extras) columns.push(place(e.points.timestamps, e.points.values));
  return [xs, ...columns];
}
