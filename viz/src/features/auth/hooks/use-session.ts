import { useCallback, useEffect, useState } from 'react';
import { errorMessage, UNAUTHORIZED_EVENT } from '@/lib/api-client';
import { getSession, signOut as apiSignOut } from '../api/session';
import type { Session } from '../types';

export type SessionState =
  | { status: 'loading' }
  | { status: 'signed-in'; session: Session }
  | { status: 'signed-out'; notice: string | null }
  | { status: 'error'; error: string };

/** What a one-time link that failed (`/?signin=...`, set by the engine's `/signin`) means. */
const LINK_NOTICES: Record<string, string> = {
  'link-invalid':
    'That sign-in link was already used, has expired or is not valid: each link works once, within minutes. Sign in with a token below, or start the engine again with --signin-link for a new link.',
  'too-many-attempts': 'Too many failed sign-ins from this address: wait a minute, then try again.',
};

/** The engine's `?signin=` note (a failed one-time link), as a message. */
function linkNotice(): string | null {
  const why = new URL(window.location.href).searchParams.get('signin');
  return why === null ? null : (LINK_NOTICES[why] ?? LINK_NOTICES['link-invalid']!);
}

/** Takes the note out of the address bar, so a reload does not show it again. */
function dropLinkNotice(): void {
  const url = new URL(window.location.href);
  if (!url.searchParams.has('signin')) return;
  url.searchParams.delete('signin');
  window.history.replaceState(window.history.state, '', url.pathname + url.search + url.hash);
}

/**
 * This browser's session: asks the engine who it is signed in as, and goes back to
 * "signed out" whenever any request is answered 401 (a revoked token, a session
 * ended elsewhere).
 */
export function useSession() {
  const [notice] = useState(linkNotice);
  useEffect(dropLinkNotice, []);
  const [state, setState] = useState<SessionState>({ status: 'loading' });
  const [nonce, setNonce] = useState(0);

  useEffect(() => {
    const ctl = new AbortController();
    getSession(ctl.signal).then(
      (session) => setState(session ? { status: 'signed-in', session } : { status: 'signed-out', notice }),
      (e: unknown) => !ctl.signal.aborted && setState({ status: 'error', error: errorMessage(e) }),
    );
    return () => ctl.abort();
  }, [nonce, notice]);

  useEffect(() => {
    const ended = () =>
      setState((s) => (s.status === 'signed-in' ? { status: 'signed-out', notice: 'Your session has ended (signed out, or its token was revoked or expired). Sign in again.' } : s));
    window.addEventListener(UNAUTHORIZED_EVENT, ended);
    return () => window.removeEventListener(UNAUTHORIZED_EVENT, ended);
  }, []);

  const signedIn = useCallback((session: Session) => setState({ status: 'signed-in', session }), []);
  const retry = useCallback(() => setNonce((n) => n + 1), []);
  const signOut = useCallback(async () => {
    try {
      await apiSignOut();
      setState({ status: 'signed-out', notice: 'Signed out.' });
    } catch (e) {
      setState({ status: 'error', error: `Signing out failed: ${errorMessage(e)}` });
    }
  }, []);

  return { state, signedIn, signOut, retry };
}
