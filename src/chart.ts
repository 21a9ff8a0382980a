// Line charts as plain SVG (no scripts, no network): findLr's plot and the CLI's reports.

/** One line of a {@link lineChart}: `[x, y]` points in one colour. */
export interface Series {
  name: string;
  points: [number, number][];
  color: string;
}

const escape = (text: string) => text.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]!);

/** An SVG line chart of `series`, with a logarithmic y axis when `log` is set. */
export function lineChart(title: string, xLabel: string, series: Series[], { log = false } = {}): string {
  const width = 560;
  const height = 260;
  const pad = { left: 56, right: 16, top: 28, bottom: 36 };
  const all = series.flatMap((s) => s.points).filter(([, y]) => Number.isFinite(y) && (!log || y > 0));
  if (all.length === 0) return '';
  const fy = (y: number) => (log ? Math.log10(y) : y);
  const [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  const [y0, y1] = [Math.min(...all.map((p) => fy(p[1]))), Math.max(...all.map((p) => fy(p[1])))];
  const sx = (x: number) => pad.left + ((x - x0) / (x1 - x0 || 1)) * (width - pad.left - pad.right);
  const sy = (y: number) => height - pad.bottom - ((fy(y) - y0) / (y1 - y0 || 1)) * (height - pad.top - pad.bottom);
  const ticks = [0, 0.5, 1].map((f) => y0 + f * (y1 - y0));
  const label = (v: number) => (log ? (10 ** v).toExponential(1) : Math.abs(v) < 0.01 && v !== 0 ? v.toExponential(1) : v.toFixed(3));
  const lines = series
    .map((s) => {
      const points = s.points.filter(([, y]) => Number.isFinite(y) && (!log || y > 0));
      const path = points.map(([x, y], i) => `${i ? 'L' : 'M'}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join('');
      const dots = points.length <= 40 ? points.map(([x, y]) => `<circle cx="${sx(x).toFixed(1)}" cy="${sy(y).toFixed(1)}" r="2.5" fill="${s.color}"/>`).join('') : '';
      return `<path d="${path}" fill="none" stroke="${s.color}" stroke-width="2"/>${dots}`;
    })
    .join('');
  // Each label is placed after the previous one, at ~7 px per character of 12 px text.
  let at = pad.left + 8;
  const legend = series
    .map((s) => {
      const text = `<text x="${at}" y="${pad.top - 10}" fill="${s.color}" font-size="12">■ ${escape(s.name)}</text>`;
      at += 7 * (s.name.length + 2) + 16;
      return text;
    })
    .join('');
  const grid = ticks
    .map((t) => `<line x1="${pad.left}" x2="${width - pad.right}" y1="${sy(log ? 10 ** t : t)}" y2="${sy(log ? 10 ** t : t)}" stroke="#ddd"/><text x="${pad.left - 6}" y="${sy(log ? 10 ** t : t) + 4}" font-size="10" text-anchor="end">${label(t)}</text>`)
    .join('');
  return `<figure><figcaption>${escape(title)}</figcaption><svg viewBox="0 0 ${width} ${height}" width="${width}" height="${height}" font-family="sans-serif">${grid}<line x1="${pad.left}" x2="${width - pad.right}" y1="${height - pad.bottom}" y2="${height - pad.bottom}" stroke="#888"/><text x="${width / 2}" y="${height - 6}" font-size="11" text-anchor="middle">${escape(xLabel)} (${x0}–${x1})</text>${legend}${lines}</svg></figure>`;
}
