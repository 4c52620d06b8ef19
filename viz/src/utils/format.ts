const counts = new Intl.NumberFormat('en-US');

/** `1,048,576`: counts with thousands separators, the same in every locale. */
export function formatCount(n: number): string {
  return counts.format(n);
}
