/**
 * The engine's HTTP API, same origin as the dashboard. Errors come back as
 * `{"error": "<code>", "message": "<human text>"}` with a 4xx/5xx status.
 */

export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  constructor(status: number, code: string, message: string) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

export type QueryParams = Record<string, string | number | boolean | undefined>;

/** `path?k=v&..`, every value percent-encoded (sensor ids are arbitrary UTF-8). */
export function apiUrl(path: string, params: QueryParams = {}): string {
  const q = Object.entries(params)
    .filter((e): e is [string, string | number | boolean] => e[1] !== undefined)
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`)
    .join('&');
  return q ? `${path}?${q}` : path;
}

function fallbackMessage(status: number): string {
  if (status === 404) return 'Not found.';
  if (status === 429 || status === 503) return 'The server is busy; try again in a moment.';
  if (status >= 500) return `The server failed (HTTP ${status}).`;
  return `The request was refused (HTTP ${status}).`;
}

/** Reads an error response into an ApiError, whatever its body. */
export async function toApiError(res: Response): Promise<ApiError> {
  let code = `http_${res.status}`;
  let message = fallbackMessage(res.status);
  try {
    const body: unknown = await res.json();
    if (body && typeof body === 'object') {
      const b = body as { error?: unknown; message?: unknown };
      if (typeof b.error === 'string') code = b.error;
      if (typeof b.message === 'string' && b.message) message = b.message;
    }
  } catch {
    /* not JSON: keep the generic message */
  }
  const retry = res.headers.get('Retry-After');
  if (retry && (res.status === 429 || res.status === 503)) message += ` (retry after ${retry} s)`;
  return new ApiError(res.status, code, message);
}

/**
 * Fired on `window` whenever the engine answers 401: the session ended (signed out
 * elsewhere, token revoked or expired). The app shows its sign-in page again.
 */
export const UNAUTHORIZED_EVENT = 'engine:unauthorized';

/** Tells the app that the engine no longer accepts this browser's session. */
export function reportUnauthorized(): void {
  window.dispatchEvent(new Event(UNAUTHORIZED_EVENT));
}

export async function apiGet<T>(path: string, params: QueryParams = {}, signal?: AbortSignal): Promise<T> {
  let res: Response;
  try {
    res = await fetch(apiUrl(path, params), { signal, headers: { Accept: 'application/json' } });
  } catch (e) {
    if (e instanceof DOMException && e.name === 'AbortError') throw e;
    throw new ApiError(0, 'network', 'Cannot reach the engine. Is `engine serve` running?');
  }
  if (!res.ok) {
    if (res.status === 401) reportUnauthorized();
    throw await toApiError(res);
  }
  return (await res.json()) as T;
}

export function isAbort(e: unknown): boolean {
  return e instanceof DOMException && e.name === 'AbortError';
}

export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
