import { render } from '@testing-library/react';
import { describe, expect, it, vi } from 'vitest';

const instances: { opts: { width: number; height: number }; setData: ReturnType<typeof vi.fn>; destroy: ReturnType<typeof vi.fn>; setSize: ReturnType<typeof vi.fn> }[] = [];
vi.mock('uplot', () => ({
  default: vi.fn(function (this: object, opts: { width: number; height: number }) {
    const inst = { opts, setData: vi.fn(), destroy: vi.fn(), setSize: vi.fn(), width: opts.width, height: opts.height };
    instances.push(inst);
    return inst;
  }),
}));
vi.mock('uplot/dist/uPlot.min.css', () => ({}));

const { UPlotChart } = await import('./UPlotChart');

describe('UPlotChart', () => {
  it('creates uPlot once it has a width, sets data on change, destroys on unmount', () => {
    Object.defineProperty(HTMLElement.prototype, 'clientWidth', { configurable: true, get: () => 800 });
    const options = { series: [{}, {}] };
    const { rerender, unmount, getByRole } = render(<UPlotChart options={options} data={[[1], [2]]} height={300} label="Trend" />);
    expect(getByRole('img', { name: 'Trend' })).toBeTruthy();
    expect(instances).toHaveLength(1);
    expect(instances[0]!.opts).toMatchObject({ width: 800, height: 300 });
    rerender(<UPlotChart options={options} data={[[1, 2], [2, 3]]} height={300} label="Trend" />);
    expect(instances).toHaveLength(1);
    expect(instances[0]!.setData).toHaveBeenLastCalledWith([[1, 2], [2, 3]]);
    unmount();
    expect(instances[0]!.destroy).toHaveBeenCalled();
  });
});
