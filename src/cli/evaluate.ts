import { data, loadPretrained, loss } from '..';
import { inputSpec, loadDataset, parseClasses } from './data';
import { intFlag } from './flags';

export async function runEval(modelPath: string, flags: { data: string; classes?: string; batchSize: string; json?: boolean }): Promise<void> {
  await using model = await loadPretrained(modelPath);
  const ds = await loadDataset(flags.data, 't10k', inputSpec(model), { classes: parseClasses(flags.classes) });
  const names = ((model.metadata as { classes?: string[] } | undefined)?.classes ?? ds.classes ?? []).map(String);
  const metrics = await model.evaluate(data.loader(ds, { batchSize: intFlag(flags.batchSize, '--batch-size') }), { loss: loss.crossEntropy(), metrics: ['accuracy', { topK: 2 }, 'f1', 'confusionMatrix'] });
  if (flags.json) {
    console.log(JSON.stringify(metrics));
    return;
  }
  console.log(`samples   ${ds.length}\nloss      ${metrics.loss?.toFixed(4)}\naccuracy  ${((metrics.accuracy ?? 0) * 100).toFixed(2)}%\ntop-2     ${((metrics.top2 ?? 0) * 100).toFixed(2)}%\nmacro F1  ${metrics.f1?.toFixed(4)}\n`);
  const matrix = metrics.confusionMatrix ?? [];
  const labels = matrix.map((_, i) => (names[i] ?? String(i)).slice(0, 11));
  const width = Math.max(6, ...labels.map((l) => l.length)) + 1;
  console.log(`${'true\\pred'.padEnd(width)}${labels.map((l) => l.padStart(width)).join('')}`);
  matrix.forEach((row, i) => console.log(`${labels[i].padEnd(width)}${row.map((v) => String(v).padStart(width)).join('')}`));
}
