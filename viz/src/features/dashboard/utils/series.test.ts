import { describe, expect, it } from 'vitest';
import { appendLive, exceedsExcel, fromResponse, qualityKind, toChartSeries } from './series';

describe('qualityKind', () => {
  it('splits good, uncertain and bad', () => {
    expect([255, 192, 191, 64, 63, 0].map(qualityKind)).toEqual(['good', 'good', 'uncertain', 'uncertain', 'bad', 'bad']);
  });
});

describe('toChartSeries', () => {
  it('marks uncertain and bad points and merges runs into stripes', () => {
    const s = toChartSeries({
      timestamps: [1, 2, 3, 4, 5, 6],
      values: [1, 2, null, 4, 5, 6],
      qualities: [192, 64, 64, 0, 0, 192],
    });
    expect(s.data[0]).toEqual([1, 2, 3, 4, 5, 6]);
    expect(s.data[1]).toEqual([1, 2, null, 4, 5, 6]);
    expect(s.data[2]).toEqual([null, 2, null, null, null, null]);
    expect(s.data[3]).toEqual([null, null, null, 4, 5, null]);
    expect(s.spans).toEqual([
      { kind: 'uncertain', start: 2, end: 3 },
      { kind: 'bad', start: 4, end: 5 },
    ]);
    expect([s.uncertainCount, s.badCount]).toEqual([2, 2]);
  });
  it('keeps separate stripes for runs split by good points', () => {
    const s = toChartSeries({ timestamps: [1, 2, 3], values: [0, 0, 0], qualities: [0, 192, 0] });
    expect(s.spans).toHaveLength(2);
  });
});

describe('fromResponse', () => {
  it('turns non-finite values into gaps', () => {
    const p = fromResponse({
      sensor_id: 's', start_ts: 0, end_ts: 10, count: 3, downsampled: false,
      timestamps: [1, 2, 3], values: [1, null, Number.NaN], qualities: [192, 192, 192],
    });
    expect(p.values).toEqual([1, null, null]);
  });
});

describe('appendLive', () => {
  const base = { timestamps: [10, 20, 30], values: [1, 2, 3], qualities: [192, 192, 192] };
  it('appends newer points, skips duplicates, trims to the window', () => {
    const r = appendLive(base, { timestamps: [30, 40, 35, 50], values: [9, 4, 9, null], qualities: [192, 64, 192, 0] }, 20);
    expect(r.added).toBe(2);
    expect(r.points).toEqual({ timestamps: [20, 30, 40, 50], values: [2, 3, 4, null], qualities: [192, 192, 64, 0] });
  });
  it('leaves the input untouched', () => {
    appendLive(base, { timestamps: [40], values: [4], qualities: [192] }, 0);
    expect(base.timestamps).toEqual([10, 20, 30]);
  });
});

describe('exceedsExcel', () => {
  it('counts the header line', () => {
    expect(exceedsExcel(1_048_575)).toBe(false);
    expect(exceedsExcel(1_048_576)).toBe(true);
  });
});
