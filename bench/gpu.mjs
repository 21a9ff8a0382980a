// GPU bench (run by scripts/gpu-check.sh): ResNet-50 at 224², batch 64, in TF32 and in
// bf16 autocast, each with the loss read every step and with `readLoss: false`, torchlite
// against the machine's eager PyTorch in the same run. Writes OUT_DIR/gpu-bench.json.
//   node bench/gpu.mjs OUT_DIR
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import torchlite from '../lib/index.js';

const { cuda, loadPretrained, loss, optim, randn, tensor, torchVersion } = torchlite;
const here = dirname(fileURLToPath(import.meta.url));
const out = process.argv[2];
const python = process.env.TORCHLITE_PYTHON ?? 'python3';
const work = mkdtempSync(join(tmpdir(), 'torchlite-gpu-bench-')); // resnet50.pt is ~100 MB: not for OUT
const py = JSON.parse(execFileSync(python, [join(here, 'gpu_step.py'), work], { encoding: 'utf8' }).trim().split('\n').pop());
const STEPS = 30;
const WARMUP = 3;
const BATCH = 64;

cuda.setOptions({ cudnnBenchmark: true, tf32: true });
const model = await loadPretrained(join(work, 'resnet50.pt'), { device: 'cuda' });
model.train();
const x = randn([BATCH, 3, 224, 224], { device: 'cuda' });
const y = tensor(BigInt64Array.from({ length: BATCH }, (_, i) => BigInt(i % 1000))).to('cuda');
const ce = loss.crossEntropy();
const gap = (r, key) => ((BATCH / r[key] - BATCH / r[`${key}-nosync`]) * 1000).toFixed(2);
async function bench(amp, readLoss) {
  const optimizer = optim.sgd(model, { lr: 0.01, momentum: 0.9 });
  let start = 0;
  for (let i = 0; i < WARMUP + STEPS; i++) {
    if (i === WARMUP) {
      await cuda.synchronize();
      start = performance.now();
    }
    await model.trainStep(x, y, { loss: ce, optimizer, readLoss, ...(amp && { amp }) });
  }
  await cuda.synchronize();
  return (BATCH * STEPS) / ((performance.now() - start) / 1000);
}
const ours = {};
for (const [name, amp] of [['tf32', undefined], ['bf16', 'bf16']]) {
  ours[name] = await bench(amp, true);
  ours[`${name}-nosync`] = await bench(amp, false);
}
console.log(`GPU bench on ${py.card}, LibTorch ${torchVersion}: ResNet-50 224² batch ${BATCH}, train step img/s`);
for (const key of Object.keys(ours)) console.log(`${key.padEnd(12)} torchlite ${ours[key].toFixed(0).padStart(6)}  python ${py[key].toFixed(0).padStart(6)}  ratio ${(ours[key] / py[key]).toFixed(3)}`);
// The host's share of a step: what reading the loss every step costs over letting the GPU run ahead.
for (const key of ['tf32', 'bf16']) console.log(`${key} gap per step from reading the loss: torchlite ${gap(ours, key)} ms, python ${gap(py, key)} ms`);
console.log(`peak allocated ${(cuda.memory().peak / 2 ** 30).toFixed(2)} GiB`);
writeFileSync(join(out, 'gpu-bench.json'), `${JSON.stringify({ card: py.card, torchVersion, torchlite: ours, python: py }, null, 2)}\n`);
