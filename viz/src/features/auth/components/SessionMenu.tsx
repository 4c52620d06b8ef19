import type { Session } from '../types';

export interface SessionMenuProps {
  session: Session;
  onSignOut: () => void;
}

/** The header's corner: who is signed in, and "Sign out" (nothing to sign out of under `--no-auth`). */
export function SessionMenu({ session, onSignOut }: SessionMenuProps) {
  if (!session.auth) {
    return (
      <p className="session" title="engine serve --no-auth: anyone who can connect may read, export and write">
        Authentication off
      </p>
    );
  }
  return (
    <div className="session" role="group" aria-label="Session">
      <span title={`Scopes: ${session.scopes.join(', ')}`}>
        Signed in as <strong data-testid="signed-in-as">{session.name}</strong>
      </span>
      <button type="button" onClick={onSignOut}>
        Sign out
      </button>
    </div>
  );
}
