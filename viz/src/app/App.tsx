import { useCallback } from 'react';
import { exportRefusal, SessionMenu, SignIn, useSession } from '@/features/auth';
import { Dashboard } from '@/features/dashboard';

/**
 * The shell: the sign-in page until the engine knows this browser (its session
 * cookie), then the dashboard, with who is signed in and "Sign out" in the header.
 */
export function App() {
  const { state, signedIn, signOut, retry } = useSession();
  const session = state.status === 'signed-in' ? state.session : null;
  const refusal = useCallback((sensorIds: string[]) => (session ? exportRefusal(session, sensorIds) : null), [session]);

  return (
    <div className="app">
      <header className="app-header">
        <h1>Sensor trends</h1>
        {session && <SessionMenu session={session} onSignOut={() => void signOut()} />}
      </header>
      {state.status === 'loading' ? (
        <div className="state" role="status">
          Loading…
        </div>
      ) : state.status === 'error' ? (
        <div className="state state-error" role="alert">
          <p>{state.error}</p>
          <button type="button" onClick={retry}>
            Retry
          </button>
        </div>
      ) : state.status === 'signed-out' ? (
        <SignIn notice={state.notice} onSignedIn={signedIn} />
      ) : (
        <Dashboard exportRefusal={refusal} />
      )}
    </div>
  );
}
