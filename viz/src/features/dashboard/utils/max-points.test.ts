import { describe, expect, it } from 'vitest';
import { maxPointsFor } from './series';

describe('maxPointsFor', () => {
  it('asks for four points per plot pixel', () => {
    expect(maxPointsFor(1280)).toBe(5120);
    expect(maxPointsFor(1280.4)).toBe(5120);
    expect(maxPointsFor(10)).toBe(400);
  });
  it('stays under the server cap with buckets of whole pixels', () => {
    expect(maxPointsFor(2500)).toBe(10_000);
    expect(maxPointsFor(2600)).toBe(5200); // 2 px per bucket
    expect(maxPointsFor(5200)).toBe(6932); // 3 px per bucket
  });
});
