import { apiGet } from '@/lib/api-client';
import { useAsync } from '@/lib/use-async';
import type { ExportSummary } from '../types';
import { exportParams, type ExportOptions } from '../utils/export-request';

/** `GET /api/v1/export/summary`: rows and columns of an export, counted from block summaries. */
export function getExportSummary(o: ExportOptions, signal?: AbortSignal): Promise<ExportSummary> {
  // Repeated sensor_id does not fit apiGet's record: build the query by hand.
  const params = exportParams(o);
  const search = params.map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`).join('&');
  return apiGet<ExportSummary>(`/api/v1/export/summary?${search}`, {}, signal);
}

export function useExportSummary(o: ExportOptions | null) {
  return useAsync(o === null ? null : JSON.stringify(exportParams(o)), (signal) => getExportSummary(o!, signal));
}
