import { render, screen } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { describe, expect, it, vi } from 'vitest';
import { TimeRangePicker } from './TimeRangePicker';

const NOW = Date.UTC(2026, 0, 10, 12);

describe('TimeRangePicker', () => {
  it('names the range and the zone', () => {
    render(<TimeRangePicker value={{ from: 'now-6h', to: 'now' }} onChange={() => {}} now={NOW} />);
    const b = screen.getByRole('button', { name: 'Time range: Last 6 hours' });
    expect(b.textContent).toContain('Europe/Berlin (UTC+01:00)');
  });

  it('applies a quick range', async () => {
    const user = userEvent.setup();
    const onChange = vi.fn();
    render(<TimeRangePicker value={{ from: 'now-6h', to: 'now' }} onChange={onChange} now={NOW} />);
    await user.click(screen.getByRole('button', { name: /Time range/ }));
    expect(screen.getByRole('button', { name: 'Last 6 hours' }).getAttribute('aria-pressed')).toBe('true');
    await user.click(screen.getByRole('button', { name: 'Last 7 days' }));
    expect(onChange).toHaveBeenCalledWith({ from: 'now-7d', to: 'now' });
    expect(screen.queryByRole('dialog')).toBeNull();
  });

  it('takes absolute local times as epoch ms and keeps relative ones relative', async () => {
    const user = userEvent.setup();
    const onChange = vi.fn();
    render(<TimeRangePicker value={{ from: String(Date.UTC(2026, 0, 1)), to: String(Date.UTC(2026, 0, 2)) }} onChange={onChange} now={NOW} />);
    await user.click(screen.getByRole('button', { name: /Time range/ }));
    const from = screen.getByLabelText('From');
    expect(from).toHaveProperty('value', '2026-01-01 01:00:00');
    await user.clear(from);
    await user.type(from, '2026-01-01 02:00');
    await user.clear(screen.getByLabelText('To'));
    await user.type(screen.getByLabelText('To'), 'now - 1h');
    await user.click(screen.getByRole('button', { name: 'Apply time range' }));
    expect(onChange).toHaveBeenCalledWith({ from: String(Date.UTC(2026, 0, 1, 1)), to: 'now-1h' });
  });

  it('explains bad input and keeps the panel open; Escape closes it', async () => {
    const user = userEvent.setup();
    const onChange = vi.fn();
    render(<TimeRangePicker value={{ from: 'now-6h', to: 'now' }} onChange={onChange} now={NOW} />);
    await user.click(screen.getByRole('button', { name: /Time range/ }));
    await user.clear(screen.getByLabelText('From'));
    await user.type(screen.getByLabelText('From'), 'yesterday{Enter}');
    expect(screen.getByRole('alert').textContent).toMatch(/"yesterday" is not a time/);
    expect(onChange).not.toHaveBeenCalled();
    await user.keyboard('{Escape}');
    expect(screen.queryByRole('dialog')).toBeNull();
    expect(document.activeElement).toBe(screen.getByRole('button', { name: /Time range/ }));
  });
});
