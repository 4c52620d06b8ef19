import { useCallback, useEffect, useRef, useState } from 'react';
import { isAbort } from '@/lib/api-client';
import { checkExport, exportUrl, triggerDownload, type ExportFormat, type ExportQuery } from '../api/export-data';
import { exceedsExcel } from '../utils/series';

export type ExportState =
  | { kind: 'idle' }
  | { kind: 'checking'; format: ExportFormat }
  | { kind: 'too-many-rows'; rows: number }
  | { kind: 'started'; format: ExportFormat }
  | { kind: 'error'; message: string };

/**
 * The export flow behind "Export CSV": warn past Excel's row limit, check that the
 * download will succeed, then hand the URL to the browser's downloader.
 */
export function useExport(sensorId: string, start: number, end: number, rawCount: number | undefined, more: readonly string[] = []) {
  const moreKey = more.join('\u0000');
  const key = JSON.stringify([sensorId, start, end, moreKey]);
  const [tagged, setTagged] = useState<{ key: string; state: ExportState }>({ key, state: { kind: 'idle' } });
  const ctlRef = useRef<AbortController | null>(null);
  const setState = useCallback((state: ExportState) => setTagged({ key, state }), [key]);
  // A new sensor or range makes an old message or warning stale.
  const state: ExportState = tagged.key === key ? tagged.state : { kind: 'idle' };

  useEffect(() => () => ctlRef.current?.abort(), [key]);

  const run = useCallback(
    async (format: ExportFormat) => {
      ctlRef.current?.abort();
      const ctl = new AbortController();
      ctlRef.current = ctl;
      const q: ExportQuery = { sensorId, more: moreKey ? moreKey.split('\u0000') : [], start, end, format };
      setState({ kind: 'checking', format });
      try {
        const problem = await checkExport(q, ctl.signal);
        if (ctl.signal.aborted) return;
        if (problem) {
          setState({ kind: 'error', message: problem });
          return;
        }
        triggerDownload(exportUrl(q));
        setState({ kind: 'started', format });
      } catch (e) {
        if (!isAbort(e)) setState({ kind: 'error', message: e instanceof Error ? e.message : String(e) });
      }
    },
    [sensorId, moreKey, start, end, setState],
  );

  /** "Export CSV": past Excel's limit, first say so and offer the workbook. */
  const exportCsv = useCallback(
    (opts: { force?: boolean } = {}) => {
      if (!opts.force && rawCount !== undefined && exceedsExcel(rawCount)) {
        setState({ kind: 'too-many-rows', rows: rawCount });
        return;
      }
      void run('csv');
    },
    [rawCount, run, setState],
  );
  const exportExcel = useCallback(() => void run('xlsx'), [run]);
  const dismiss = useCallback(() => setState({ kind: 'idle' }), [setState]);

  return { state, exportCsv, exportExcel, dismiss };
}
