import { type BatchInput, data, type Dataset, loadPretrained, loss } from '..';
import { type InputFlags, inputSpec, isTextData, loadDataset, loadTextDataset, matchClasses, parseClasses, type TextFlags, textTokenizer } from './data';
import { intFlag } from './flags';

export async function runEval(modelPath: string, flags: InputFlags & TextFlags & { data: string; classes?: string; batchSize: string; json?: boolean }): Promise<void> {
  await using model = await loadPretrained(modelPath);
  const loaded: Dataset<BatchInput> = isTextData(flags.data, flags)
    ? await loadTextDataset(flags.data, model, await textTokenizer(model, flags, modelPath), flags)
    : await loadDataset(flags.data, 't10k', inputSpec(model, flags, modelPath), { classes: parseClasses(flags.classes) });
  const { ds, names } = matchClasses(model, loaded);
  // The loss `finetune` trained and reported with (label smoothing included), so the numbers compare.
  const labelSmoothing = (model.metadata as { recipe?: { labelSmoothing?: number } } | null)?.recipe?.labelSmoothing ?? 0;
  const metrics = await model.evaluate(data.loader(ds, { batchSize: intFlag(flags.batchSize, '--batch-size') }), { loss: loss.crossEntropy({ labelSmoothing }), metrics: ['accuracy', { topK: 2 }, 'f1', 'confusionMatrix'] });
  // Rows and columns of the classes the data holds, and the predictions that fell outside them.
  const present = [...new Set(Array.from({ length: ds.length }, (_, i) => ds.target(i)))].sort((a, b) => a - b);
  const full = metrics.confusionMatrix ?? [];
  const matrix = present.map((t) => [...present.map((p) => full[t]?.[p] ?? 0), (full[t] ?? []).reduce((sum, v, p) => sum + (present.includes(p) ? 0 : v), 0)]);
  if (flags.json) {
    console.log(JSON.stringify({ ...metrics, classes: present.map((c) => names[c]), confusionMatrix: matrix }));
    return;
  }
  console.log(`samples   ${ds.length}\nloss      ${metrics.loss?.toFixed(4)}${labelSmoothing ? ` (cross-entropy with label smoothing ${labelSmoothing}, as in training)` : ''}\naccuracy  ${((metrics.accuracy ?? 0) * 100).toFixed(2)}%\ntop-2     ${((metrics.top2 ?? 0) * 100).toFixed(2)}%\nmacro F1  ${metrics.f1?.toFixed(4)}\n`);
  const labels = present.map((c) => (names[c] ?? String(c)).slice(0, 11));
  const width = Math.max(6, ...labels.map((l) => l.length)) + 1;
  const other = matrix.some((row) => row[row.length - 1] > 0);
  console.log(`${'true\\pred'.padEnd(width)}${labels.map((l) => l.padStart(width)).join('')}${other ? 'other'.padStart(width) : ''}`);
  matrix.forEach((row, i) => console.log(`${labels[i].padEnd(width)}${(other ? row : row.slice(0, -1)).map((v) => String(v).padStart(width)).join('')}`));
}
