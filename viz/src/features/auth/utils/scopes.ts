import type { Session } from '../types';

export type Action = 'read' | 'export' | 'write';

/** A scope's PATTERN against a sensor id: `*` any run without `/`, `**` any run, the rest literal (as the engine). */
export function patternMatches(pattern: string, sensorId: string): boolean {
  const source = pattern
    .split('**')
    .map((part) =>
      part
        .split('*')
        .map((lit) => lit.replace(/[.+?^${}()|[\]\\]/g, '\\$&'))
        .join('[^/]*'),
    )
    .join('.*');
  return new RegExp(`^${source}$`, 's').test(sensorId);
}

/** Whether `scopes` allow `action` on `sensorId`; `export` implies `read`, `admin` allows all. */
export function allows(scopes: readonly string[], action: Action, sensorId: string): boolean {
  return scopes.some((scope) => {
    if (scope === 'admin') return true;
    const i = scope.indexOf(':');
    if (i < 0) return false;
    const a = scope.slice(0, i);
    const granted = a === action || (action === 'read' && a === 'export');
    return granted && patternMatches(scope.slice(i + 1), sensorId);
  });
}

/** Why this session may not export `sensorIds` (the first one refused), or null when it may. */
export function exportRefusal(session: Session, sensorIds: readonly string[]): string | null {
  const refused = sensorIds.find((id) => !allows(session.scopes, 'export', id));
  if (refused === undefined) return null;
  return `The token “${session.name}” may not export “${refused}”: it has no export scope for it (its scopes: ${session.scopes.join(', ') || 'none'}).`;
}
