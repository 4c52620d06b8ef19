import { useId, useState, type FormEvent } from 'react';
import { errorMessage } from '@/lib/api-client';
import { signIn } from '../api/session';
import type { Session } from '../types';

export interface SignInProps {
  /** Why the page is shown, e.g. a sign-in link that was already used. */
  notice?: string | null;
  onSignedIn: (session: Session) => void;
}

/**
 * The sign-in page: a token (`stse_...`) is exchanged for an HttpOnly session cookie
 * (`POST /api/v1/session`); the page keeps nothing of it.
 */
export function SignIn({ notice, onSignedIn }: SignInProps) {
  const id = useId();
  const [token, setToken] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    if (!token.trim()) {
      setError('Paste a token first.');
      return;
    }
    setBusy(true);
    setError(null);
    try {
      const session = await signIn(token);
      setToken('');
      onSignedIn(session);
    } catch (err) {
      setError(errorMessage(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <main className="signin">
      <form className="signin-card" onSubmit={(e) => void submit(e)} aria-labelledby={`${id}-title`}>
        <h2 id={`${id}-title`}>Sign in</h2>
        {notice && (
          <p className="notice notice-warn" role="status">
            {notice}
          </p>
        )}
        <p className="signin-help">
          Click the one-time link <code>engine serve</code> printed at its start, or paste a token: the admin token of the
          first start is in <code>DATA_DIR/auth/admin-token</code>; <code>engine token create</code> makes others.
        </p>
        <label htmlFor={`${id}-token`}>Token</label>
        <input
          id={`${id}-token`}
          type="password"
          autoComplete="off"
          spellCheck={false}
          placeholder="stse_…"
          value={token}
          onChange={(e) => setToken(e.target.value)}
          aria-invalid={error !== null}
          aria-describedby={error ? `${id}-error` : undefined}
        />
        {error && (
          <p id={`${id}-error`} className="notice notice-error" role="alert">
            {error}
          </p>
        )}
        <button type="submit" className="primary" disabled={busy} aria-busy={busy}>
          {busy ? 'Signing in…' : 'Sign in'}
        </button>
      </form>
    </main>
  );
}
