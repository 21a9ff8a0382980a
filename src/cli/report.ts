// A self-contained HTML report: loss and accuracy curves, the lr schedule and the
// confusion matrix, drawn as plain SVG (no scripts, no network).
import { writeFile } from 'node:fs/promises';

import { type Callback, type EpochRecord, lineChart } from '..';

const escape = (text: string) => text.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]!);

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
    observesBatches: true,
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

/** A plain-text table: the first column left-aligned, the others right-aligned. */
export function textTable(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}
