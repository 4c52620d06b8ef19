import { act, render, screen, waitFor } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { json, mockFetch } from '@/testing/fetch-mock';
import { Dashboard } from './Dashboard';

vi.mock('@/components/UPlotChart', async () => ({ UPlotChart: (await import('@/testing/uplot-stub')).UPlotChartStub }));

const ID = 'Kessel Ü1/Temperatur';
const T0 = Date.UTC(2026, 0, 1);
const sensors = [
  { sensor_id: ID, count: 3600, first_timestamp_ms: T0, last_timestamp_ms: T0 + 3_599_000 },
  { sensor_id: 'other', count: 10, first_timestamp_ms: T0, last_timestamp_ms: T0 + 9_000 },
];

function backend() {
  return mockFetch(
    (u) => (u.pathname === '/api/v1/sensors' ? json({ sensors }) : undefined),
    (u) => {
      if (u.pathname !== '/api/v1/series') return undefined;
      const s = sensors.find((x) => x.sensor_id === u.searchParams.get('sensor_id'));
      if (!s) return json({ error: 'sensor_not_found', message: `sensor "${u.searchParams.get('sensor_id')}" not found` }, 404);
      const start = Number(u.searchParams.get('start_ts'));
      return json({ sensor_id: s.sensor_id, start_ts: start, end_ts: Number(u.searchParams.get('end_ts')), count: 2, downsampled: false, timestamps: [start, start + 1000], values: [1, 2], qualities: [192, 192] });
    },
  );
}

beforeEach(() => window.history.replaceState(null, '', '/'));
afterEach(() => vi.unstubAllGlobals());

describe('Dashboard', () => {
  it('opening /?sensor=ID&from=MS&to=MS shows exactly that sensor and range', async () => {
    const { calls } = backend();
    window.history.replaceState(null, '', `/?sensor=${encodeURIComponent(ID)}&from=${T0 + 1000}&to=${T0 + 5000}`);
    render(<Dashboard />);
    expect(await screen.findByRole('img', { name: /Trend of Kessel Ü1\/Temperatur/ })).toBeTruthy();
    const series = calls.find((c) => c.pathname === '/api/v1/series')!;
    expect(series.searchParams.get('sensor_id')).toBe(ID);
    expect(series.searchParams.get('start_ts')).toBe(String(T0 + 1000));
    expect(series.searchParams.get('end_ts')).toBe(String(T0 + 5000));
    expect(Number(series.searchParams.get('max_points'))).toBeGreaterThanOrEqual(1200);
    expect(screen.getByRole('combobox', { name: 'Sensor' })).toHaveProperty('value', ID);
    expect(screen.getByRole('button', { name: /^Time range: 2026-01-01 01:00:01 → 2026-01-01 01:00:05$/ })).toBeTruthy();
  });

  it('a sensor without a range shows its whole span and writes it into the URL', async () => {
    backend();
    window.history.replaceState(null, '', `/?sensor=other`);
    render(<Dashboard />);
    await waitFor(() => expect(window.location.search).toBe(`?sensor=other&from=${T0}&to=${T0 + 9001}`));
    expect(await screen.findByRole('img', { name: /Trend of other/ })).toBeTruthy();
  });

  it('picking a sensor pushes a history entry; Back restores the previous view', async () => {
    const user = userEvent.setup();
    backend();
    window.history.replaceState(null, '', `/?sensor=other&from=${T0}&to=${T0 + 9001}`);
    render(<Dashboard />);
    await screen.findByRole('img', { name: /Trend of other/ });
    await user.click(screen.getByRole('combobox', { name: 'Sensor' }));
    await user.click(screen.getByRole('option', { name: new RegExp(ID) }));
    expect(new URLSearchParams(window.location.search).get('sensor')).toBe(ID);
    expect(await screen.findByRole('img', { name: /Trend of Kessel/ })).toBeTruthy();
    await act(async () => {
      window.history.back();
      await new Promise((r) => setTimeout(r, 50));
    });
    expect(await screen.findByRole('img', { name: /Trend of other/ })).toBeTruthy();
  });

  it('zoom out widens the range in the URL', async () => {
    const user = userEvent.setup();
    backend();
    window.history.replaceState(null, '', `/?sensor=other&from=1000&to=2000`);
    render(<Dashboard />);
    await screen.findByRole('img', { name: /Trend of other/ });
    await user.click(screen.getByRole('button', { name: 'Zoom out' }));
    expect(window.location.search).toBe('?sensor=other&from=500&to=2500');
  });

  it('an unknown sensor says "not found"', async () => {
    backend();
    window.history.replaceState(null, '', `/?sensor=nope&from=1000&to=2000`);
    render(<Dashboard />);
    expect((await screen.findByRole('alert')).textContent).toMatch(/not found/);
    expect(screen.getByRole('button', { name: 'Export CSV' })).toBeTruthy();
  });

  it('asks for a sensor when none is chosen', async () => {
    backend();
    render(<Dashboard />);
    expect(await screen.findByText('Choose a sensor above to see its trend, or one of these:')).toBeTruthy();
    await userEvent.setup().click(screen.getByRole('link', { name: 'other' }));
    expect(window.location.search).toBe(`?sensor=other&from=${T0}&to=${T0 + 9001}`);
  });
});
