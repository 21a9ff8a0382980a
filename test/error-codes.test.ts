import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadPretrained, tensor, TorchError, torchVersion } from '../src';
import { native } from '../src/native';
import { hasTorch, PYTHON } from './helpers';

// This file meets an unknown op on purpose: torchvision's ops stay unloaded here.
process.env.TORCHLITE_TORCHVISION_OPS = '0';

/** Runs a Python script with the reference torch and returns its JSON output. */
function python<T>(source: string, ...args: string[]): T {
  const dir = mkdtempSync(join(tmpdir(), 'torchlite-errors-'));
  writeFileSync(join(dir, 'script.py'), source);
  const run = spawnSync(PYTHON, [join(dir, 'script.py'), ...args], { encoding: 'utf8' });
  if (run.status !== 0) throw new Error(run.stderr);
  return JSON.parse(run.stdout || 'null') as T;
}

// Each phrase of common.cc's table, with an op that makes the LibTorch this Python links raise
// a message containing it (so the table is checked against 1.13's and 2.x's real wording).
const PHRASES = `
import json, torch
import torch.nn.functional as F
def one(x: torch.Tensor) -> torch.Tensor:
    return x + 1
cases = [
  ("scalar type", "TORCH_DTYPE", lambda: F.nll_loss(torch.zeros(2, 3), torch.zeros(2))),
  ("Input type (", "TORCH_DTYPE", lambda: F.conv2d(torch.zeros(1, 3, 4, 4, dtype=torch.float64), torch.zeros(2, 3, 3, 3), torch.zeros(2))),
  ("dtype", "TORCH_DTYPE", lambda: torch.dot(torch.zeros(3), torch.zeros(3, dtype=torch.float64))),
  ("not implemented for", "TORCH_DTYPE", lambda: torch.mm(torch.zeros(2, 2, dtype=torch.bool), torch.zeros(2, 2, dtype=torch.bool))),
  ("out of bounds", "TORCH_INDEX", lambda: torch.zeros(3)[torch.tensor([5])]),
  ("index out of range", "TORCH_INDEX", lambda: F.embedding(torch.tensor([5]), torch.zeros(3, 2))),
  ("shape", "TORCH_SHAPE", lambda: torch.zeros(6).view(2, 5)),
  ("size mismatch", "TORCH_SHAPE", lambda: torch.mv(torch.zeros(4, 10), torch.zeros(3))),
  ("dimension", "TORCH_SHAPE", lambda: torch.zeros(3) + torch.zeros(4)),
  ("Expected 3D", "TORCH_SHAPE", lambda: F.conv2d(torch.zeros(2, 3), torch.zeros(8, 3, 3, 3))),
  ("channels", "TORCH_SHAPE", lambda: F.conv2d(torch.zeros(2, 1, 8, 8), torch.zeros(8, 3, 3, 3))),
  ("argument", "TORCH_ARGUMENT", lambda: torch.jit.script(one)()),
]
out = []
for phrase, code, fail in cases:
    try:
        fail()
        out.append([phrase, code, None])
    except Exception as e:
        out.append([phrase, code, str(e)])
print(json.dumps(out))
`;

describe('error codes', () => {
  it('come from the first line of the message, through one table of phrases, each checked against the LibTorch that raised it', () => {
    expect(native.classifyMessage('CUDA out of memory. Tried to allocate 2.00 GiB')).toBe('TORCH_OOM');
    expect(native.classifyMessage('\nUnknown builtin op: torchvision::nms.\nCould not find any similar ops to torchvision::nms.')).toBe('TORCH_UNKNOWN_OP');
    expect(native.classifyMessage('something else went wrong')).toBe('TORCH_ERROR');
    // What follows the first line (quoted model source) never decides the code.
    expect(native.classifyMessage('something else went wrong\n    argument_1: Tensor, shape: List[int]')).toBe('TORCH_ERROR');
    if (!hasTorch) return;
    const cases = python<[string, string, string | null][]>(PHRASES);
    for (const [phrase, code, message] of cases) {
      expect(message, `no failure for '${phrase}'`).not.toBeNull();
      expect(message!.split('\n')[0], `'${phrase}' in this LibTorch's message`).toContain(phrase);
      expect([phrase, native.classifyMessage(message!)]).toEqual([phrase, code]);
    }
  });

  it.runIf(hasTorch)("does not depend on the model's quoted source: an unknown op gets TORCH_UNKNOWN_OP whatever the argument names", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'torchlite-unknown-op-'));
    python(
      `import sys, torch, torchvision
class A(torch.nn.Module):
    def forward(self, argument_1: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return torch.ops.torchvision.nms(argument_1, scores, 0.5)
class B(torch.nn.Module):
    def forward(self, boxes: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return torch.ops.torchvision.nms(boxes, scores, 0.5)
torch.jit.script(A()).save(sys.argv[1] + '/a.pt')
torch.jit.script(B()).save(sys.argv[1] + '/b.pt')
`,
      dir,
    );
    const codes = [];
    for (const name of ['a.pt', 'b.pt']) codes.push(await loadPretrained(join(dir, name)).catch((e: TorchError) => [e.code, e.message.split('\n')[0]]));
    const said =
      "the model uses the operator torchvision::nms, which is not registered: it calls torchvision's operators: install torchvision's for LibTorch " +
      `${torchVersion} (Debian: apt-get install python3-torchvision; with a pip torch, the torchvision release that matches it), which torchlite then loads by itself, ` +
      'or load the library with ops.load(path) or TORCHLITE_TORCHVISION_OPS=path. (Unknown builtin op: torchvision::nms.)';
    expect(codes).toEqual([
      ['TORCH_UNKNOWN_OP', said],
      ['TORCH_UNKNOWN_OP', said],
    ]);
  });

  it.runIf(hasTorch)('gives a float64 input to a convolution with a bias TORCH_DTYPE and the hint', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'torchlite-bias-'));
    python(`import sys, torch\ntorch.jit.script(torch.nn.Conv2d(3, 4, 3)).save(sys.argv[1] + '/conv.pt')\n`, dir);
    await using model = await loadPretrained(join(dir, 'conv.pt'));
    const input = tensor(new Float64Array(2 * 3 * 5 * 5), [2, 3, 5, 5]);
    const error = await model.forward(input).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TorchError);
    expect(error).toMatchObject({ code: 'TORCH_DTYPE' });
    expect((error as Error).message).toMatch(/^Input type \(double\) and bias type \(float\) should be the same\. The input is float64 but the model's weights are float32: build the input from a Float32Array, or convert it with `input\.to\('float32'\)`$/);
  });
});
