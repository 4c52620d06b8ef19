import { apiUrl } from '@/lib/api-client';
import type { LivePoints } from '../types';

export interface LiveHandlers {
  onPoints: (p: LivePoints) => void;
  onStatus: (s: 'connecting' | 'open' | 'error') => void;
  /** Points were missed (this client fell behind, or an import rewrote history): refetch. */
  onResync: () => void;
}

/**
 * `GET /api/v1/live?sensor_id=`: Server-Sent Events, one `event: points` per batch of
 * newly written points, and `event: resync` when points were missed, so the range
 * must be fetched again. EventSource reconnects by itself after a drop.
 * Returns the function that closes the stream.
 */
export function subscribeLive(sensorId: string, h: LiveHandlers, Source: typeof EventSource = EventSource): () => void {
  const es = new Source(apiUrl('/api/v1/live', { sensor_id: sensorId }));
  h.onStatus('connecting');
  es.onopen = () => h.onStatus('open');
  es.onerror = () => h.onStatus('error');
  es.addEventListener('points', (ev) => {
    try {
      const p = JSON.parse((ev as MessageEvent<string>).data) as LivePoints;
      if (Array.isArray(p.timestamps) && Array.isArray(p.values)) h.onPoints({ ...p, qualities: Array.isArray(p.qualities) ? p.qualities : [] });
    } catch {
      /* a malformed event is skipped; the next one carries on */
    }
  });
  es.addEventListener('resync', () => h.onResync());
  return () => es.close();
}
