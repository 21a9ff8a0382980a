// Loading resnet50's weights from a cached file, in seconds and peak RSS, against Python's
// torchvision resnet50() + load_state_dict in the same run. A benchmark, not a test.
//
//   node bench/weights.mjs [--runs 3]
// Each measurement is a fresh process, so peak RSS is that load's alone; "extra" is the peak
// over the process's RSS before the load, against the weights' size (the issue's bar: 1.3x).
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');
const python = process.env.TORCHLITE_PYTHON ?? '/usr/bin/python3';
const runs = Number(process.argv.includes('--runs') ? process.argv[process.argv.indexOf('--runs') + 1] : 3);
const dir = mkdtempSync(join(tmpdir(), 'torchlite-weights-bench-'));
execFileSync(python, [join(root, 'scripts', 'fixtures', 'zoo_parity.py'), dir, '64', 'resnet50'], { stdio: 'ignore' });
const weights = statSync(join(dir, 'resnet50.safetensors')).size;

// Peak RSS from /proc (VmHWM) against RSS just before the load, both in the child.
const node = (file) => `
const torchlite = require(${JSON.stringify(join(root, 'lib'))});
const { readFileSync } = require('node:fs');
const kb = (key) => Number(readFileSync('/proc/self/status', 'utf8').match(new RegExp(key + ':\\\\s+(\\\\d+)'))[1]) * 1024;
(async () => {
  const probe = await torchlite.loadPretrained(${JSON.stringify(join(root, 'test', 'fixtures', 'mlp.scripted.pt'))}); // the library warmed up, no weights to speak of
  probe.dispose();
  const before = kb('VmRSS');
  const started = performance.now();
  const model = await torchlite.loadPretrained('torchvision:resnet50', { weights: ${JSON.stringify(file)}, channelsLast: false });
  const seconds = (performance.now() - started) / 1000;
  console.log(JSON.stringify({ seconds, before, peak: kb('VmHWM'), after: kb('VmRSS') }));
  model.dispose();
})();`;
const py = (file) => `
import json, re, time, torch, torchvision, sys
sys.path.insert(0, ${JSON.stringify(join(root, 'scripts', 'fixtures'))})
from safetensors_io import load_file
def kb(key): return int(re.search(key + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
torch.nn.Linear(2, 2)
before = kb("VmRSS")
t = time.perf_counter()
m = torchvision.models.resnet50()
state = torch.load(${JSON.stringify(file)}) if ${JSON.stringify(file)}.endswith(".pth") else load_file(${JSON.stringify(file)})[0]
m.load_state_dict(state)
print(json.dumps({"seconds": time.perf_counter() - t, "before": before, "peak": kb("VmHWM"), "after": kb("VmRSS")}))`;

const measure = (cmd, args) => {
  const all = Array.from({ length: runs }, () => JSON.parse(spawnSync(cmd, args, { encoding: 'utf8' }).stdout.trim().split('\n').pop()));
  const median = (key) => all.map((r) => r[key]).sort((a, b) => a - b)[Math.floor(all.length / 2)];
  return { seconds: median('seconds'), extra: all.map((r) => r.peak - r.before).sort((a, b) => a - b)[Math.floor(all.length / 2)] };
};
const mb = (b) => `${(b / 2 ** 20).toFixed(0)} MB`;
console.log(`resnet50 weights: ${mb(weights)}; medians of ${runs} fresh processes each`);
console.log('| load | seconds | extra peak RSS | extra / weights |');
console.log('|---|---|---|---|');
for (const format of ['safetensors', 'pth']) {
  const file = join(dir, `resnet50.${format}`);
  const ours = measure('node', ['-e', node(file)]);
  const theirs = measure(python, ['-c', py(file)]);
  console.log(`| torchlite, .${format} | ${ours.seconds.toFixed(2)} | ${mb(ours.extra)} | ${(ours.extra / weights).toFixed(2)}x |`);
  console.log(`| Python resnet50() + load_state_dict, .${format} (${format === 'pth' ? 'torch.load' : 'a plain-Python reader'}) | ${theirs.seconds.toFixed(2)} | ${mb(theirs.extra)} | ${(theirs.extra / weights).toFixed(2)}x |`);
}
