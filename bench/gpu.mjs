// GPU bench (run by scripts/gpu-check.sh): ResNet-50 at 224², batch 64, in TF32 and in
// bf16 autocast, torchlite against the machine's eager PyTorch in the same run.
//   node bench/gpu.mjs OUT_DIR
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import torchlite from '../lib/index.js';

const { cuda, loadPretrained, loss, optim, randn, tensor, torchVersion } = torchlite;
const here = dirname(fileURLToPath(import.meta.url));
const out = process.argv[2];
const python = process.env.TORCHLITE_PYTHON ?? 'python3';
const py = JSON.parse(execFileSync(python, [join(here, 'gpu_step.py'), out], { encoding: 'utf8' }).trim().split('\n').pop());
const STEPS = 10;
const WARMUP = 3;
const BATCH = 64;

cuda.setOptions({ cudnnBenchmark: true, tf32: true });
const model = await loadPretrained(join(out, 'resnet50.pt'), { device: 'cuda' });
model.train();
const x = randn([BATCH, 3, 224, 224], { device: 'cuda' });
const y = tensor(BigInt64Array.from({ length: BATCH }, (_, i) => BigInt(i % 1000))).to('cuda');
const ce = loss.crossEntropy();
async function bench(amp) {
  const optimizer = optim.sgd(model, { lr: 0.01, momentum: 0.9 });
  let start = 0;
  for (let i = 0; i < WARMUP + STEPS; i++) {
    if (i === WARMUP) {
      await cuda.synchronize();
      start = performance.now();
    }
    await model.trainStep(x, y, { loss: ce, optimizer, ...(amp && { amp }) });
  }
  await cuda.synchronize();
  return (BATCH * STEPS) / ((performance.now() - start) / 1000);
}
const ours = { tf32: await bench(undefined), bf16: await bench('bf16') };
console.log(`GPU bench on ${py.card}, LibTorch ${torchVersion}: ResNet-50 224² batch ${BATCH}, train step img/s`);
for (const key of ['tf32', 'bf16']) console.log(`${key.padEnd(6)} torchlite ${ours[key].toFixed(0).padStart(6)}  python ${py[key].toFixed(0).padStart(6)}  ratio ${(ours[key] / py[key]).toFixed(3)}`);
console.log(`peak allocated ${(cuda.memory().peak / 2 ** 30).toFixed(2)} GiB`);
writeFileSync(join(out, 'gpu-bench.json'), `${JSON.stringify({ card: py.card, torchVersion, torchlite: ours, python: py }, null, 2)}\n`);
