import { describe, expect, it } from 'vitest';
import { describeRange, formatDuration, formatTick, snapRange, formatTime, isRelative, parseTime, relativeFrom, resolveRange, zoneLabel, zoomOut } from './time-range';

const NOW = Date.UTC(2026, 0, 10, 12, 0, 0); // 13:00 in Berlin

describe('parseTime', () => {
  it('reads epoch milliseconds', () => {
    expect(parseTime('1767225600000', NOW)).toBe(1767225600000);
    expect(parseTime(' 0 ', NOW)).toBe(0);
  });
  it('reads relative expressions', () => {
    expect(parseTime('now', NOW)).toBe(NOW);
    expect(parseTime('now-6h', NOW)).toBe(NOW - 6 * 3_600_000);
    expect(parseTime('now-15m', NOW)).toBe(NOW - 15 * 60_000);
    expect(parseTime('now-7d', NOW)).toBe(NOW - 7 * 86_400_000);
    expect(parseTime('now-1d-12h', NOW)).toBe(NOW - 36 * 3_600_000);
    expect(parseTime('now+30s', NOW)).toBe(NOW + 30_000);
    expect(parseTime('now - 2w', NOW)).toBe(NOW - 14 * 86_400_000);
  });
  it('reads local date-times in the browser zone', () => {
    expect(parseTime('2026-01-01 01:00', NOW)).toBe(Date.UTC(2026, 0, 1, 0, 0));
    expect(parseTime('2026-01-01T01:00:30.25', NOW)).toBe(Date.UTC(2026, 0, 1, 0, 0, 30, 250));
    expect(parseTime('2026-07-01', NOW)).toBe(Date.UTC(2026, 5, 30, 22, 0)); // summer time
    expect(parseTime('2026-01-01T00:00:00Z', NOW)).toBe(Date.UTC(2026, 0, 1));
    expect(parseTime('2026-01-01T00:00:00+02:00', NOW)).toBe(Date.UTC(2025, 11, 31, 22));
  });
  it('rejects what is not a time', () => {
    for (const bad of ['', 'yesterday', 'now-6x', 'now-h', '2026-02-31', '2026-13-01', '12:00', '1e3', '99999999999999999999']) {
      expect(parseTime(bad, NOW), bad).toBeNull();
    }
  });
});

describe('resolveRange', () => {
  it('resolves relative and absolute ends', () => {
    expect(resolveRange({ from: 'now-1h', to: 'now' }, NOW)).toEqual({ ok: true, range: { start: NOW - 3_600_000, end: NOW } });
    expect(resolveRange({ from: '1000', to: '2000' }, NOW)).toEqual({ ok: true, range: { start: 1000, end: 2000 } });
  });
  it('explains a bad range', () => {
    const r = resolveRange({ from: '2000', to: '1000' }, NOW);
    expect(r.ok).toBe(false);
    expect(!r.ok && r.message).toMatch(/before its end/);
    expect(resolveRange({ from: 'soon', to: 'now' }, NOW)).toMatchObject({ ok: false, message: expect.stringContaining('"soon"') });
    expect(resolveRange({ from: 'now', to: 'now' }, NOW).ok).toBe(false);
  });
});

describe('labels', () => {
  it('names quick ranges and formats absolute ones in the local zone', () => {
    expect(describeRange({ from: 'now-6h', to: 'now' })).toBe('Last 6 hours');
    expect(describeRange({ from: String(Date.UTC(2026, 0, 1)), to: 'now' })).toBe('2026-01-01 01:00:00 → now');
    expect(formatTime(Date.UTC(2026, 0, 1, 0, 0, 0, 5))).toBe('2026-01-01 01:00:00.005');
  });
  it('names the zone with its offset', () => {
    expect(zoneLabel(Date.UTC(2026, 0, 1))).toBe('Europe/Berlin (UTC+01:00)');
    expect(zoneLabel(Date.UTC(2026, 6, 1))).toBe('Europe/Berlin (UTC+02:00)');
  });
  it('tells relative expressions', () => {
    expect(isRelative('now-6h')).toBe(true);
    expect(isRelative('1767225600000')).toBe(false);
  });
  it('formats durations', () => {
    expect(formatDuration(6 * 3_600_000)).toBe('6 h');
    expect(formatDuration(90 * 60_000)).toBe('1.5 h');
    expect(formatDuration(250)).toBe('250 ms');
  });
});

describe('zoom and live helpers', () => {
  it('zooms out to twice the span around the centre', () => {
    expect(zoomOut({ start: 1000, end: 2000 })).toEqual({ start: 500, end: 2500 });
  });
  it('writes a span as a relative from', () => {
    expect(relativeFrom(6 * 3_600_000)).toBe('now-6h');
    expect(relativeFrom(7 * 86_400_000)).toBe('now-1w');
    expect(relativeFrom(90 * 60_000)).toBe('now-90m');
    expect(relativeFrom(1500)).toBe('now-2s');
  });
});

describe('formatTick', () => {
  const t = Date.UTC(2026, 0, 1, 22, 30); // 23:30 in Berlin
  it('is 24-hour local time, with the date on the first tick and at a new day', () => {
    expect(formatTick(t, 300_000, null)).toBe('23:30\n2026-01-01');
    expect(formatTick(t, 300_000, t - 300_000)).toBe('23:30');
    expect(formatTick(t + 3_600_000, 3_600_000, t)).toBe('00:30\n2026-01-02');
    expect(formatTick(t + 1500, 500, t + 1000)).toBe('23:30:01.500');
    expect(formatTick(t, 86_400_000, null)).toBe('2026-01-01');
  });
});

describe('snapRange', () => {
  it('rounds the ends outwards as finely as the pixels allow', () => {
    expect(snapRange(1_199_527, 2_039_244, 650)).toEqual({ start: 1_199_000, end: 2_040_000 });
    expect(snapRange(1_199_527, 2_039_244, 40_000)).toEqual({ start: 1_140_000, end: 2_040_000 });
    expect(snapRange(1005, 1007, 0.01)).toEqual({ start: 1005, end: 1007 });
    expect(snapRange(1_000, 1_000, 5_000)).toEqual({ start: 1_000, end: 2_000 });
  });
});
