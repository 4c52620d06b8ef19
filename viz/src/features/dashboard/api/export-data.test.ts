import { afterEach, describe, expect, it, vi } from 'vitest';
import { json, mockFetch } from '@/testing/fetch-mock';
import { checkExport, exportUrl, triggerDownload } from './export-data';

afterEach(() => vi.unstubAllGlobals());

const q = { sensorId: 'Kessel Ü1/Temperatur', start: 1000, end: 2000, format: 'csv' as const };
const sensor = { sensor_id: q.sensorId, count: 10, first_timestamp_ms: 1000, last_timestamp_ms: 1900 };

describe('exportUrl', () => {
  it('names exactly the sensor and range', () => {
    expect(exportUrl(q)).toBe('/api/v1/export?sensor_id=Kessel%20%C3%9C1%2FTemperatur&start_ts=1000&end_ts=2000');
    expect(exportUrl({ ...q, format: 'xlsx' })).toMatch(/&format=xlsx$/);
  });
});

describe('checkExport', () => {
  it('passes when the sensor exists and the export answers 200', async () => {
    const { calls } = mockFetch(
      (u) => (u.pathname.startsWith('/api/v1/sensors/') ? json(sensor) : undefined),
      (u) => (u.pathname === '/api/v1/export' ? new Response('timestamp_ms,value,quality\n', { headers: { 'Content-Type': 'text/csv' } }) : undefined),
    );
    await expect(checkExport(q)).resolves.toBeNull();
    expect(calls.map((c) => c.pathname)).toEqual(['/api/v1/sensors/Kessel%20%C3%9C1%2FTemperatur', '/api/v1/export']);
  });

  it('says "not found" for an unknown sensor and never asks for the export', async () => {
    const { calls } = mockFetch((u) => (u.pathname.startsWith('/api/v1/sensors/') ? json({ error: 'sensor_not_found', message: 'sensor not found' }, 404) : undefined));
    await expect(checkExport(q)).resolves.toMatch(/not found/);
    expect(calls.some((c) => c.pathname === '/api/v1/export')).toBe(false);
  });

  it("returns the server's message for a refused export", async () => {
    mockFetch(
      (u) => (u.pathname.startsWith('/api/v1/sensors/') ? json(sensor) : undefined),
      (u) => (u.pathname === '/api/v1/export' ? json({ error: 'too_many_requests', message: 'too many exports at once' }, 429, { 'Retry-After': '1' }) : undefined),
    );
    await expect(checkExport(q)).resolves.toMatch(/too many exports at once/);
  });

  it('rejects a bad range before asking the server', async () => {
    const { calls } = mockFetch();
    await expect(checkExport({ ...q, start: 2000, end: 1000 })).resolves.toMatch(/before its end/);
    expect(calls).toHaveLength(0);
  });
});

describe('triggerDownload', () => {
  it('clicks a hidden <a download> and removes it', () => {
    const clicked: HTMLAnchorElement[] = [];
    vi.spyOn(HTMLAnchorElement.prototype, 'click').mockImplementation(function (this: HTMLAnchorElement) {
      clicked.push(this);
    });
    triggerDownload('/api/v1/export?sensor_id=a&start_ts=1&end_ts=2');
    expect(clicked).toHaveLength(1);
    expect(clicked[0]!.getAttribute('href')).toBe('/api/v1/export?sensor_id=a&start_ts=1&end_ts=2');
    expect(clicked[0]!.hasAttribute('download')).toBe(true);
    expect(document.querySelector('a[download]')).toBeNull();
  });
});
