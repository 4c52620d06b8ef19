import { apiUrl } from '@/lib/api-client';

/** What the Export... dialog offers. `excel-csv` is CSV in the locale's Excel dialect. */
export type DialogFormat = 'csv' | 'excel-csv' | 'xlsx' | 'parquet' | 'arrow' | 'jsonl';
export type Layout = 'long' | 'wide';

export const AGGREGATES = ['first', 'last', 'min', 'max', 'mean', 'count', 'time_weighted_mean', 'interpolated', 'percent_good'] as const;
export type Aggregate = (typeof AGGREGATES)[number];

export interface ExportOptions {
  sensorIds: string[];
  start: number;
  end: number;
  format: DialogFormat;
  layout: Layout;
  /** Resampled: an interval (`1m`, `15m`, `1h`, `1d`, or ms) and aggregates; raw when null. */
  interval: string | null;
  aggregates: Aggregate[];
  includeBad: boolean;
  /** IANA zone: a local-time column, and local days for day buckets. */
  timeZone: string | null;
  /** The browser's decimal mark, for "CSV for Excel". */
  decimal: '.' | ',';
}

/** The decimal mark of a locale (`,` in de-DE, `.` in en-US). */
export function localeDecimal(locale?: string): '.' | ',' {
  const part = new Intl.NumberFormat(locale).formatToParts(1.5).find((p) => p.type === 'decimal');
  return part?.value === ',' ? ',' : '.';
}

/** The query parameters of an export (and of its summary), in URL order. */
export function exportParams(o: ExportOptions): [string, string][] {
  const params: [string, string][] = o.sensorIds.map((id) => ['sensor_id', id]);
  params.push(['start_ts', String(o.start)], ['end_ts', String(o.end)]);
  if (o.sensorIds.length > 1) params.push(['layout', o.layout]);
  if (o.interval !== null && o.aggregates.length > 0) {
    params.push(['interval', o.interval], ['aggregate', o.aggregates.join(',')]);
    if (o.includeBad) params.push(['include_bad', 'true']);
  }
  if (o.timeZone) params.push(['time_zone', o.timeZone]);
  switch (o.format) {
    case 'excel-csv':
      params.push(['preset', 'excel']);
      if (o.decimal === ',') params.push(['delimiter', ';'], ['decimal', ',']);
      break;
    case 'csv':
      break;
    default:
      params.push(['format', o.format]);
  }
  return params;
}

function query(params: [string, string][]): string {
  return params.map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`).join('&');
}

/** `/api/v1/export?...` (relative to the dashboard's origin). */
export function exportPath(o: ExportOptions): string {
  return `${apiUrl('/api/v1/export')}?${query(exportParams(o))}`;
}

/** `/api/v1/export/summary?...`: the same parameters, counted. */
export function summaryPath(o: ExportOptions): string {
  return `${apiUrl('/api/v1/export/summary')}?${query(exportParams(o))}`;
}

/** A pandas one-liner that reads the export at `url`. */
export function pythonSnippet(o: ExportOptions, url: string): string {
  const u = JSON.stringify(url);
  switch (o.format) {
    case 'parquet':
      return `import pandas as pd; df = pd.read_parquet(${u})`;
    case 'arrow':
      return `import pandas as pd, pyarrow as pa, urllib.request; df = pa.ipc.open_stream(urllib.request.urlopen(${u}).read()).read_pandas()`;
    case 'jsonl':
      return `import pandas as pd; df = pd.read_json(${u}, lines=True)`;
    case 'xlsx':
      return `import pandas as pd; df = pd.concat(s for n, s in pd.read_excel(${u}, sheet_name=None).items() if n != "Info")`;
    case 'excel-csv':
      return o.decimal === ','
        ? `import pandas as pd; df = pd.read_csv(${u}, sep=";", decimal=",", encoding="utf-8-sig")`
        : `import pandas as pd; df = pd.read_csv(${u}, encoding="utf-8-sig")`;
    case 'csv':
      return `import pandas as pd; df = pd.read_csv(${u})`;
  }
}
