import { apiGet } from '@/lib/api-client';
import { useAsync } from '@/lib/use-async';
import type { SensorsResponse } from '../types';

/** `GET /api/v1/sensors`: every sensor with its count and time span, ordered by id. */
export function getSensors(signal?: AbortSignal): Promise<SensorsResponse> {
  return apiGet<SensorsResponse>('/api/v1/sensors', {}, signal);
}

export function useSensors() {
  return useAsync('sensors', getSensors);
}
