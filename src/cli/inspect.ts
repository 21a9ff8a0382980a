import { loadPretrained, text } from '..';

/** The metadata for reading: a text model's tokenizer.json (often 100s of KB) summed up in a line. */
function readable(metadata: unknown): unknown {
  const tokenizer = text.textSpecOf({ metadata })?.tokenizer as { model?: { type?: string; vocab?: object } } | undefined;
  if (!tokenizer) return metadata;
  const pieces = Object.keys(tokenizer.model?.vocab ?? {}).length;
  const meta = metadata as { text: object };
  return { ...meta, text: { ...meta.text, tokenizer: `<tokenizer.json: ${tokenizer.model?.type ?? 'unknown model'}, ${pieces.toLocaleString('en-US')} pieces; --json prints it whole>` } };
}

export async function runInspect(path: string, options: { json?: boolean; weights?: string }): Promise<void> {
  await using model = await loadPretrained(path, { ...(options.weights && { weights: options.weights }) });
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
  console.log(`Metadata: ${model.metadata === undefined ? 'none' : JSON.stringify(readable(model.metadata), null, 2)}`);
}
