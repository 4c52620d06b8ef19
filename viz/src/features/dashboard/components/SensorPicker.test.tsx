import { render, screen } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { describe, expect, it, vi } from 'vitest';
import type { SensorInfo } from '../types';
import { SensorPicker } from './SensorPicker';

const mk = (id: string, count = 1000): SensorInfo => ({ sensor_id: id, count, first_timestamp_ms: Date.UTC(2026, 0, 1), last_timestamp_ms: Date.UTC(2026, 0, 1, 0, 59, 59) });
const sensors = [mk('Kessel Ü1/Temperatur'), ...Array.from({ length: 3000 }, (_, i) => mk(`line-${i}/pressure`, i))];

describe('SensorPicker', () => {
  it('is a combobox labelled "Sensor" that shows the chosen sensor with count and span', () => {
    render(<SensorPicker sensors={sensors} loading={false} value="Kessel Ü1/Temperatur" onChange={() => {}} />);
    const box = screen.getByRole('combobox', { name: 'Sensor' });
    expect(box).toHaveProperty('value', 'Kessel Ü1/Temperatur');
    expect(screen.getByText('1,000 points · 2026-01-01 01:00:00 → 2026-01-01 01:59:59')).toBeTruthy();
  });

  it('searches thousands of sensors but renders only a page of them', async () => {
    const user = userEvent.setup();
    const onChange = vi.fn();
    render(<SensorPicker sensors={sensors} loading={false} value={null} onChange={onChange} />);
    await user.click(screen.getByRole('combobox', { name: 'Sensor' }));
    expect(screen.getAllByRole('option').length).toBeLessThanOrEqual(60);
    expect(screen.getByText(/more: type to narrow down/)).toBeTruthy();
    await user.type(screen.getByRole('combobox', { name: 'Sensor' }), 'line-2999');
    const opts = screen.getAllByRole('option');
    expect(opts).toHaveLength(1);
    await user.click(opts[0]!);
    expect(onChange).toHaveBeenCalledWith('line-2999/pressure');
  });

  it('works from the keyboard', async () => {
    const user = userEvent.setup();
    const onChange = vi.fn();
    render(<SensorPicker sensors={sensors} loading={false} value={null} onChange={onChange} />);
    await user.tab();
    await user.keyboard('kessel');
    await user.keyboard('{ArrowDown}{ArrowUp}{Enter}');
    expect(onChange).toHaveBeenCalledWith('Kessel Ü1/Temperatur');
  });

  it('says when nothing matches and when the list failed', async () => {
    const user = userEvent.setup();
    const { rerender } = render(<SensorPicker sensors={sensors} loading={false} value={null} onChange={() => {}} />);
    await user.type(screen.getByRole('combobox', { name: 'Sensor' }), 'zzz');
    expect(screen.getByText('No sensor matches “zzz”.')).toBeTruthy();
    rerender(<SensorPicker sensors={undefined} loading={false} error="Cannot reach the engine." value={null} onChange={() => {}} />);
    expect(screen.getByText(/Sensors could not be loaded: Cannot reach the engine/)).toBeTruthy();
  });
});
