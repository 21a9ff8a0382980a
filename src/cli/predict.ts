import { type BatchInput, classNamesOf, data, loadPretrained, type Model, type Tensor, text } from '..';
import { type InputFlags, inputSpec, type TextFlags, textTokenizer } from './data';
import { intFlag } from './flags';
import { predictDenseTask } from './tasks';

/** Texts from the command line, or one a line from stdin when none is given (or `-`). */
async function readTexts(args: string[]): Promise<string[]> {
  if (args.length > 0 && !(args.length === 1 && args[0] === '-')) return args;
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  const lines = Buffer.concat(chunks).toString('utf8').split('\n').map((l) => l.trim()).filter(Boolean);
  if (lines.length === 0) throw new RangeError('Expected texts as arguments or one a line on stdin but received none');
  return lines;
}

/** A text model's batch input for the texts, tokenized by its tokenizer. */
async function textBatch(model: Model, texts: string[], flags: TextFlags, modelPath: string): Promise<BatchInput> {
  const tokenizer = await textTokenizer(model, flags, modelPath);
  return text.textInput(tokenizer.encode(texts), text.textSpecOf(model)?.inputs);
}

export async function runPredict(modelPath: string, inputs: string[], flags: InputFlags & TextFlags & { top: string; json?: boolean; threshold?: string; masksDir?: string }): Promise<void> {
  const k = intFlag(flags.top, '--top');
  await using model = await loadPretrained(modelPath);
  if (inputs.length > 0 && (await predictDenseTask(model, inputs, flags))) return;
  const isText = flags.text === true || flags.tokenizer !== undefined || text.textSpecOf(model) !== undefined;
  const items = isText ? await readTexts(inputs) : inputs;
  if (items.length === 0) throw new RangeError('Expected image files to predict on but received none');
  const { probabilities } = await model.predict(isText ? await textBatch(model, items, flags, modelPath) : await imageBatch(model, items, flags, modelPath));
  const probs = (await probabilities.read()) as Float32Array;
  const classes = probabilities.shape[1];
  const names = classNamesOf(model);
  const results = items.map((item, n) => ({
    [isText ? 'text' : 'file']: item,
    top: Array.from(probs.subarray(n * classes, (n + 1) * classes), (p, c) => ({ label: names?.[c] ?? String(c), probability: p }))
      .sort((a, b) => b.probability - a.probability)
      .slice(0, k),
  }));
  if (flags.json) console.log(JSON.stringify(results));
  else results.forEach((r, n) => console.log(`${items[n]}: ${r.top.map((t) => `${t.label} ${(t.probability * 100).toFixed(1)}%`).join(', ')}`));
}

/** Images prepared as the model's input spec says (data.loadImage), with --size/--channels where the model has none. */
async function imageBatch(model: Model, images: string[], flags: InputFlags, modelPath: string): Promise<Tensor> {
  const { shape, mean, std, resizeTo } = inputSpec(model, flags, modelPath);
  return data.loadImage(images, { size: shape[1], channels: shape[0] as 1 | 3, mean, std, ...(resizeTo && { resizeTo }) });
}
