import { useEffect, useRef, useState } from 'react';
import { subscribeLive } from '../api/live';
import type { LivePoints } from '../types';

export type LiveStatus = 'off' | 'connecting' | 'open' | 'error';

const EMPTY: LivePoints = { timestamps: [], values: [], qualities: [] };

/**
 * Live mode's client side: the points the server pushed since the stream opened
 * (only the last `spanMs` of them are kept) and a clock ticking every second so the
 * window slides even when no point arrives. Nothing while disabled. When the server
 * says points were missed, the buffer is dropped and `onResync` refetches the range.
 */
export function useLive(sensorId: string | null, enabled: boolean, spanMs: number, onResync: () => void) {
  const [buffer, setBuffer] = useState<LivePoints>(EMPTY);
  // A ref, so a new callback each render does not reopen the stream.
  const resync = useRef(onResync);
  useEffect(() => {
    resync.current = onResync;
  }, [onResync]);
  const [status, setStatus] = useState<LiveStatus>('off');
  const [now, setNow] = useState(() => Date.now());

  useEffect(() => {
    if (!enabled || sensorId === null) return;
    const close = subscribeLive(sensorId, {
      onStatus: setStatus,
      onResync: () => {
        setBuffer(EMPTY);
        resync.current();
      },
      onPoints: (p) => {
        const t = Date.now();
        setBuffer((b) => {
          const ts = b.timestamps.concat(p.timestamps);
          let cut = 0;
          while (cut < ts.length && ts[cut]! < t - spanMs) cut++;
          return {
            timestamps: ts.slice(cut),
            values: b.values.concat(p.values).slice(cut),
            qualities: b.qualities.concat(p.qualities).slice(cut),
          };
        });
        setNow(t);
      },
    });
    const tick = window.setInterval(() => setNow(Date.now()), 1000);
    return () => {
      close();
      window.clearInterval(tick);
      setBuffer(EMPTY);
      setStatus('off');
    };
  }, [sensorId, enabled, spanMs]);

  return { buffer, status: enabled ? status : ('off' as const), now };
}
