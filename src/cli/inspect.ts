import { loadPretrained } from '..';

export async function runInspect(path: string, options: { json?: boolean }): Promise<void> {
  await using model = await loadPretrained(path);
  if (options.json) {
    const head = model.classifierHead() ?? null;
    console.log(JSON.stringify({ traced: model.isTraced, head, modules: model.modules(), metadata: model.metadata ?? null }, null, 2));
    return;
  }
  console.log(model.summary());
  const headPath = model.classifierHead();
  const head = model.modules().find((m) => m.path === headPath);
  console.log(`\nClassifier head: ${head ? `${head.path} (Linear, ${head.params.toLocaleString('en-US')} params)` : 'none found'}`);
  console.log(`\nArchive: ${model.isTraced ? 'traced (torch.jit.trace)' : 'scripted (torch.jit.script)'}`);
  console.log(`Metadata: ${model.metadata === undefined ? 'none' : JSON.stringify(model.metadata, null, 2)}`);
}
