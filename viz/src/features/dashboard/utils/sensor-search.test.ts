import { describe, expect, it } from 'vitest';
import type { SensorInfo } from '../types';
import { searchSensors } from './sensor-search';

const mk = (id: string): SensorInfo => ({ sensor_id: id, count: 1, first_timestamp_ms: 0, last_timestamp_ms: 0 });
const sensors = Array.from({ length: 5000 }, (_, i) => mk(`plant-${String(i).padStart(4, '0')}/temp`)).concat([mk('Kessel Ü1/Temperatur'), mk('temp-main')]);

describe('searchSensors', () => {
  it('limits what it returns and says how many matched', () => {
    const r = searchSensors(sensors, '', 50);
    expect(r.matches).toHaveLength(50);
    expect(r.total).toBe(5002);
  });
  it('matches every word, case-insensitively, prefix matches first', () => {
    expect(searchSensors(sensors, 'kessel ü1', 10).matches.map((s) => s.sensor_id)).toEqual(['Kessel Ü1/Temperatur']);
    const t = searchSensors(sensors, 'temp', 3);
    expect(t.matches[0]!.sensor_id).toBe('temp-main');
    expect(t.total).toBe(5002);
    expect(searchSensors(sensors, '0042', 10).matches.map((s) => s.sensor_id)).toEqual(['plant-0042/temp']);
  });
});
