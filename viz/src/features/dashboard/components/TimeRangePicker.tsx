import { useEffect, useId, useRef, useState, type FormEvent } from 'react';
import { QUICK_RANGES, describeRange, formatRawTime, resolveRange, zoneLabel, type RawRange } from '../utils/time-range';

export interface TimeRangePickerProps {
  /** Controlled: the range in the URL. */
  value: RawRange;
  onChange: (r: RawRange) => void;
  /** Current time, for validating relative input. */
  now: number;
}

/**
 * Grafana-style time picker: a button naming the range opens a panel with quick
 * ranges and free From/To fields (`now-6h`, `2026-01-01 00:00`, epoch ms).
 */
export function TimeRangePicker({ value, onChange, now }: TimeRangePickerProps) {
  const id = useId();
  const [open, setOpen] = useState(false);
  const [from, setFrom] = useState('');
  const [to, setTo] = useState('');
  const [problem, setProblem] = useState<string | null>(null);
  const buttonRef = useRef<HTMLButtonElement>(null);
  const panelRef = useRef<HTMLDivElement>(null);
  const fromRef = useRef<HTMLInputElement>(null);

  const show = () => {
    setFrom(formatRawTime(value.from));
    setTo(formatRawTime(value.to));
    setProblem(null);
    setOpen(true);
  };
  const close = (focusButton = true) => {
    setOpen(false);
    if (focusButton) buttonRef.current?.focus();
  };

  useEffect(() => {
    if (open) fromRef.current?.focus();
  }, [open]);

  // A click outside the panel closes it.
  useEffect(() => {
    if (!open) return;
    const onDown = (e: MouseEvent) => {
      const t = e.target as Node;
      if (!panelRef.current?.contains(t) && !buttonRef.current?.contains(t)) setOpen(false);
    };
    document.addEventListener('mousedown', onDown);
    return () => document.removeEventListener('mousedown', onDown);
  }, [open]);

  const apply = (e: FormEvent) => {
    e.preventDefault();
    const r = resolveRange({ from, to }, Date.now());
    if (!r.ok) {
      setProblem(r.message);
      return;
    }
    // Relative expressions stay relative in the URL; absolute times become epoch ms.
    const keep = (s: string, ms: number) => (/^now/.test(s.trim()) ? s.trim().replace(/\s+/g, '') : String(ms));
    onChange({ from: keep(from, r.range.start), to: keep(to, r.range.end) });
    close();
  };

  const resolved = resolveRange(value, now);

  return (
    <div className="range-picker" onKeyDown={(e) => e.key === 'Escape' && open && close()}>
      <button
        ref={buttonRef}
        type="button"
        className="range-button"
        aria-expanded={open}
        aria-controls={`${id}-panel`}
        aria-label={`Time range: ${describeRange(value)}`}
        onClick={() => (open ? close() : show())}
      >
        {describeRange(value)}
        <span className="zone"> · {zoneLabel(resolved.ok ? resolved.range.start : now)}</span>
      </button>
      {open && (
        <div ref={panelRef} id={`${id}-panel`} className="range-panel" role="dialog" aria-label="Choose time range">
          <form onSubmit={apply} className="range-form">
            <label htmlFor={`${id}-from`}>From</label>
            <input id={`${id}-from`} ref={fromRef} value={from} onChange={(e) => setFrom(e.target.value)} spellCheck={false} aria-describedby={`${id}-hint`} />
            <label htmlFor={`${id}-to`}>To</label>
            <input id={`${id}-to`} value={to} onChange={(e) => setTo(e.target.value)} spellCheck={false} aria-describedby={`${id}-hint`} />
            <p id={`${id}-hint`} className="hint">
              e.g. <code>now-6h</code>, <code>2026-01-01 00:00</code> or epoch ms; times in {zoneLabel(now)}. The end is excluded.
            </p>
            {problem && (
              <p role="alert" className="error-text">
                {problem}
              </p>
            )}
            <button type="submit" className="primary">Apply time range</button>
          </form>
          <div className="quick">
            <h3>Quick ranges</h3>
            <ul>
              {QUICK_RANGES.map((q) => (
                <li key={q.label}>
                  <button
                    type="button"
                    aria-pressed={q.from === value.from && q.to === value.to}
                    onClick={() => {
                      onChange({ from: q.from, to: q.to });
                      close();
                    }}
                  >
                    {q.label}
                  </button>
                </li>
              ))}
            </ul>
          </div>
        </div>
      )}
    </div>
  );
}
