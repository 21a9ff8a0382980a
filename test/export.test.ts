// scripts/export_model.py, the way users bring their own model: run with the reference
// Python here (weights=None: nothing can be downloaded), then loaded by torchlite.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { classNamesOf, inputSpecOf, loadPretrained, randn, type Tensor } from '../src';
import { hasTorch, hasTorchvision, PYTHON, root } from './helpers';

const dir = mkdtempSync(join(tmpdir(), 'torchlite-export-'));
const exportModel = (...args: string[]) => spawnSync(PYTHON, [join(root, 'scripts', 'export_model.py'), ...args], { encoding: 'utf8', cwd: dir });

describe('scripts/export_model.py', () => {
  it.runIf(hasTorchvision)('scripts a torchvision model with its input spec, and torchlite runs it', async () => {
    const r = exportModel('mobilenet_v3_small', '--weights', 'none', '--size', '64', '--out', 'mnv3.pt');
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('scripted mobilenet_v3_small -> mnv3.pt: input [3, 64, 64], 1000 outputs, no class names, max difference from eager 0');
    const m = await loadPretrained(join(dir, 'mnv3.pt'));
    expect(m.isTraced).toBe(false);
    expect(inputSpecOf(m)).toEqual({ shape: [3, 64, 64], mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225], resize: 'center-crop' });
    expect((m.metadata as { export: { how: string } }).export.how).toBe('scripted');
    expect((await m.forward<Tensor>(randn([1, 3, 64, 64]))).shape).toEqual([1, 1000]);
    m.dispose();
  });

  it.runIf(hasTorch)('takes module:callable with class names, and traces what cannot be scripted, saying why', async () => {
    writeFileSync(
      join(dir, 'mynets.py'),
      `import torch
class Grey(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.fc = torch.nn.Linear(4, 3)
    def forward(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3)))
class Untraceable(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 8 * 8, 2)
    def forward(self, x):
        import math
        return self.fc(x.flatten(1)) * math.sqrt(1.0)
def grey():
    return Grey()
`,
    );
    writeFileSync(join(dir, 'labels.txt'), 'ant\nbee\ncat\n');
    const grey = exportModel('mynets:grey', '--channels', '1', '--size', '20', '--classes', 'labels.txt', '--out', 'grey.pt');
    expect(grey.stdout.trim()).toBe('scripted mynets:grey -> grey.pt: input [1, 20, 20], 3 outputs, 3 class names, max difference from eager 0');
    const m = await loadPretrained(join(dir, 'grey.pt'));
    expect(classNamesOf(m)).toEqual(['ant', 'bee', 'cat']);
    expect(inputSpecOf(m)?.shape).toEqual([1, 20, 20]);
    expect(inputSpecOf(m)?.mean).toEqual([0.5]);
    m.dispose();

    const traced = exportModel('mynets:Untraceable', '--size', '8', '--out', 'u.pt');
    expect(traced.stdout.trim()).toMatch(/^traced mynets:Untraceable -> u\.pt: .* \(scripting failed: import statements aren't supported/);
    const t = await loadPretrained(join(dir, 'u.pt'));
    expect(t.isTraced).toBe(true);
    t.dispose();

    const wrong = exportModel('mynets:grey', '--channels', '1', '--classes', 'labels.txt', '--mean', '0.1', '0.2', '--out', 'x.pt');
    expect(wrong.status).not.toBe(0);
    expect(wrong.stderr.trim()).toBe('export_model.py: --mean and --std need 1 values each');
  });
});
