import { join, resolve } from 'node:path';

import { readIdx } from '../data/idx';
import { loadPretrained } from '../model';
import { Tensor, tensor } from '../tensor';
import { checkPositiveInteger } from '../validate';

interface ShippedMetadata {
  classes: string[];
  input: { shape: number[]; mean: number[]; std: number[] };
}

export const SHIPPED_MODEL = resolve(__dirname, '..', '..', 'models', 'fashion-cnn.pt');
export const FASHION_CLASSES = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'];

function softmax(logits: Float32Array): number[] {
  const max = Math.max(...logits);
  const exps = Array.from(logits, (v) => Math.exp(v - max));
  const sum = exps.reduce((a, b) => a + b, 0);
  return exps.map((e) => e / sum);
}

export async function runDemo(options: { count: string; dataDir: string }): Promise<void> {
  const count = checkPositiveInteger(Number(options.count), '--count');
  await using model = await loadPretrained(SHIPPED_MODEL);
  const meta = model.metadata as ShippedMetadata;
  const [images, labels] = await Promise.all([
    readIdx(join(options.dataDir, 't10k-images-idx3-ubyte.gz')),
    readIdx(join(options.dataDir, 't10k-labels-idx1-ubyte.gz')),
  ]);
  const pixels = images.shape[1] * images.shape[2];
  // The model knows the first classes only; pick test images of those.
  const picked: number[] = [];
  for (let i = 0; i < labels.data.length && picked.length < count; i++) if (labels.data[i] < meta.classes.length) picked.push(i);
  const batch = new Float32Array(picked.length * pixels);
  picked.forEach((index, row) => {
    for (let p = 0; p < pixels; p++)
      batch[row * pixels + p] = (images.data[index * pixels + p] / 255 - meta.input.mean[0]) / meta.input.std[0];
  });
  using input = tensor(batch, [picked.length, ...meta.input.shape]);
  using logits = await model.forward<Tensor>(input);
  const scores = logits.toTypedArray() as Float32Array;
  const k = meta.classes.length;
  console.log(`torchlite demo: ${SHIPPED_MODEL} (classes ${meta.classes.join(', ')})\n`);
  let correct = 0;
  picked.forEach((index, row) => {
    const probs = softmax(scores.subarray(row * k, (row + 1) * k));
    const top = probs.map((p, c) => [p, c] as const).sort((a, b) => b[0] - a[0]).slice(0, 3);
    const truth = labels.data[index];
    if (top[0][1] === truth) correct++;
    const guesses = top.map(([p, c]) => `${meta.classes[c]} ${(100 * p).toFixed(1)}%`).join(', ');
    console.log(`test image #${String(index).padEnd(5)} true: ${FASHION_CLASSES[truth].padEnd(12)} top-3: ${guesses}`);
  });
  console.log(`\n${correct}/${picked.length} top-1 correct`);
}
