import { ApiError, toApiError } from '@/lib/api-client';
import type { Session } from '../types';

const PATH = '/api/v1/session';
const UNREACHABLE = 'Cannot reach the engine. Is `engine serve` running?';

async function send(init: RequestInit): Promise<Response> {
  try {
    return await fetch(PATH, { ...init, headers: { Accept: 'application/json', ...init.headers } });
  } catch (e) {
    if (e instanceof DOMException && e.name === 'AbortError') throw e;
    throw new ApiError(0, 'network', UNREACHABLE);
  }
}

/** `GET /api/v1/session`: who is signed in, or null when nobody is (401). */
export async function getSession(signal?: AbortSignal): Promise<Session | null> {
  const res = await send({ signal });
  if (res.status === 401) return null;
  if (!res.ok) throw await toApiError(res);
  return (await res.json()) as Session;
}

/**
 * `POST /api/v1/session` `{"token"}`: exchanges a token for the session cookie
 * (HttpOnly: this page never sees it again, nor keeps the token).
 */
export async function signIn(token: string): Promise<Session> {
  const res = await send({ method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ token: token.trim() }) });
  if (res.status === 401) {
    throw new ApiError(401, 'unauthorized', 'This token was not accepted: it is unknown, expired or revoked. Check that it was copied whole.');
  }
  if (!res.ok) throw await toApiError(res);
  return (await res.json()) as Session;
}

/** `DELETE /api/v1/session`: forgets the session on the server and clears the cookie. */
export async function signOut(): Promise<void> {
  const res = await send({ method: 'DELETE' });
  // 401: the session had ended already, which is what was asked for.
  if (!res.ok && res.status !== 401) throw await toApiError(res);
}
