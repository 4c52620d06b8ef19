import { useCallback, useEffect, useState } from 'react';
import { errorMessage, isAbort } from './api-client';

export type AsyncState<T> =
  | { status: 'idle'; data: undefined; error: undefined }
  | { status: 'loading'; data: T | undefined; error: undefined }
  | { status: 'success'; data: T; error: undefined }
  | { status: 'error'; data: undefined; error: string };

type Settled<T> = { key: string; nonce: number } & ({ ok: true; data: T } | { ok: false; error: string });

/**
 * Runs `fetcher` whenever `key` changes (nothing while `key` is null), aborting the
 * previous run. While loading, the last data stays available (no flicker on zoom).
 */
export function useAsync<T>(key: string | null, fetcher: (signal: AbortSignal) => Promise<T>): AsyncState<T> & { reload: () => void } {
  const [settled, setSettled] = useState<Settled<T> | null>(null);
  const [nonce, setNonce] = useState(0);
  const reload = useCallback(() => setNonce((n) => n + 1), []);

  useEffect(() => {
    if (key === null) return;
    const ctl = new AbortController();
    fetcher(ctl.signal).then(
      (data) => {
        if (!ctl.signal.aborted) setSettled({ key, nonce, ok: true, data });
      },
      (e: unknown) => {
        if (!ctl.signal.aborted && !isAbort(e)) setSettled({ key, nonce, ok: false, error: errorMessage(e) });
      },
    );
    return () => ctl.abort();
    // `fetcher` is keyed by `key`: a new key means a new request.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [key, nonce]);

  if (key === null) return { status: 'idle', data: undefined, error: undefined, reload };
  if (settled && settled.key === key && settled.nonce === nonce) {
    return settled.ok
      ? { status: 'success', data: settled.data, error: undefined, reload }
      : { status: 'error', data: undefined, error: settled.error, reload };
  }
  return { status: 'loading', data: settled?.ok ? settled.data : undefined, error: undefined, reload };
}
