import { render, screen, waitFor } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { json, mockFetch } from '@/testing/fetch-mock';
import { TrendChart, type TrendChartProps } from './TrendChart';

vi.mock('@/components/UPlotChart', async () => ({ UPlotChart: (await import('@/testing/uplot-stub')).UPlotChartStub }));

afterEach(() => vi.unstubAllGlobals());

const range = { start: Date.UTC(2026, 0, 1), end: Date.UTC(2026, 0, 1, 1) };
const points = { timestamps: [range.start, range.start + 1000, range.start + 2000], values: [1, 2, 3], qualities: [192, 64, 0] };
const props = (p: Partial<TrendChartProps> = {}): TrendChartProps => ({
  sensorId: 'Kessel Ü1/Temperatur', range, status: 'ready', points, rawCount: 3, downsampled: false,
  onZoom: vi.fn(), onZoomOut: vi.fn(), onZoomIn: vi.fn(), ...p,
});

function spyDownloads() {
  const hrefs: string[] = [];
  vi.spyOn(HTMLAnchorElement.prototype, 'click').mockImplementation(function (this: HTMLAnchorElement) {
    hrefs.push(this.getAttribute('href')!);
  });
  return hrefs;
}

describe('TrendChart', () => {
  it('shows the raw count, the chart and the quality legend', () => {
    render(<TrendChart {...props({ rawCount: 1_000_000, downsampled: true })} />);
    expect(screen.getByRole('heading', { name: 'Kessel Ü1/Temperatur' })).toBeTruthy();
    expect(screen.getByText('1,000,000')).toBeTruthy();
    expect(screen.getByText(/3 drawn/)).toBeTruthy();
    expect(screen.getByRole('img', { name: /Trend of Kessel/ }).getAttribute('data-points')).toBe('3');
    expect(screen.getByText(/1 uncertain/)).toBeTruthy();
    expect(screen.getByText(/1 bad/)).toBeTruthy();
    expect(screen.getByText(/Times in Europe\/Berlin/)).toBeTruthy();
  });

  it('has loading, empty and error states', async () => {
    const user = userEvent.setup();
    const { rerender } = render(<TrendChart {...props({ status: 'loading', points: undefined, rawCount: undefined })} />);
    expect(screen.getByText('Loading points…')).toBeTruthy();
    const showAll = vi.fn();
    rerender(<TrendChart {...props({ points: { timestamps: [], values: [], qualities: [] }, rawCount: 0, emptyAction: { label: 'Show all data of this sensor', run: showAll } })} />);
    expect(screen.getByText('No data in this range.')).toBeTruthy();
    await user.click(screen.getByRole('button', { name: 'Show all data of this sensor' }));
    expect(showAll).toHaveBeenCalled();
    const retry = vi.fn();
    rerender(<TrendChart {...props({ status: 'error', error: 'sensor not found', points: undefined, rawCount: undefined, onRetry: retry })} />);
    expect(screen.getByRole('alert').textContent).toContain('Sensor not found');
  });

  it('"Export CSV" checks first, then downloads exactly the sensor and range on screen', async () => {
    const user = userEvent.setup();
    mockFetch(
      (u) => (u.pathname.startsWith('/api/v1/sensors/') ? json({ sensor_id: 'Kessel Ü1/Temperatur', count: 3, first_timestamp_ms: 0, last_timestamp_ms: 1 }) : undefined),
      (u) => (u.pathname === '/api/v1/export' ? new Response('timestamp_ms,value,quality\n') : undefined),
    );
    const hrefs = spyDownloads();
    render(<TrendChart {...props()} />);
    await user.click(screen.getByRole('button', { name: 'Export CSV' }));
    await waitFor(() => expect(hrefs).toHaveLength(1));
    expect(hrefs[0]).toBe(`/api/v1/export?sensor_id=Kessel%20%C3%9C1%2FTemperatur&start_ts=${range.start}&end_ts=${range.end}`);
    expect(screen.getByRole('status').textContent).toMatch(/Download started \(CSV\)/);
  });

  it('an unknown sensor gives a "not found" message and no download', async () => {
    const user = userEvent.setup();
    mockFetch((u) => (u.pathname.startsWith('/api/v1/sensors/') ? json({ error: 'sensor_not_found', message: 'sensor not found' }, 404) : undefined));
    const hrefs = spyDownloads();
    render(<TrendChart {...props({ sensorId: 'nope' })} />);
    await user.click(screen.getByRole('button', { name: 'Export CSV' }));
    expect((await screen.findByRole('alert')).textContent).toMatch(/not found/);
    expect(hrefs).toHaveLength(0);
  });

  it("past Excel's row limit it says so first and offers Export Excel", async () => {
    const user = userEvent.setup();
    mockFetch(
      (u) => (u.pathname.startsWith('/api/v1/sensors/') ? json({ sensor_id: 'x', count: 2_000_000, first_timestamp_ms: 0, last_timestamp_ms: 1 }) : undefined),
      (u) => (u.pathname === '/api/v1/export' ? new Response('x') : undefined),
    );
    const hrefs = spyDownloads();
    render(<TrendChart {...props({ rawCount: 2_000_000 })} />);
    await user.click(screen.getByRole('button', { name: 'Export CSV' }));
    expect(screen.getByRole('alert').textContent).toMatch(/2,000,000 rows.*1,048,576/);
    expect(hrefs).toHaveLength(0);
    await user.click(screen.getByRole('button', { name: 'Export Excel' }));
    await waitFor(() => expect(hrefs).toHaveLength(1));
    expect(hrefs[0]).toMatch(/&format=xlsx$/);
  });

  it('zoom buttons are keyboard reachable', async () => {
    const user = userEvent.setup();
    const p = props();
    render(<TrendChart {...p} />);
    await user.click(screen.getByRole('button', { name: 'Zoom out' }));
    await user.click(screen.getByRole('button', { name: 'Zoom in' }));
    expect(p.onZoomOut).toHaveBeenCalled();
    expect(p.onZoomIn).toHaveBeenCalled();
  });
});
