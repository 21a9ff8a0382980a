// LoRA bench: step time and peak memory of LoRA against full fine-tuning, each in a process of
// its own (peak RSS is per process), for the shipped text encoder and a ResNet-50; the text
// encoder's LoRA step against the same step in Python (PEFT's layers, as
// scripts/fixtures/lora_reference.py builds them); what switching adapters costs; and predict
// latency with an adapter chosen per request against a model with the adapter merged.
//   node bench/lora.mjs          (after npm run build)
import { execFileSync } from 'node:child_process';
import { availableParallelism, cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeFileSync } from 'node:fs';

import torchlite from '../lib/index.js';

const { getNumThreads, loadPretrained, lora, loss, manualSeed, optim, tensor } = torchlite;
const here = dirname(fileURLToPath(import.meta.url));
const ENCODER = join(here, '..', 'models', 'fortunes-encoder.pt');
const python = process.env.TORCHLITE_PYTHON ?? '/usr/bin/python3';
const STEPS = { text: 20, resnet50: 3 };

/** One case in this process: the step time (ms, after 2 warm-up steps) and peak RSS (MiB). */
async function runCase(name) {
  const [model_, mode] = name.split('-');
  manualSeed(0);
  const model = model_ === 'text' ? await loadPretrained(ENCODER) : await loadPretrained('torchvision:resnet50', { weights: 'none', channelsLast: false });
  if (mode === 'lora') lora.apply(model, model_ === 'text' ? { targets: /attention\.(query|value)$/, r: 8, alpha: 16 } : { targets: /conv\d$/, r: 8, alpha: 16, modulesToSave: 'fc' });
  const input = model_ === 'text' ? [tensor(BigInt64Array.from({ length: 32 * 48 }, (_, i) => BigInt(1 + ((i * 7919) % 5000))), [32, 48]), tensor(new BigInt64Array(32 * 48).fill(1n), [32, 48])] : tensor(Float32Array.from({ length: 8 * 3 * 224 * 224 }, (_, i) => Math.sin(i)), [8, 3, 224, 224]);
  const target = tensor(BigInt64Array.from({ length: model_ === 'text' ? 32 : 8 }, (_, i) => BigInt(i % 5)));
  const optimizer = optim.adamw(model, { lr: 1e-4 });
  model.train();
  const step = () => model.trainStep(input, target, { loss: loss.crossEntropy(), optimizer });
  await step();
  await step();
  const start = performance.now();
  for (let i = 0; i < STEPS[model_]; i++) await step();
  const ms = (performance.now() - start) / STEPS[model_];
  const trainable = model.parameters().filter((p) => p.requiresGrad).reduce((n, p) => n + p.numel, 0);
  console.log(JSON.stringify({ ms, rssMiB: process.resourceUsage().maxRSS / 1024, trainable }));
}

if (process.argv[2]) {
  await runCase(process.argv[2]);
  process.exit(0);
}

const threads = getNumThreads();
console.log(`torchlite LoRA bench: LibTorch ${torchlite.torchVersion}, ${threads} threads, ${cpus()[0]?.model ?? 'cpu'} x${availableParallelism()}`);
const child = (name) => JSON.parse(execFileSync(process.execPath, [fileURLToPath(import.meta.url), name], { encoding: 'utf8' }).trim().split('\n').pop());
const cases = Object.fromEntries(['text-full', 'text-lora', 'resnet50-full', 'resnet50-lora'].map((name) => [name, child(name)]));
const py = JSON.parse(
  execFileSync(python, ['-c', `
import sys, json, time, torch
sys.path.insert(0, sys.argv[1])
from lora_reference import inject
from text_encoder import Encoder
torch.set_num_threads(int(sys.argv[3]))
s = torch.jit.load(sys.argv[2]); state = {k: v for k, v in s.state_dict().items() if k != "position_ids"}
layers = len({k.split(".")[1] for k in state if k.startswith("layers.")})
m = Encoder(vocab=state["tokens.weight"].shape[0], dim=state["tokens.weight"].shape[1], heads=getattr(s.layers, "0").attention.heads, layers=layers, hidden=state["layers.0.ff.0.weight"].shape[0], max_length=state["positions.weight"].shape[0], classes=state["classifier.weight"].shape[0])
m.load_state_dict(state); torch.manual_seed(0); inject(m, r"attention\\.(query|value)$", 8, 16); m.train()
ids = (torch.arange(32 * 48) * 7919 % 5000 + 1).view(32, 48); mask = torch.ones(32, 48, dtype=torch.long); y = torch.arange(32) % 5
opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
def step():
    loss = torch.nn.functional.cross_entropy(m(ids, mask), y); opt.zero_grad(); loss.backward(); opt.step(); loss.item()
step(); step(); t = time.perf_counter()
for _ in range(20): step()
print(json.dumps({"ms": (time.perf_counter() - t) / 20 * 1000}))`, join(here, '..', 'scripts', 'fixtures'), ENCODER, String(threads)], { encoding: 'utf8' }).trim().split('\n').pop(),
);

// Switching and serving: two adapters on the text encoder.
const model = await loadPretrained(ENCODER);
lora.apply(model, { targets: /attention\.(query|value)$/, name: 'a' });
lora.apply(model, { targets: /attention\.(query|value)$/, name: 'b' });
model.eval();
const ids = tensor(BigInt64Array.from({ length: 48 }, (_, i) => BigInt(1 + i)), [1, 48]);
const mask = tensor(new BigInt64Array(48).fill(1n), [1, 48]);
let start = performance.now();
for (let i = 0; i < 200; i++) await lora.use(model, i % 2 === 0 ? 'b' : 'a');
const switchMs = (performance.now() - start) / 200;
const latencies = async (options) => {
  const times = [];
  for (let i = 0; i < 300; i++) {
    const t = performance.now();
    await model.predict([ids, mask], options?.(i));
    times.push(performance.now() - t);
  }
  times.sort((x, y) => x - y);
  return { p50: times[150], p99: times[296] };
};
await latencies(); // warm-up
const perRequest = await latencies((i) => ({ adapter: i % 2 === 0 ? 'a' : 'b' }));
await lora.use(model, 'a');
await lora.merge(model, 'a');
const merged = await latencies();
start = performance.now();
await lora.unmerge(model);
const unmergeMs = performance.now() - start;

const table = [
  { case: 'text encoder, full fine-tune: ms/step, peak MiB, trainable', value: `${cases['text-full'].ms.toFixed(1)}, ${cases['text-full'].rssMiB.toFixed(0)}, ${cases['text-full'].trainable}` },
  { case: 'text encoder, LoRA r=8 q,v: ms/step, peak MiB, trainable', value: `${cases['text-lora'].ms.toFixed(1)}, ${cases['text-lora'].rssMiB.toFixed(0)}, ${cases['text-lora'].trainable}` },
  { case: 'text encoder LoRA step, PyTorch (PEFT layers): ms', value: py.ms.toFixed(1) },
  { case: 'text encoder LoRA step ratio (torchlite / PyTorch)', value: (cases['text-lora'].ms / py.ms).toFixed(2) },
  { case: 'ResNet-50 bs 8, full: ms/step, peak MiB, trainable', value: `${cases['resnet50-full'].ms.toFixed(0)}, ${cases['resnet50-full'].rssMiB.toFixed(0)}, ${cases['resnet50-full'].trainable}` },
  { case: 'ResNet-50 bs 8, LoRA r=8 convs + fc: ms/step, peak MiB, trainable', value: `${cases['resnet50-lora'].ms.toFixed(0)}, ${cases['resnet50-lora'].rssMiB.toFixed(0)}, ${cases['resnet50-lora'].trainable}` },
  { case: 'adapter switch (lora.use): ms', value: switchMs.toFixed(3) },
  { case: 'predict p50 / p99 ms, adapter per request', value: `${perRequest.p50.toFixed(2)} / ${perRequest.p99.toFixed(2)}` },
  { case: 'predict p50 / p99 ms, adapter merged', value: `${merged.p50.toFixed(2)} / ${merged.p99.toFixed(2)}` },
  { case: 'unmerge: ms', value: unmergeMs.toFixed(2) },
];
console.table(table);
const file = join(here, 'results', `lora-${new Date().toISOString().slice(0, 16).replace(':', '')}.json`);
writeFileSync(file, `${JSON.stringify({ machine: `${cpus()[0]?.model} x${availableParallelism()}`, threads, torch: torchlite.torchVersion, cases, python: py, switchMs, perRequest, merged, unmergeMs, table }, null, 2)}\n`);
console.log(`wrote ${file}`);
