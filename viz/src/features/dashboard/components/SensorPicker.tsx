import { useId, useMemo, useRef, useState, type KeyboardEvent } from 'react';
import { formatCount } from '@/utils/format';
import type { SensorInfo } from '../types';

import { searchSensors } from '../utils/sensor-search';
import { formatTime } from '../utils/time-range';

export interface SensorPickerProps {
  sensors: readonly SensorInfo[] | undefined;
  loading: boolean;
  error?: string;
  value: string | null;
  onChange: (sensorId: string) => void;
  /** The visible label (and accessible name); "Sensor" by default. */
  label?: string;
}

/** Rendered options at most; typing narrows thousands of sensors down. */
const LIMIT = 60;

export function describeSpan(s: SensorInfo): string {
  if (s.count === 0 || s.first_timestamp_ms === null || s.last_timestamp_ms === null) return 'no points';
  // To the second: the span is a summary, and it has to fit under the input.
  const t = (ms: number) => formatTime(Math.floor(ms / 1000) * 1000);
  return `${formatCount(s.count)} ${s.count === 1 ? 'point' : 'points'} · ${t(s.first_timestamp_ms)} → ${t(s.last_timestamp_ms)}`;
}

/**
 * A searchable combobox labelled "Sensor" (WAI-ARIA combobox with a listbox popup).
 * Arrow keys move, Enter picks, Escape closes.
 */
export function SensorPicker({ sensors, loading, error, value, onChange, label = 'Sensor' }: SensorPickerProps) {
  const id = useId();
  const listId = `${id}-list`;
  const [query, setQuery] = useState<string | null>(null); // null: not editing, show the value
  const [active, setActive] = useState(0);
  const inputRef = useRef<HTMLInputElement>(null);
  const open = query !== null;

  const { matches, total } = useMemo(
    () => (sensors && open ? searchSensors(sensors, query, LIMIT) : { matches: [], total: 0 }),
    [sensors, query, open],
  );
  const selected = useMemo(() => sensors?.find((s) => s.sensor_id === value), [sensors, value]);

  const pick = (s: SensorInfo) => {
    setQuery(null);
    onChange(s.sensor_id);
  };

  const onKeyDown = (e: KeyboardEvent<HTMLInputElement>) => {
    if (e.key === 'ArrowDown' || e.key === 'ArrowUp') {
      e.preventDefault();
      if (!open) {
        setQuery('');
        setActive(0);
        return;
      }
      const n = matches.length;
      if (n) setActive((a) => (e.key === 'ArrowDown' ? (a + 1) % n : (a - 1 + n) % n));
    } else if (e.key === 'Enter' && open) {
      e.preventDefault();
      const s = matches[active];
      if (s) pick(s);
    } else if (e.key === 'Escape' && open) {
      e.preventDefault();
      setQuery(null);
    }
  };

  const placeholder = loading ? 'Loading sensors…' : sensors?.length === 0 ? 'No sensors yet' : `Search ${formatCount(sensors?.length ?? 0)} sensors`;

  return (
    <div className="picker">
      <label htmlFor={`${id}-input`}>{label}</label>
      <div className="combo">
        <input
          id={`${id}-input`}
          ref={inputRef}
          type="text"
          role="combobox"
          aria-expanded={open}
          aria-controls={listId}
          aria-autocomplete="list"
          aria-activedescendant={open && matches[active] ? `${id}-opt-${active}` : undefined}
          aria-describedby={`${id}-info`}
          autoComplete="off"
          spellCheck={false}
          placeholder={placeholder}
          value={open ? query : (value ?? '')}
          disabled={!!error && !sensors}
          onFocus={(e) => {
            setQuery('');
            setActive(0);
            e.currentTarget.select();
          }}
          onBlur={() => setQuery(null)}
          onChange={(e) => {
            setQuery(e.target.value);
            setActive(0);
          }}
          onKeyDown={onKeyDown}
        />
        {open && (
          <ul id={listId} role="listbox" aria-label="Sensors" className="combo-list">
            {matches.map((s, i) => (
              <li
                key={s.sensor_id}
                id={`${id}-opt-${i}`}
                role="option"
                aria-selected={i === active}
                className={i === active ? 'active' : undefined}
                onMouseDown={(e) => {
                  e.preventDefault(); // keep focus until the pick lands
                  pick(s);
                  inputRef.current?.blur();
                }}
                onMouseMove={() => setActive(i)}
              >
                <span className="opt-id">{s.sensor_id}</span>
                <span className="opt-meta">{describeSpan(s)}</span>
              </li>
            ))}
            {total > matches.length && (
              <li className="combo-more" aria-hidden="true">
                {formatCount(total - matches.length)} more: type to narrow down
              </li>
            )}
            {!loading && matches.length === 0 && <li className="combo-more">No sensor matches “{query}”.</li>}
          </ul>
        )}
      </div>
      <p id={`${id}-info`} className="picker-info">
        {error ? <span className="error-text">Sensors could not be loaded: {error}</span> : selected ? describeSpan(selected) : value && sensors ? 'Unknown sensor' : ''}
      </p>
    </div>
  );
}
