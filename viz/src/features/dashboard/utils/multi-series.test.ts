import { describe, expect, it } from 'vitest';
import { alignColumns, layoutExtras } from './multi-series';

const pts = (ts: number[], vs: number[]) => ({ timestamps: ts, values: vs, qualities: ts.map(() => 192) });

describe('multi-series', () => {
  it('gives a series of a very different range its own axis', () => {
    const layout = layoutExtras([20, 21, 22], [
      { sensorId: 'b', points: pts([1, 2], [20.5, 21.5]) },
      { sensorId: 'p', points: pts([1, 2], [1000, 4000]) },
      { sensorId: 'q', points: pts([1, 2], [0.001, 0.002]) },
    ]);
    expect(layout).toEqual([
      { scale: 'y', ownAxis: false },
      { scale: 'y1', ownAxis: true },
      { scale: 'y2', ownAxis: true },
    ]);
  });

  it('aligns columns on the union of timestamps', () => {
    const aligned = alignColumns([[1, 3], [10, 30]], [{ sensorId: 'b', points: pts([2, 3], [5, 6]) }]);
    expect(aligned).toEqual([[1, 2, 3], [10, null, 30], [null, 5, 6]]);
  });
});
