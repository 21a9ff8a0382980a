import { loadPretrained } from '../model';

export async function runInspect(path: string, options: { json?: boolean }): Promise<void> {
  await using model = await loadPretrained(path);
  if (options.json) {
    console.log(JSON.stringify({ traced: model.isTraced, modules: model.modules(), metadata: model.metadata ?? null }, null, 2));
    return;
  }
  console.log(model.summary());
  console.log(`\nArchive: ${model.isTraced ? 'traced (torch.jit.trace)' : 'scripted (torch.jit.script)'}`);
  console.log(`Metadata: ${model.metadata === undefined ? 'none' : JSON.stringify(model.metadata, null, 2)}`);
}
