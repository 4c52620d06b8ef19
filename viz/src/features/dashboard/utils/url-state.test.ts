import { describe, expect, it } from 'vitest';
import { buildSearch, parseUrlState } from './url-state';

describe('URL state', () => {
  it('reads sensor, range and live', () => {
    expect(parseUrlState('?sensor=a&from=now-6h&to=now&live=1')).toEqual({ sensor: 'a', from: 'now-6h', to: 'now', live: true });
    expect(parseUrlState('')).toEqual({ sensor: null, from: null, to: null, live: false });
    expect(parseUrlState('?sensor=&from=%20&to=5')).toEqual({ sensor: null, from: null, to: '5', live: false });
  });

  it('round-trips arbitrary sensor ids', () => {
    for (const id of ['Kessel Ü1/Temperatur', 'a,b;"c"', 'x+y=z&w?', '温度 #1', ' leading space']) {
      const search = buildSearch({ sensor: id, from: '1767225600000', to: '1767229200000', live: false });
      expect(search.split('&')[0]).toMatch(/^\?sensor=[A-Za-z0-9%\-_.!~*'()]*$/);
      expect(parseUrlState(search).sensor).toBe(id);
    }
  });

  it('writes the documented form', () => {
    expect(buildSearch({ sensor: 'Kessel Ü1/Temperatur', from: 'now-6h', to: 'now', live: true })).toBe(
      '?sensor=Kessel%20%C3%9C1%2FTemperatur&from=now-6h&to=now&live=1',
    );
    expect(buildSearch({ sensor: null, from: null, to: null, live: false })).toBe('');
  });

  it('keeps several sensors in order: ?sensor=a&sensor=b', () => {
    const state = parseUrlState('?sensor=a&sensor=b%2Fc&sensor=a&sensor=d&from=1&to=2');
    expect(state.sensor).toBe('a');
    expect(state.more).toEqual(['b/c', 'd']);
    expect(buildSearch(state)).toBe('?sensor=a&sensor=b%2Fc&sensor=d&from=1&to=2');
  });
});
