/** Wire types of the engine's HTTP API (`/api/v1`). */

export interface SensorInfo {
  sensor_id: string;
  /** Raw points stored for the sensor. */
  count: number;
  first_timestamp_ms: number | null;
  last_timestamp_ms: number | null;
}

export interface SensorsResponse {
  sensors: SensorInfo[];
}

/** `GET /api/v1/series`: M4-downsampled points of [start_ts, end_ts). */
export interface SeriesResponse {
  sensor_id: string;
  start_ts: number;
  end_ts: number;
  /** Raw points in the range, before downsampling. */
  count: number;
  downsampled: boolean;
  timestamps: number[];
  /** `null` where the stored value is NaN or ±inf. */
  values: (number | null)[];
  /** OPC-UA style: 192 good, 64 uncertain, 0 bad. */
  qualities: number[];
}

/** One `event: points` of `GET /api/v1/live`. */
export interface LivePoints {
  timestamps: number[];
  values: (number | null)[];
  qualities: number[];
}

/** `GET /api/v1/export/summary`. */
export interface ExportSummary {
  /** Rows the export will have (wide raw: an upper bound, see `rows_exact`). */
  rows: number;
  rows_exact: boolean;
  columns: string[];
  sensors: { sensor_id: string; points: number; first_timestamp_ms: number | null; last_timestamp_ms: number | null }[];
  first_timestamp_ms: number | null;
  last_timestamp_ms: number | null;
  file_name: string;
  query: string;
}
