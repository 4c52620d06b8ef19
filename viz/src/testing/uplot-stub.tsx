import type { UPlotChartProps } from '@/components/UPlotChart';

/** jsdom has no canvas: component tests swap the uPlot wrapper for this. */
export function UPlotChartStub({ data, label }: UPlotChartProps) {
  return <div role="img" aria-label={label} data-points={data[0].length} />;
}
