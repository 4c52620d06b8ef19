import { vi } from 'vitest';

export type Route = (url: URL, init?: RequestInit) => Response | Promise<Response> | undefined;

export const json = (body: unknown, status = 200, headers: Record<string, string> = {}) =>
  new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json', ...headers } });

/** Replaces global fetch with `routes` (first answer wins); records every URL asked for. */
export function mockFetch(...routes: Route[]) {
  const calls: URL[] = [];
  const fn = vi.fn(async (input: RequestInfo | URL, init?: RequestInit) => {
    const url = new URL(String(input), 'http://localhost/');
    calls.push(url);
    for (const r of routes) {
      const res = await r(url, init);
      if (res) return res;
    }
    return json({ error: 'not_found', message: `no route for ${url.pathname}` }, 404);
  });
  vi.stubGlobal('fetch', fn);
  return { fn, calls };
}
