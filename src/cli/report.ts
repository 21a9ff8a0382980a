// A self-contained HTML report: loss and accuracy curves, the lr schedule and the
// confusion matrix, drawn as plain SVG (no scripts, no network).
import { writeFile } from 'node:fs/promises';

import type { Callback, EpochRecord } from '../train';

export interface Series {
  name: string;
  points: [number, number][];
  color: string;
}

const escape = (text: string) => text.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]!);

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

export function confusionTable(matrix: number[][], classes: string[]): string {
  const max = Math.max(1, ...matrix.flat());
  const head = `<tr><th>true \\ predicted</th>${classes.map((c) => `<th>${escape(c)}</th>`).join('')}</tr>`;
  const rows = matrix
    .map((row, i) => `<tr><th>${escape(classes[i] ?? String(i))}</th>${row.map((v, j) => `<td style="background:rgba(${i === j ? '46,125,50' : '198,40,40'},${(v / max).toFixed(2)})">${v}</td>`).join('')}</tr>`)
    .join('');
  return `<table class="confusion">${head}${rows}</table>`;
}

/** Records loss and lr per step, for the report's curves. */
export function stepRecorder(): Callback & { steps: { step: number; loss: number; lr: number }[] } {
  const steps: { step: number; loss: number; lr: number }[] = [];
  return {
    name: 'stepRecorder',
    steps,
    onBatchEnd(_ctx, e) {
      steps.push({ step: steps.length, loss: e.loss, lr: e.lr });
    },
  };
}

export interface ReportInput {
  title: string;
  summary: string[];
  history: EpochRecord[];
  steps: { step: number; loss: number; lr: number }[];
  confusion?: { matrix: number[][]; classes: string[] };
  extra?: string;
}

export async function writeReport(path: string, input: ReportInput): Promise<void> {
  const epochs = input.history.map((_, i) => i + 1);
  const charts = [
    lineChart('Loss per epoch', 'epoch', [
      { name: 'train', color: '#1565c0', points: input.history.map((r, i) => [epochs[i], r.trainLoss]) },
      { name: 'validation', color: '#ef6c00', points: input.history.map((r, i) => [epochs[i], r.val?.loss ?? Number.NaN]) },
    ]),
    lineChart('Accuracy per epoch', 'epoch', [
      { name: 'train', color: '#1565c0', points: input.history.map((r, i) => [epochs[i], r.trainAccuracy ?? Number.NaN]) },
      { name: 'validation', color: '#ef6c00', points: input.history.map((r, i) => [epochs[i], r.val?.accuracy ?? Number.NaN]) },
    ]),
    lineChart('Learning rate (head group) per step', 'step', [{ name: 'lr', color: '#6a1b9a', points: input.steps.map((s) => [s.step, s.lr]) }], { log: true }),
    lineChart('Training loss per step', 'step', [{ name: 'loss', color: '#1565c0', points: input.steps.map((s) => [s.step, s.loss]) }]),
  ].join('\n');
  const html = `<!doctype html><html><head><meta charset="utf-8"><title>${escape(input.title)}</title><style>
body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}figure{display:inline-block;margin:0 1em 1em 0}figcaption{font-weight:bold;margin-bottom:.3em}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}pre{background:#f5f5f5;padding:1em}</style></head><body>
<h1>${escape(input.title)}</h1><pre>${escape(input.summary.join('\n'))}</pre>${input.extra ?? ''}${charts}
${input.confusion ? `<h2>Confusion matrix (test set)</h2>${confusionTable(input.confusion.matrix, input.confusion.classes)}` : ''}
</body></html>\n`;
  await writeFile(path, html);
}
