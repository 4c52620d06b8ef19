import { act, render, screen } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { json, mockFetch } from '@/testing/fetch-mock';
import { Dashboard } from './Dashboard';

vi.mock('@/components/UPlotChart', async () => ({ UPlotChart: (await import('@/testing/uplot-stub')).UPlotChartStub }));

/** A stand-in for the browser's EventSource: tests push events by hand. */
class FakeEventSource {
  static last: FakeEventSource | null = null;
  url: string;
  closed = false;
  onopen: (() => void) | null = null;
  onerror: (() => void) | null = null;
  listeners = new Map<string, ((e: MessageEvent<string>) => void)[]>();
  constructor(url: string) {
    this.url = url;
    FakeEventSource.last = this;
  }
  addEventListener(type: string, fn: (e: MessageEvent<string>) => void) {
    this.listeners.set(type, [...(this.listeners.get(type) ?? []), fn]);
  }
  close() {
    this.closed = true;
  }
  emit(type: string, data: unknown) {
    for (const fn of this.listeners.get(type) ?? []) fn(new MessageEvent(type, { data: JSON.stringify(data) }));
  }
}

const ID = 'live/feed';

beforeEach(() => {
  FakeEventSource.last = null;
  vi.stubGlobal('EventSource', FakeEventSource);
});
afterEach(() => vi.unstubAllGlobals());

function backend() {
  return mockFetch(
    (u) => (u.pathname === '/api/v1/sensors' ? json({ sensors: [{ sensor_id: ID, count: 1, first_timestamp_ms: Date.now() - 60_000, last_timestamp_ms: Date.now() - 60_000 }] }) : undefined),
    (u) => {
      if (u.pathname !== '/api/v1/series') return undefined;
      const t = Date.now() - 60_000;
      return json({ sensor_id: ID, start_ts: Number(u.searchParams.get('start_ts')), end_ts: Number(u.searchParams.get('end_ts')), count: 1, downsampled: false, timestamps: [t], values: [1], qualities: [192] });
    },
  );
}

const points = () => Number(screen.getByRole('img', { name: /Trend of live\/feed/ }).getAttribute('data-points'));

describe('Live mode', () => {
  it('appends pushed points without fetching the range again', async () => {
    const { calls } = backend();
    window.history.replaceState(null, '', `/?sensor=${encodeURIComponent(ID)}&from=now-5m&to=now&live=1`);
    render(<Dashboard />);
    await screen.findByRole('img', { name: /Trend of live\/feed/ });
    const es = FakeEventSource.last!;
    expect(es.url).toBe('/api/v1/live?sensor_id=live%2Ffeed');
    act(() => es.onopen?.());
    expect(screen.getByText(/live: connected/)).toBeTruthy();
    expect(points()).toBe(1);
    const seriesCalls = calls.filter((c) => c.pathname === '/api/v1/series').length;
    act(() => es.emit('points', { timestamps: [Date.now() - 1000, Date.now()], values: [2, null], qualities: [192, 0] }));
    expect(points()).toBe(3);
    expect(screen.getByTestId('raw-count').textContent).toBe('3');
    expect(calls.filter((c) => c.pathname === '/api/v1/series').length).toBe(seriesCalls);
  });

  it('refetches the range when the server says points were missed', async () => {
    const { calls } = backend();
    window.history.replaceState(null, '', `/?sensor=${encodeURIComponent(ID)}&from=now-5m&to=now&live=1`);
    render(<Dashboard />);
    await screen.findByRole('img', { name: /Trend of live\/feed/ });
    const es = FakeEventSource.last!;
    act(() => es.emit('points', { timestamps: [Date.now()], values: [2], qualities: [192] }));
    expect(points()).toBe(2);
    const seriesCalls = () => calls.filter((c) => c.pathname === '/api/v1/series').length;
    const before = seriesCalls();
    act(() => es.emit('resync', {}));
    await vi.waitFor(() => expect(seriesCalls()).toBe(before + 1));
    // The pushed point is dropped with the buffer; the refetched range holds the truth.
    await vi.waitFor(() => expect(points()).toBe(1));
    expect(FakeEventSource.last).toBe(es);
  });

  it('the Live toggle keeps the window length, ends at now, and closes the stream when off', async () => {
    const user = userEvent.setup();
    backend();
    const t0 = Date.now() - 3_600_000;
    window.history.replaceState(null, '', `/?sensor=${encodeURIComponent(ID)}&from=${t0}&to=${t0 + 3_600_000}`);
    render(<Dashboard />);
    await screen.findByRole('img', { name: /Trend of live\/feed/ });
    expect(FakeEventSource.last).toBeNull();
    await user.click(screen.getByRole('button', { name: 'Live' }));
    expect(new URLSearchParams(window.location.search).get('from')).toBe('now-1h');
    expect(new URLSearchParams(window.location.search).get('to')).toBe('now');
    expect(new URLSearchParams(window.location.search).get('live')).toBe('1');
    const es = FakeEventSource.last!;
    expect(screen.getByRole('button', { name: 'Live' }).getAttribute('aria-pressed')).toBe('true');
    await user.click(screen.getByRole('button', { name: 'Live' }));
    expect(es.closed).toBe(true);
    expect(new URLSearchParams(window.location.search).get('live')).toBeNull();
    expect(new URLSearchParams(window.location.search).get('to')).toMatch(/^\d+$/);
  });
});
