import type { SensorInfo } from '../types';

/**
 * Sensors whose id contains every word of `query` (case-insensitive), best first:
 * ids that start with the query, then the rest in id order. At most `limit`.
 */
export function searchSensors(sensors: readonly SensorInfo[], query: string, limit: number): { matches: SensorInfo[]; total: number } {
  const words = query.toLocaleLowerCase().split(/\s+/).filter(Boolean);
  if (words.length === 0) return { matches: sensors.slice(0, limit), total: sensors.length };
  const q = query.trim().toLocaleLowerCase();
  const prefix: SensorInfo[] = [];
  const rest: SensorInfo[] = [];
  for (const s of sensors) {
    const id = s.sensor_id.toLocaleLowerCase();
    if (!words.every((w) => id.includes(w))) continue;
    (id.startsWith(q) ? prefix : rest).push(s);
  }
  const all = prefix.concat(rest);
  return { matches: all.slice(0, limit), total: all.length };
}
