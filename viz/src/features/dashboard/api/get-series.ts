import { apiGet } from '@/lib/api-client';
import { useAsync } from '@/lib/use-async';
import type { SeriesResponse } from '../types';

export interface SeriesQuery {
  sensorId: string;
  start: number;
  end: number;
  /** Upper bound on returned points; the server keeps first/min/max/last per bucket (M4). */
  maxPoints: number;
}

/** `GET /api/v1/series`: points of [start, end), downsampled on the server. */
export function getSeries(q: SeriesQuery, signal?: AbortSignal): Promise<SeriesResponse> {
  return apiGet<SeriesResponse>(
    '/api/v1/series',
    { sensor_id: q.sensorId, start_ts: q.start, end_ts: q.end, max_points: q.maxPoints },
    signal,
  );
}

export function seriesKey(q: SeriesQuery | null): string | null {
  return q === null ? null : JSON.stringify([q.sensorId, q.start, q.end, q.maxPoints]);
}

export function useSeries(q: SeriesQuery | null) {
  return useAsync(seriesKey(q), (signal) => getSeries(q!, signal));
}

/** Several sensors' series over the same range, fetched together (the sensors beside the main one). */
export function useSeriesMany(sensorIds: readonly string[], q: Omit<SeriesQuery, 'sensorId'> | null) {
  const key = q === null || sensorIds.length === 0 ? null : JSON.stringify([sensorIds, q.start, q.end, q.maxPoints]);
  return useAsync(key, (signal) => Promise.all(sensorIds.map((sensorId) => getSeries({ ...q!, sensorId }, signal))));
}
