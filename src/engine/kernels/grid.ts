// Workgroup-count helpers shared by kernel wrappers.

/** Workgroups for a 1-D kernel over n items with `size` threads each, folded into 2-D past 65535. */
export function grid1d(n: number, size = 256): [number, number, number] {
  const groups = Math.ceil(n / size);
  if (groups <= 65535) return [groups, 1, 1];
  return [65535, Math.ceil(groups / 65535), 1];
}
