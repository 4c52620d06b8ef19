import { useLayoutEffect, useMemo, useRef, useState } from 'react';
import type uPlot from 'uplot';
import { UPlotChart } from '@/components/UPlotChart';
import { formatCount } from '@/utils/format';
import { useExport } from '../hooks/use-export';
import type { LiveStatus } from '../hooks/use-live';
import { alignColumns, layoutExtras, type ExtraSeries } from '../utils/multi-series';
import { EXCEL_MAX_ROWS, toChartSeries, type Points, type QualitySpan } from '../utils/series';
import { ExportDialog } from './ExportDialog';
import { formatTick, formatTime, snapRange, zoneLabel, type AbsoluteRange } from '../utils/time-range';

export interface TrendChartProps {
  sensorId: string;
  /** The range on screen, [start, end): the x axis and what "Export CSV" downloads. */
  range: AbsoluteRange;
  status: 'loading' | 'error' | 'ready';
  error?: string;
  points?: Points;
  /** Raw points in the range (before downsampling). */
  rawCount?: number;
  downsampled?: boolean;
  live?: LiveStatus;
  /** Set when a refetch is under way while older points are still drawn. */
  updating?: boolean;
  height?: number;
  onZoom: (r: AbsoluteRange) => void;
  /** The plot's width in device pixels, when uPlot has laid it out (for M4's bucket count). */
  onPlotPixels?: (px: number) => void;
  onZoomOut: () => void;
  onZoomIn: () => void;
  onRetry?: () => void;
  /** Shown in the empty state, e.g. to jump to the sensor's whole span. */
  emptyAction?: { label: string; run: () => void };
  /** Sensors drawn beside the main one (each a line of its own). */
  extras?: ExtraSeries[];
  /** Their ids, also while their points load: exported with the main sensor. */
  moreSensors?: string[];
  /** Why the signed-in token may not export these sensors: the export buttons are disabled with it shown. */
  exportBlocked?: string | null;
}

/** Line colours of the sensors drawn beside the main one. */
export const EXTRA_COLORS = ['#059669', '#7c3aed', '#db2777', '#0891b2', '#65a30d', '#ea580c', '#4f46e5', '#be123c'];

const COLORS = { line: '#2563eb', uncertain: '#d97706', bad: '#dc2626', axis: '#475569', grid: '#e2e8f0' };
const STRIPE = { uncertain: 'rgba(217, 119, 6, 0.14)', bad: 'rgba(220, 38, 38, 0.16)' };

function drawQualityStripes(u: uPlot, spans: QualitySpan[]) {
  const { ctx } = u;
  const { top, height, left, width } = u.bbox;
  ctx.save();
  ctx.beginPath();
  ctx.rect(left, top, width, height);
  ctx.clip();
  const minW = Math.max(2, devicePixelRatio * 2);
  for (const s of spans) {
    const x0 = u.valToPos(s.start, 'x', true);
    const x1 = u.valToPos(s.end, 'x', true);
    const w = Math.max(minW, x1 - x0);
    ctx.fillStyle = STRIPE[s.kind];
    ctx.fillRect(x0 - (x1 - x0 < minW ? w / 2 : 0), top, w, height);
  }
  ctx.restore();
}

const capitalize = (s: string) => s.charAt(0).toUpperCase() + s.slice(1);

/**
 * The trend of one sensor over the range on screen, with its header: raw point
 * count, quality legend, zoom buttons and "Export CSV". Points come in through
 * props; the uPlot instance lives in UPlotChart. Drag across the plot to zoom in.
 */
export function TrendChart(props: TrendChartProps) {
  const { sensorId, range, status, error, points, rawCount, downsampled, live = 'off', updating, height = 380 } = props;
  const moreSensors = props.moreSensors ?? [];
  const { state: exp, exportCsv, exportExcel, dismiss } = useExport(sensorId, range.start, range.end, rawCount, moreSensors);
  const [dialogOpen, setDialogOpen] = useState(false);

  const series = useMemo(() => (points ? toChartSeries(points) : null), [points]);
  const extras = useMemo(() => props.extras ?? [], [props.extras]);
  const layout = useMemo(() => layoutExtras(series?.data[1] ?? [], extras), [series, extras]);
  // The options change only with the chart's shape: which scales the extra lines use.
  const shape = JSON.stringify([extras.map((e) => e.sensorId), layout]);

  // Callbacks and the x range are read through refs so the uPlot options stay stable.
  const live$ = useRef({ range, spans: series?.spans ?? [], onZoom: props.onZoom, onPlotPixels: props.onPlotPixels });
  useLayoutEffect(() => {
    live$.current = { range, spans: series?.spans ?? [], onZoom: props.onZoom, onPlotPixels: props.onPlotPixels };
  });

  const options = useMemo<Omit<uPlot.Options, 'width' | 'height'>>(
    () => {
      const [extraIds, extraLayout] = JSON.parse(shape) as [string[], { scale: string; ownAxis: boolean }[]];
      const color = (i: number) => EXTRA_COLORS[i % EXTRA_COLORS.length]!;
      const extraSeries: uPlot.Series[] = extraIds.map((id, i) => ({
        label: id,
        scale: extraLayout[i]!.scale,
        value: (_u, v) => (v == null ? '–' : String(v)),
        stroke: color(i),
        width: 1.5,
        points: { show: false },
        spanGaps: true,
      }));
      const extraAxes: uPlot.Axis[] = extraIds.flatMap((_id, i) =>
        extraLayout[i]!.ownAxis ? [{ scale: extraLayout[i]!.scale, side: 1, stroke: color(i), grid: { show: false }, ticks: { stroke: COLORS.grid }, size: 64 }] : [],
      );
      return {
      ms: 1,
      // Room on the right for the last tick's date label.
      padding: [12, 36, 0, 0],
      scales: { x: { time: true, range: () => [live$.current.range.start, live$.current.range.end] } },
      axes: [
        {
          stroke: COLORS.axis,
          grid: { stroke: COLORS.grid, width: 1 },
          ticks: { stroke: COLORS.grid },
          size: 52,
          values: (_u, splits, _axis, _space, incr) => splits.map((v, i) => formatTick(v, incr, i > 0 ? splits[i - 1]! : null)),
        },
        { stroke: COLORS.axis, grid: { stroke: COLORS.grid, width: 1 }, ticks: { stroke: COLORS.grid }, size: 64 },
        ...extraAxes,
      ],
      series: [
        { label: 'Time', value: (_u, v) => (v == null ? '–' : formatTime(v)) },
        // With other sensors on the x column, the main line's own points are apart: join them.
        { label: extraIds.length > 0 ? sensorId : 'Value', value: (_u, v) => (v == null ? '–' : String(v)), stroke: COLORS.line, width: 1.5, points: { show: false }, spanGaps: extraIds.length > 0 },
        { label: 'Uncertain', value: (_u, v) => (v == null ? '–' : String(v)), stroke: COLORS.uncertain, width: 0, paths: () => null, points: { show: true, size: 7, stroke: COLORS.uncertain, fill: COLORS.uncertain } },
        { label: 'Bad', value: (_u, v) => (v == null ? '–' : String(v)), stroke: COLORS.bad, width: 0, paths: () => null, points: { show: true, size: 8, stroke: COLORS.bad, fill: COLORS.bad } },
        ...extraSeries,
      ],
      cursor: { drag: { x: true, y: false, setScale: false } },
      hooks: {
        drawClear: [(u) => drawQualityStripes(u, live$.current.spans)],
        ready: [(u) => live$.current.onPlotPixels?.(u.bbox.width)],
        setSize: [(u) => live$.current.onPlotPixels?.(u.bbox.width)],
        draw: [
          (u) => {
            const n = u.data[0].length;
            u.root.dataset.points = String(n);
            if (n > 0 && performance.getEntriesByName('first-chart').length === 0) performance.mark('first-chart');
          },
        ],
        setSelect: [
          (u) => {
            const { left, width } = u.select;
            if (width < 3) return;
            const from = u.posToVal(left, 'x');
            const to = u.posToVal(left + width, 'x');
            u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
            if (to > from) live$.current.onZoom(snapRange(from, to, (to - from) / width));
          },
        ],
      },
    };
    },
    // sensorId only names the main line; a new sensor brings new data anyway.
    // eslint-disable-next-line react-hooks/exhaustive-deps
    [shape],
  );

  // A new array (new points, or a sliding live window) makes the wrapper call setData.
  const data = useMemo<uPlot.AlignedData>(
    () => {
      if (!series) return [[], [], [], [], ...extras.map(() => [])];
      return extras.length > 0 ? alignColumns(series.data, extras) : [...series.data];
    },
    // eslint-disable-next-line react-hooks/exhaustive-deps
    [series, extras, range.start, range.end],
  );

  const hasPoints = !!series && series.data[0].length > 0;
  const exportBusy = exp.kind === 'checking';
  const blocked = props.exportBlocked ?? null;

  return (
    <section className="trend" aria-labelledby="trend-title">
      <header className="trend-header">
        <div className="trend-title">
          <h2 id="trend-title">{sensorId}</h2>
          <p className="trend-meta" aria-live="polite">
            {status === 'error' && rawCount === undefined ? null : rawCount !== undefined ? (
              <>
                <span data-testid="raw-count">{formatCount(rawCount)}</span> raw points in range
                {series && (downsampled ? ` · ${formatCount(series.data[0].length)} drawn (min/max kept per pixel)` : ' · all drawn')}
              </>
            ) : (
              'Counting points…'
            )}
            {updating && ' · updating…'}
            {live !== 'off' && <span className={`live-badge live-${live}`}> · live: {live === 'open' ? 'connected' : live}</span>}
          </p>
          {series && (series.uncertainCount > 0 || series.badCount > 0) && (
            <p className="legend">
              <span className="swatch swatch-uncertain" aria-hidden="true" /> {formatCount(series.uncertainCount)} uncertain
              <span className="swatch swatch-bad" aria-hidden="true" /> {formatCount(series.badCount)} bad
              {downsampled && ' (of the points drawn)'}
            </p>
          )}
        </div>
        <div className="trend-actions">
          <button type="button" onClick={props.onZoomIn} title="Half the range, same centre">Zoom in</button>
          <button type="button" onClick={props.onZoomOut} title="Twice the range, same centre">Zoom out</button>
          <button
            type="button"
            className="primary"
            onClick={() => exportCsv()}
            disabled={exportBusy || blocked !== null}
            aria-busy={exportBusy}
            aria-describedby={blocked ? 'export-blocked' : 'export-what'}
          >
            Export CSV
          </button>
          <button type="button" onClick={() => setDialogOpen(true)} aria-haspopup="dialog" disabled={blocked !== null} aria-describedby={blocked ? 'export-blocked' : undefined}>
            Export…
          </button>
        </div>
      </header>
      <p id="export-what" className="visually-hidden">
        Downloads the raw points from {formatTime(range.start)} to {formatTime(range.end)} ({zoneLabel(range.start)}), end excluded.
      </p>

      {blocked && (
        <p id="export-blocked" className="notice" data-testid="export-blocked">
          Export unavailable. {blocked}
        </p>
      )}
      {exp.kind === 'error' && (
        <div className="notice notice-error" role="alert">
          <span>Export failed: {exp.message}</span>
          <button type="button" onClick={dismiss}>Dismiss</button>
        </div>
      )}
      {exp.kind === 'too-many-rows' && (
        <div className="notice notice-warn" role="alert">
          <span>
            This range has {formatCount(exp.rows)} rows: more than the {formatCount(EXCEL_MAX_ROWS)} rows an Excel sheet holds
            (header included), so Excel would not open the whole CSV.
          </span>
          <span className="notice-actions">
            <button type="button" onClick={exportExcel}>Export Excel</button>
            <button type="button" onClick={() => exportCsv({ force: true })}>Download CSV anyway</button>
            <button type="button" onClick={dismiss}>Cancel</button>
          </span>
        </div>
      )}
      {exp.kind === 'checking' && (
        <p role="status" className="notice">
          Checking the {exp.format === 'xlsx' ? 'Excel' : 'CSV'} export…
        </p>
      )}
      {exp.kind === 'started' && (
        <p role="status" className="notice notice-ok">
          Download started ({exp.format === 'xlsx' ? 'Excel' : 'CSV'}): {formatTime(range.start)} → {formatTime(range.end)}.
        </p>
      )}

      <div className="trend-body" style={{ minHeight: height }}>
        {status === 'error' && !hasPoints ? (
          <div className="state state-error" role="alert">
            <p>{capitalize(error ?? 'Loading the points failed.')}</p>
            {props.onRetry && <button type="button" onClick={props.onRetry}>Retry</button>}
          </div>
        ) : status === 'loading' && !series ? (
          <div className="state" role="status">Loading points…</div>
        ) : !hasPoints && live === 'off' ? (
          <div className="state" role="status">
            <p>No data in this range.</p>
            {props.emptyAction && <button type="button" onClick={props.emptyAction.run}>{props.emptyAction.label}</button>}
          </div>
        ) : (
          <UPlotChart
            options={options}
            data={data}
            height={height}
            label={`Trend of ${sensorId} from ${formatTime(range.start)} to ${formatTime(range.end)}. Drag across it to zoom in.`}
          />
        )}
      </div>
      {dialogOpen && !blocked && <ExportDialog sensorIds={[sensorId, ...moreSensors]} start={range.start} end={range.end} onClose={() => setDialogOpen(false)} />}
      <p className="axis-note">Times in {zoneLabel(range.start)}. Drag across the chart to zoom in; Back or “Zoom out” to return.</p>
    </section>
  );
}
