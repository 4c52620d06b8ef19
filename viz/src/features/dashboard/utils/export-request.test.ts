import { describe, expect, it } from 'vitest';
import { exportParams, exportPath, localeDecimal, pythonSnippet, type ExportOptions } from './export-request';

const base: ExportOptions = {
  sensorIds: ['Kessel Ü1/Temperatur', 'b'],
  start: 0,
  end: 1000,
  format: 'parquet',
  layout: 'wide',
  interval: null,
  aggregates: [],
  includeBad: false,
  timeZone: null,
  decimal: '.',
};

describe('export requests', () => {
  it('repeats sensor_id and encodes every value', () => {
    expect(exportPath(base)).toBe(
      '/api/v1/export?sensor_id=Kessel%20%C3%9C1%2FTemperatur&sensor_id=b&start_ts=0&end_ts=1000&layout=wide&format=parquet',
    );
  });

  it('adds interval and aggregates only when resampling', () => {
    const params = exportParams({ ...base, interval: '15m', aggregates: ['mean', 'max'], includeBad: true });
    expect(params).toContainEqual(['interval', '15m']);
    expect(params).toContainEqual(['aggregate', 'mean,max']);
    expect(params).toContainEqual(['include_bad', 'true']);
  });

  it('"CSV for Excel" follows the locale: ; and , for German', () => {
    expect(localeDecimal('de-DE')).toBe(',');
    expect(localeDecimal('en-US')).toBe('.');
    const params = exportParams({ ...base, sensorIds: ['a'], format: 'excel-csv', decimal: ',' });
    expect(params).toEqual([
      ['sensor_id', 'a'],
      ['start_ts', '0'],
      ['end_ts', '1000'],
      ['preset', 'excel'],
      ['delimiter', ';'],
      ['decimal', ','],
    ]);
  });

  it('"Copy as Python" reads the URL with pandas', () => {
    expect(pythonSnippet(base, 'http://h/x')).toBe('import pandas as pd; df = pd.read_parquet("http://h/x")');
  });
});
