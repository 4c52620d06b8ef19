import { useEffect, useId, useMemo, useRef, useState } from 'react';
import { formatCount } from '@/utils/format';
import { useExportSummary } from '../api/export-summary';
import { triggerDownload } from '../api/export-data';
import { AGGREGATES, exportPath, localeDecimal, pythonSnippet, type Aggregate, type DialogFormat, type ExportOptions, type Layout } from '../utils/export-request';
import { EXCEL_MAX_ROWS } from '../utils/series';
import { formatTime } from '../utils/time-range';

export interface ExportDialogProps {
  sensorIds: string[];
  start: number;
  end: number;
  onClose: () => void;
}

const FORMATS: { value: DialogFormat; label: string }[] = [
  { value: 'csv', label: 'CSV' },
  { value: 'excel-csv', label: 'CSV for Excel' },
  { value: 'xlsx', label: 'Excel workbook (.xlsx)' },
  { value: 'parquet', label: 'Parquet' },
  { value: 'arrow', label: 'Arrow IPC stream' },
  { value: 'jsonl', label: 'JSON Lines' },
];

const INTERVALS = ['1m', '5m', '15m', '1h', '1d'];

async function copyText(text: string): Promise<boolean> {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // No clipboard permission (plain http, some browsers): the old way.
    const area = document.createElement('textarea');
    area.value = text;
    document.body.appendChild(area);
    area.select();
    const ok = document.execCommand?.('copy') ?? false;
    area.remove();
    return ok;
  }
}

/**
 * "Export...": format, layout, raw or resampled, time zone; shows the row count
 * (from `GET /api/v1/export/summary`) and the URL, with "Copy link" and
 * "Copy as Python". Downloads only what the summary accepted.
 */
export function ExportDialog({ sensorIds, start, end, onClose }: ExportDialogProps) {
  const id = useId();
  const browserZone = useMemo(() => Intl.DateTimeFormat().resolvedOptions().timeZone, []);
  const [format, setFormat] = useState<DialogFormat>('csv');
  const [layout, setLayout] = useState<Layout>('long');
  const [resampled, setResampled] = useState(false);
  const [interval, setInterval] = useState('15m');
  const [aggregates, setAggregates] = useState<Aggregate[]>(['mean', 'min', 'max']);
  const [includeBad, setIncludeBad] = useState(false);
  const [zone, setZone] = useState<'browser' | 'none'>('none');
  const [copied, setCopied] = useState<string | null>(null);
  const first = useRef<HTMLSelectElement>(null);

  useEffect(() => first.current?.focus(), []);
  useEffect(() => {
    const onKey = (e: KeyboardEvent) => e.key === 'Escape' && onClose();
    window.addEventListener('keydown', onKey);
    return () => window.removeEventListener('keydown', onKey);
  }, [onClose]);

  const options: ExportOptions = {
    sensorIds,
    start,
    end,
    format,
    layout,
    interval: resampled ? interval : null,
    aggregates: resampled ? aggregates : [],
    includeBad,
    timeZone: zone === 'browser' ? browserZone : null,
    decimal: localeDecimal(),
  };
  const path = exportPath(options);
  const url = new URL(path, window.location.href).toString();
  const summary = useExportSummary(resampled && aggregates.length === 0 ? null : options);
  const rows = summary.status === 'success' ? summary.data.rows : undefined;
  const tooManyForExcel = rows !== undefined && (format === 'csv' || format === 'excel-csv') && rows + 1 > EXCEL_MAX_ROWS;
  const canDownload = summary.status === 'success';

  const toggleAggregate = (a: Aggregate) => setAggregates((list) => (list.includes(a) ? list.filter((x) => x !== a) : AGGREGATES.filter((x) => x === a || list.includes(x))));
  const copy = async (what: string, text: string) => setCopied((await copyText(text)) ? what : `${what} failed`);

  return (
    <div className="dialog-backdrop" onMouseDown={(e) => e.target === e.currentTarget && onClose()}>
      <div className="dialog" role="dialog" aria-modal="true" aria-labelledby={`${id}-title`}>
        <h2 id={`${id}-title`}>Export</h2>
        <p className="dialog-sub">
          {sensorIds.length === 1 ? sensorIds[0] : `${sensorIds.length} sensors`} · {formatTime(start)} → {formatTime(end)}
        </p>
        <div className="dialog-grid">
          <label htmlFor={`${id}-format`}>Format</label>
          <select id={`${id}-format`} ref={first} value={format} onChange={(e) => setFormat(e.target.value as DialogFormat)}>
            {FORMATS.map((f) => (
              <option key={f.value} value={f.value}>
                {f.value === 'excel-csv' ? `CSV for Excel (${options.decimal === ',' ? '; and ,' : ', and .'})` : f.label}
              </option>
            ))}
          </select>
          {sensorIds.length > 1 && (
            <>
              <span id={`${id}-layout`}>Layout</span>
              <div role="radiogroup" aria-labelledby={`${id}-layout`} className="dialog-row">
                <label><input type="radio" name={`${id}-layout`} checked={layout === 'long'} onChange={() => setLayout('long')} /> Long (a row per point)</label>
                <label><input type="radio" name={`${id}-layout`} checked={layout === 'wide'} onChange={() => setLayout('wide')} /> Wide (a column per sensor)</label>
              </div>
            </>
          )}
          <span id={`${id}-data`}>Data</span>
          <div role="radiogroup" aria-labelledby={`${id}-data`} className="dialog-row">
            <label><input type="radio" name={`${id}-data`} checked={!resampled} onChange={() => setResampled(false)} /> Raw points</label>
            <label><input type="radio" name={`${id}-data`} checked={resampled} onChange={() => setResampled(true)} /> Resampled</label>
          </div>
          {resampled && (
            <>
              <label htmlFor={`${id}-interval`}>Interval</label>
              <select id={`${id}-interval`} value={interval} onChange={(e) => setInterval(e.target.value)}>
                {INTERVALS.map((i) => <option key={i} value={i}>{i}</option>)}
              </select>
              <span>Aggregates</span>
              <div className="dialog-row dialog-wrap">
                {AGGREGATES.map((a) => (
                  <label key={a}><input type="checkbox" checked={aggregates.includes(a)} onChange={() => toggleAggregate(a)} /> {a}</label>
                ))}
                <label><input type="checkbox" checked={includeBad} onChange={(e) => setIncludeBad(e.target.checked)} /> include bad quality</label>
              </div>
            </>
          )}
          <label htmlFor={`${id}-zone`}>Time zone</label>
          <select id={`${id}-zone`} value={zone} onChange={(e) => setZone(e.target.value as 'browser' | 'none')}>
            <option value="none">UTC only (epoch milliseconds)</option>
            <option value="browser">{browserZone} (adds local time{resampled ? '; local days' : ''})</option>
          </select>
        </div>

        <p className="dialog-summary" role="status" aria-live="polite">
          {summary.status === 'error' ? (
            <span className="error-text">{summary.error}</span>
          ) : rows !== undefined ? (
            <>
              <span data-testid="export-rows">{formatCount(rows)}</span> {rows === 1 ? 'row' : 'rows'}
              {summary.data?.rows_exact === false && ' at most'} · {summary.data?.columns.length} columns
            </>
          ) : resampled && aggregates.length === 0 ? (
            'Choose at least one aggregate.'
          ) : (
            'Counting rows…'
          )}
        </p>
        {tooManyForExcel && (
          <p className="notice notice-warn">More rows than an Excel sheet holds ({formatCount(EXCEL_MAX_ROWS)}): choose the Excel workbook, which continues on further sheets.</p>
        )}
        <label htmlFor={`${id}-url`} className="dialog-label">Link</label>
        <input id={`${id}-url`} className="dialog-url" readOnly value={url} onFocus={(e) => e.currentTarget.select()} />
        <div className="dialog-actions">
          <button type="button" onClick={() => void copy('Link', url)}>Copy link</button>
          <button type="button" onClick={() => void copy('Python', pythonSnippet(options, url))}>Copy as Python</button>
          <span className="dialog-copied" role="status">{copied ? (copied.endsWith('failed') ? copied : `${copied} copied`) : ''}</span>
          <span className="dialog-spacer" />
          <button type="button" onClick={onClose}>Cancel</button>
          <button type="button" className="primary" disabled={!canDownload} onClick={() => { triggerDownload(path); onClose(); }}>
            Download
          </button>
        </div>
      </div>
    </div>
  );
}
