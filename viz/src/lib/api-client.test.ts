import { afterEach, describe, expect, it, vi } from 'vitest';
import { json, mockFetch } from '@/testing/fetch-mock';
import { ApiError, apiGet, apiUrl, toApiError } from './api-client';

afterEach(() => vi.unstubAllGlobals());

describe('apiUrl', () => {
  it('percent-encodes every value', () => {
    expect(apiUrl('/api/v1/series', { sensor_id: 'Kessel Ü1/Temperatur', start_ts: 1, x: undefined })).toBe(
      '/api/v1/series?sensor_id=Kessel%20%C3%9C1%2FTemperatur&start_ts=1',
    );
    expect(apiUrl('/healthz')).toBe('/healthz');
  });
});

describe('errors', () => {
  it('reads the JSON error body', async () => {
    const e = await toApiError(json({ error: 'sensor_not_found', message: 'sensor "x" not found' }, 404));
    expect(e).toMatchObject({ status: 404, code: 'sensor_not_found', message: 'sensor "x" not found' });
  });
  it('copes with a non-JSON body and names Retry-After', async () => {
    const e = await toApiError(new Response('busy', { status: 429, headers: { 'Retry-After': '2' } }));
    expect(e.code).toBe('http_429');
    expect(e.message).toMatch(/busy.*retry after 2 s/);
  });
  it('apiGet rejects with ApiError, and with a network error when the engine is away', async () => {
    mockFetch((u) => (u.pathname === '/bad' ? json({ error: 'invalid_parameter', message: 'end_ts must be after start_ts' }, 400) : undefined));
    await expect(apiGet('/bad')).rejects.toMatchObject({ status: 400, code: 'invalid_parameter' });
    vi.stubGlobal('fetch', vi.fn(() => Promise.reject(new TypeError('Failed to fetch'))));
    await expect(apiGet('/x')).rejects.toBeInstanceOf(ApiError);
  });
});
