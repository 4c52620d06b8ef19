import { useEffect, useLayoutEffect, useRef } from 'react';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import { useElementWidth } from './use-element-width';

export interface UPlotChartProps {
  /** Options without size; a new object recreates the chart, so memoise it. */
  options: Omit<uPlot.Options, 'width' | 'height'>;
  data: uPlot.AlignedData;
  height: number;
  /** Accessible description of what the canvas shows. */
  label: string;
}

/**
 * Thin React wrapper around uPlot. It owns the instance in a ref: created on mount
 * (and when `options` change), destroyed on unmount, `setData` on new data and
 * `setSize` on resize. It never fetches: data comes in through props.
 */
export function UPlotChart({ options, data, height, label }: UPlotChartProps) {
  const boxRef = useRef<HTMLDivElement>(null);
  const plotRef = useRef<uPlot | null>(null);
  const dataRef = useRef(data);
  useLayoutEffect(() => {
    dataRef.current = data;
  });
  const width = useElementWidth(boxRef);
  const hasWidth = width > 0;

  useEffect(() => {
    const box = boxRef.current;
    if (!box || !hasWidth) return;
    const plot = new uPlot({ ...options, width: box.clientWidth, height } as uPlot.Options, dataRef.current, box);
    plotRef.current = plot;
    return () => {
      plot.destroy();
      plotRef.current = null;
    };
    // Size changes go through setSize below, not a new instance.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [options, hasWidth]);

  useEffect(() => {
    plotRef.current?.setData(data);
  }, [data]);

  useEffect(() => {
    const plot = plotRef.current;
    if (plot && width > 0 && (plot.width !== width || plot.height !== height)) plot.setSize({ width, height });
  }, [width, height]);

  return <div ref={boxRef} className="uplot-box" role="img" aria-label={label} style={{ minHeight: height }} />;
}
