import { useCallback, useEffect, useMemo, useState } from 'react';
import { formatCount } from '@/utils/format';
import { useSensors } from '../api/get-sensors';
import { useSeries, useSeriesMany } from '../api/get-series';
import { useLive } from '../hooks/use-live';
import { useUrlState } from '../hooks/use-url-state';
import type { SensorInfo } from '../types';
import { appendLive, fromResponse, maxPointsFor, type Points } from '../utils/series';
import { buildSearch } from '../utils/url-state';
import { isRelative, relativeFrom, resolveRange, zoomOut, type AbsoluteRange, type RawRange } from '../utils/time-range';
import { describeSpan, SensorPicker } from './SensorPicker';
import { TimeRangePicker } from './TimeRangePicker';
import { EXTRA_COLORS, TrendChart } from './TrendChart';
import type { ExtraSeries } from '../utils/multi-series';

const DEFAULT_RANGE: RawRange = { from: 'now-6h', to: 'now' };

/** The sensor's whole span as a range (end exclusive), or null when it has no points. */
export function fullSpan(s: SensorInfo): RawRange | null {
  if (s.count === 0 || s.first_timestamp_ms === null || s.last_timestamp_ms === null) return null;
  return { from: String(s.first_timestamp_ms), to: String(s.last_timestamp_ms + 1) };
}

export interface DashboardProps {
  /** Why the signed-in token may not export these sensors, or null when it may (no check without it). */
  exportRefusal?: (sensorIds: string[]) => string | null;
}

/**
 * The dashboard page: sensor picker, time range and live toggle, and the trend
 * chart. All of its state is the URL's (`?sensor=&from=&to=&live=1`).
 */
export function Dashboard({ exportRefusal }: DashboardProps = {}) {
  const { state: url, at, navigate, refresh } = useUrlState();
  const sensors = useSensors();
  const list = sensors.data?.sensors;
  const info = useMemo(() => list?.find((s) => s.sensor_id === url.sensor), [list, url.sensor]);
  // Until the chart has measured its plot, a guess from the window's width.
  const [plotPixels, setPlotPixels] = useState(() => (window.innerWidth - 160) * (window.devicePixelRatio || 1));
  const maxPoints = maxPointsFor(plotPixels);
  const onPlotPixels = useCallback((px: number) => setPlotPixels((old) => (Math.abs(px - old) > old * 0.01 ? px : old)), []);
  const [chartHeight] = useState(() => Math.max(260, Math.min(560, window.innerHeight - 340)));

  // `/?sensor=ID` alone: show the sensor's whole span, and put it in the URL.
  const needsDefault = url.sensor !== null && (url.from === null || url.to === null);
  useEffect(() => {
    if (!needsDefault || (!list && sensors.status !== 'error')) return;
    navigate((info && fullSpan(info)) ?? DEFAULT_RANGE, { replace: true });
  }, [needsDefault, list, info, navigate, sensors.status]);

  const raw: RawRange | null = url.from !== null && url.to !== null ? { from: url.from, to: url.to } : needsDefault ? null : DEFAULT_RANGE;
  const resolved = raw ? resolveRange(raw, at) : null;
  const range: AbsoluteRange | null = resolved?.ok ? resolved.range : null;
  const span = range ? range.end - range.start : 0;

  const series = useSeries(url.sensor !== null && range ? { sensorId: url.sensor, start: range.start, end: range.end, maxPoints } : null);
  const more = useMemo(() => (url.sensor === null ? [] : (url.more ?? [])), [url.sensor, url.more]);
  const moreSeries = useSeriesMany(more, range ? { start: range.start, end: range.end, maxPoints } : null);
  const extras = useMemo<ExtraSeries[] | undefined>(() => {
    const data = moreSeries.data;
    if (!data || data.length !== more.length || data.some((d, i) => d.sensor_id !== more[i])) return undefined;
    return data.map((d) => ({ sensorId: d.sensor_id, points: fromResponse(d) }));
  }, [moreSeries.data, more]);
  const live = useLive(url.sensor, url.live && range !== null, span, series.reload);

  useEffect(() => {
    document.title = url.sensor ? `${url.sensor} · Sensor trends` : 'Sensor trends';
  }, [url.sensor]);

  // In live mode the window slides with the clock and pushed points are appended.
  const chartRange: AbsoluteRange | null = range && url.live ? { start: live.now - span, end: live.now + 1 } : range;
  // While another sensor loads, its predecessor's points must not be drawn under its name.
  const current = series.data && series.data.sensor_id === url.sensor ? series.data : undefined;
  const base = useMemo<Points | undefined>(() => (current ? fromResponse(current) : undefined), [current]);
  const merged = useMemo(() => {
    if (!base || !url.live || !chartRange) return base ? { points: base, added: 0 } : undefined;
    return appendLive(base, live.buffer, chartRange.start);
    // chartRange.start follows live.now
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [base, url.live, live.buffer, chartRange?.start]);

  const setRange = (r: RawRange) => navigate({ ...r, live: url.live && r.to === 'now' });
  const setAbsolute = (r: AbsoluteRange) => navigate({ from: String(r.start), to: String(r.end), live: false });
  const toggleLive = () => {
    if (!range) return;
    if (url.live) setAbsolute({ start: chartRange!.start, end: chartRange!.end });
    else navigate({ from: raw && isRelative(raw.from) && raw.to === 'now' ? raw.from : relativeFrom(span), to: 'now', live: true });
  };

  return (
    <main className="dashboard">
      <div className="toolbar" role="group" aria-label="Sensor and time range">
        <SensorPicker
          sensors={list}
          loading={sensors.status === 'loading'}
          error={sensors.error}
          value={url.sensor}
          onChange={(id) => navigate({ sensor: id, more: more.filter((m) => m !== id) })}
        />
        {url.sensor !== null && (
          <SensorPicker
            label="Compare with"
            sensors={list?.filter((s) => s.sensor_id !== url.sensor && !more.includes(s.sensor_id))}
            loading={sensors.status === 'loading'}
            value={null}
            onChange={(id) => navigate({ more: [...more, id] })}
          />
        )}
        {more.length > 0 && (
          <ul className="sensor-chips" aria-label="Sensors drawn beside it">
            {more.map((id, i) => (
              <li key={id} className="chip">
                <span className="chip-swatch" style={{ background: EXTRA_COLORS[i % EXTRA_COLORS.length] }} aria-hidden="true" />
                {id}
                <button type="button" aria-label={`Remove ${id}`} onClick={() => navigate({ more: more.filter((m) => m !== id) })}>
                  ×
                </button>
              </li>
            ))}
          </ul>
        )}
        {raw && <TimeRangePicker value={raw} onChange={setRange} now={at} />}
        <div className="toolbar-buttons">
          <button type="button" aria-pressed={url.live} onClick={toggleLive} disabled={!range || url.sensor === null} className={url.live ? 'live-on' : undefined}>
            {url.live && <span aria-hidden="true">● </span>}
            Live
          </button>
          {raw && url.sensor !== null && isRelative(raw.to) && !url.live && (
            <button type="button" onClick={refresh}>
              Refresh
            </button>
          )}
        </div>
      </div>

      {resolved && !resolved.ok && (
        <p className="notice notice-error" role="alert">
          {resolved.message}
        </p>
      )}

      {url.sensor === null ? (
        <div className="state intro" role="status">
          {sensors.status === 'success' && list?.length === 0 ? (
            <p>No sensors yet. Load data with <code>engine import --sensor ID FILE</code>, then reload.</p>
          ) : sensors.status === 'error' ? (
            <p className="error-text">The sensor list could not be loaded: {sensors.error}</p>
          ) : (
            <>
              <p>Choose a sensor above to see its trend{list && list.length > 0 ? ', or one of these:' : '.'}</p>
              {list && list.length > 0 && (
                <ul className="sensor-links">
                  {list.slice(0, 12).map((s) => (
                    <li key={s.sensor_id}>
                      <a
                        href={buildSearch({ sensor: s.sensor_id, more: [], from: null, to: null, live: false }) || '/'}
                        onClick={(e) => {
                          if (e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
                          e.preventDefault();
                          navigate({ sensor: s.sensor_id, more: [] });
                        }}
                      >
                        {s.sensor_id}
                      </a>{' '}
                      <span className="opt-meta">{describeSpan(s)}</span>
                    </li>
                  ))}
                  {list.length > 12 && <li className="opt-meta">and {formatCount(list.length - 12)} more in the picker</li>}
                </ul>
              )}
            </>
          )}
        </div>
      ) : chartRange ? (
        <TrendChart
          sensorId={url.sensor}
          range={chartRange}
          status={series.status === 'error' ? 'error' : series.status === 'success' ? 'ready' : 'loading'}
          error={series.error}
          points={merged?.points}
          rawCount={current ? current.count + (merged?.added ?? 0) : undefined}
          downsampled={current?.downsampled}
          live={live.status}
          updating={series.status === 'loading' && !!current}
          height={chartHeight}
          onPlotPixels={onPlotPixels}
          onZoom={setAbsolute}
          onZoomOut={() => setAbsolute(zoomOut(chartRange))}
          onZoomIn={() => {
            const q = Math.max(1, Math.floor((chartRange.end - chartRange.start) / 4));
            setAbsolute({ start: chartRange.start + q, end: chartRange.end - q });
          }}
          onRetry={/not found/i.test(series.error ?? '') ? undefined : series.reload}
          extras={extras}
          moreSensors={more}
          exportBlocked={exportRefusal?.([url.sensor, ...more]) ?? null}
          emptyAction={info && fullSpan(info) ? { label: 'Show all data of this sensor', run: () => navigate({ ...fullSpan(info)!, live: false }) } : undefined}
        />
      ) : needsDefault ? (
        <div className="state" role="status">
          Loading sensor…
        </div>
      ) : null}
    </main>
  );
}
