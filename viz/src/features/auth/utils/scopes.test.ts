import { describe, expect, it } from 'vitest';
import { allows, exportRefusal, patternMatches } from './scopes';

describe('scopes', () => {
  it('patterns: * stops at a slash, ** does not, the rest is literal', () => {
    expect(patternMatches('plant/*', 'plant/a')).toBe(true);
    expect(patternMatches('plant/*', 'plant/a/b')).toBe(false);
    expect(patternMatches('plant/**', 'plant/a/b')).toBe(true);
    expect(patternMatches('**', 'Kessel Ü1/Temperatur')).toBe(true);
    expect(patternMatches('a.b', 'axb')).toBe(false);
    expect(patternMatches('line-(1)', 'line-(1)')).toBe(true);
  });

  it('export implies read; admin allows everything; write is its own', () => {
    expect(allows(['export:plant/**'], 'read', 'plant/x')).toBe(true);
    expect(allows(['read:plant/**'], 'export', 'plant/x')).toBe(false);
    expect(allows(['admin'], 'export', 'anything')).toBe(true);
    expect(allows(['write:**'], 'read', 'x')).toBe(false);
  });

  it('names the first sensor the token may not export, with its scopes', () => {
    const session = { name: 'viewer', token_id: 't', scopes: ['read:**', 'export:a/*'], auth: true, can_export: true, can_write: false };
    expect(exportRefusal(session, ['a/1'])).toBeNull();
    const why = exportRefusal(session, ['a/1', 'b/2']);
    expect(why).toContain('“viewer” may not export “b/2”');
    expect(why).toContain('read:**, export:a/*');
  });
});
