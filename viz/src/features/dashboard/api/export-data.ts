import { ApiError, apiUrl, isAbort, reportUnauthorized, toApiError } from '@/lib/api-client';
import { getSensor } from './get-sensor';

export type ExportFormat = 'csv' | 'xlsx';

export interface ExportQuery {
  sensorId: string;
  /** Sensors shown beside the first: exported with it (long layout). */
  more?: string[];
  start: number;
  end: number;
  format: ExportFormat;
}

/** `GET /api/v1/export`: the raw points of [start, end) as CSV (or an Excel workbook). */
export function exportUrl(q: ExportQuery): string {
  const url = apiUrl('/api/v1/export', {
    sensor_id: q.sensorId,
    start_ts: q.start,
    end_ts: q.end,
    format: q.format === 'xlsx' ? 'xlsx' : undefined,
  });
  // Further sensors repeat sensor_id (after the first, so one sensor's URL is unchanged).
  const more = (q.more ?? []).map((id) => `&sensor_id=${encodeURIComponent(id)}`).join('');
  return url + more;
}

/** Parameter checks the server would make, done before asking it. */
export function validateExport(q: ExportQuery): string | null {
  if (!q.sensorId) return 'Choose a sensor first.';
  if (!Number.isSafeInteger(q.start) || !Number.isSafeInteger(q.end)) return 'The time range is not valid.';
  if (q.end <= q.start) return 'The start of the range must be before its end.';
  return null;
}

/**
 * Makes sure a download will succeed before it starts, so an error never lands
 * in a saved file: checks the parameters, looks the sensor up (404 -> "not found"),
 * then asks for the export itself and reads only its status line and headers.
 * Resolves to an error message, or null when the download can go ahead.
 */
export async function checkExport(q: ExportQuery, signal?: AbortSignal): Promise<string | null> {
  const invalid = validateExport(q);
  if (invalid) return invalid;
  for (const id of [q.sensorId, ...(q.more ?? [])]) {
    try {
      await getSensor(id, signal);
    } catch (e) {
      if (isAbort(e)) throw e;
      if (e instanceof ApiError && e.status === 404) return `Sensor "${id}" not found.`;
      return e instanceof Error ? e.message : String(e);
    }
  }
  const probe = new AbortController();
  const onAbort = () => probe.abort();
  signal?.addEventListener('abort', onAbort);
  try {
    const res = await fetch(exportUrl(q), { signal: probe.signal });
    if (!res.ok) {
      if (res.status === 401) reportUnauthorized();
      const err = await toApiError(res);
      return err.status === 404 && !/not found/i.test(err.message) ? `Sensor "${q.sensorId}" not found.` : err.message;
    }
    return null;
  } catch (e) {
    if (isAbort(e)) throw e;
    return 'Cannot reach the engine. Is `engine serve` running?';
  } finally {
    // The headers said yes; the body is the download's job, not ours.
    probe.abort();
    signal?.removeEventListener('abort', onAbort);
  }
}

/** Starts the browser's download through a hidden `<a download>`. */
export function triggerDownload(url: string, doc: Document = document): void {
  const a = doc.createElement('a');
  a.href = url;
  a.download = ''; // keep the server's filename (Content-Disposition)
  a.hidden = true;
  doc.body.appendChild(a);
  a.click();
  a.remove();
}
