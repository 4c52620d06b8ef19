import { render, screen, waitFor } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { json, mockFetch } from '@/testing/fetch-mock';
import { App } from './App';

vi.mock('@/components/UPlotChart', async () => ({ UPlotChart: (await import('@/testing/uplot-stub')).UPlotChartStub }));

const T0 = Date.UTC(2026, 0, 1);
const sensors = [{ sensor_id: 'plant/a', count: 2, first_timestamp_ms: T0, last_timestamp_ms: T0 + 1000 }];
const reader = { name: 'viewer', token_id: 'tok_r', scopes: ['read:**'], auth: true, can_export: false, can_write: false };

/** The engine: a session cookie once signed in (here a flag), 401 before. */
function engine(initial: typeof reader | null) {
  let session = initial;
  return mockFetch(
    (u, init) => {
      if (u.pathname !== '/api/v1/session') return undefined;
      if (init?.method === 'POST') return (session = reader), json(reader);
      if (init?.method === 'DELETE') return (session = null), new Response(null, { status: 204 });
      return session ? json(session) : json({ error: 'unauthorized', message: 'no credentials' }, 401);
    },
    (u) => (!session && u.pathname.startsWith('/api/') ? json({ error: 'unauthorized', message: 'no credentials' }, 401) : undefined),
    (u) => (u.pathname === '/api/v1/sensors' ? json({ sensors }) : undefined),
    (u) =>
      u.pathname === '/api/v1/series'
        ? json({ sensor_id: 'plant/a', start_ts: T0, end_ts: T0 + 1001, count: 2, downsampled: false, timestamps: [T0, T0 + 1000], values: [1, 2], qualities: [192, 192] })
        : undefined,
  );
}

beforeEach(() => window.history.replaceState(null, '', '/'));
afterEach(() => vi.unstubAllGlobals());

describe('App', () => {
  it('signed out: the sign-in page; after it, the dashboard and who is signed in; sign-out returns', async () => {
    const user = userEvent.setup();
    engine(null);
    render(<App />);
    await user.type(await screen.findByLabelText('Token'), 'stse_x');
    await user.click(screen.getByRole('button', { name: 'Sign in' }));
    expect((await screen.findByTestId('signed-in-as')).textContent).toBe('viewer');
    expect(await screen.findByRole('combobox', { name: 'Sensor' })).toBeTruthy();
    await user.click(screen.getByRole('button', { name: 'Sign out' }));
    expect(await screen.findByLabelText('Token')).toBeTruthy();
    expect(screen.getByRole('status').textContent).toBe('Signed out.');
  });

  it('a read-only token sees the chart, but "Export CSV" is disabled with the reason', async () => {
    engine(reader);
    window.history.replaceState(null, '', `/?sensor=plant%2Fa&from=${T0}&to=${T0 + 1001}`);
    render(<App />);
    await screen.findByRole('img', { name: /Trend of plant\/a/ });
    expect(screen.getByRole('button', { name: 'Export CSV' })).toHaveProperty('disabled', true);
    expect(screen.getByRole('button', { name: 'Export…' })).toHaveProperty('disabled', true);
    expect(screen.getByTestId('export-blocked').textContent).toContain('“viewer” may not export “plant/a”');
  });

  it('a used sign-in link lands on the sign-in page with the reason, and the note leaves the URL', async () => {
    engine(null);
    window.history.replaceState(null, '', '/?signin=link-invalid');
    render(<App />);
    await screen.findByLabelText('Token');
    expect(screen.getByRole('status').textContent).toMatch(/already used, has expired/);
    expect(window.location.search).toBe('');
  });

  it('a 401 in the middle of work (revoked token) shows the sign-in page again', async () => {
    const { fn } = engine(reader);
    render(<App />);
    await screen.findByTestId('signed-in-as');
    fn.mockImplementation(async () => json({ error: 'unauthorized', message: 'revoked token' }, 401));
    window.history.pushState(null, '', `/?sensor=plant%2Fa&from=${T0}&to=${T0 + 1001}`);
    window.dispatchEvent(new PopStateEvent('popstate'));
    await waitFor(() => expect(screen.getByLabelText('Token')).toBeTruthy());
    expect(screen.getByRole('status').textContent).toMatch(/session has ended/);
  });
});
