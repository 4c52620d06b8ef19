import { apiGet } from '@/lib/api-client';
import type { SensorInfo } from '../types';

/** `GET /api/v1/sensors/{id}`; rejects with ApiError 404 `sensor_not_found` when unknown. */
export function getSensor(sensorId: string, signal?: AbortSignal): Promise<SensorInfo> {
  return apiGet<SensorInfo>(`/api/v1/sensors/${encodeURIComponent(sensorId)}`, {}, signal);
}
