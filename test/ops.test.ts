import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadPretrained, ops, type Tensor, tensor, torchVersion } from '../src';
import { native } from '../src/native';
import { hasTorch, hasTorchvision, python, pythonScript } from './helpers';

const dir = mkdtempSync(join(tmpdir(), 'torchlite-ops-'));
// torchvision's ops are found for this LibTorch only when the torchvision beside it is built for it.
const systemTorch = /^\/(usr\/)?lib\//.test(native.torchLibraryPath() ?? '');

describe('custom-op libraries', () => {
  it.runIf(hasTorchvision && systemTorch)("finds torchvision's ops by itself: a model calling torchvision::nms loads and agrees with Python", async () => {
    const boxes = [0, 0, 10, 10, 1, 1, 11, 11, 20, 20, 30, 30, 21, 21, 29, 31, 0, 0, 5, 5];
    const scores = [0.9, 0.8, 0.7, 0.95, 0.3];
    // From a file: torch.jit.script needs the module's source.
    writeFileSync(
      join(dir, 'nms.py'),
      `import sys, json, torch, torchvision
def keep(boxes: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    return torchvision.ops.nms(boxes, scores, 0.5)
class Nms(torch.nn.Module):
    def forward(self, boxes: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return torch.ops.torchvision.nms(boxes, scores, 0.5)
torch.jit.script(Nms()).save(sys.argv[1])
b = torch.tensor(${JSON.stringify(boxes)}, dtype=torch.float32).view(-1, 4)
print(json.dumps(keep(b, torch.tensor(${JSON.stringify(scores)})).tolist()))`,
    );
    const expected = JSON.parse(python('import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name="__main__")', [join(dir, 'nms.py'), join(dir, 'nms.pt')]));
    await using model = await loadPretrained(join(dir, 'nms.pt'));
    const kept = await model.forward<Tensor>(tensor(boxes, [5, 4]), tensor(scores));
    expect(Array.from(kept.toTypedArray() as BigInt64Array, Number)).toEqual(expected);
    expect(ops.loaded().some((file) => /torchvision\/_C.*\.so$/.test(file))).toBe(true);
  });

  it('refuses what it cannot load, with coded errors that say why', async () => {
    await expect(ops.load(join(dir, 'missing.so'))).rejects.toMatchObject({ code: 'TORCHLITE_FILE_NOT_FOUND' });
    writeFileSync(join(dir, 'other.so'), Buffer.from('\x7fELF....libtorch_cpu.so.9.9\0....', 'latin1'));
    await expect(ops.load(join(dir, 'other.so'))).rejects.toMatchObject({
      code: 'TORCHLITE_OPS_LOAD',
      message: expect.stringMatching(new RegExp(`is built for libtorch_cpu\\.so\\.9\\.9, but torchlite runs on libtorch_cpu\\.so.* \\(LibTorch ${torchVersion.replace(/\./g, '\\.')}\\); install the build of that library that matches LibTorch`)),
    });
    writeFileSync(join(dir, 'garbage.so'), 'not a library');
    await expect(ops.load(join(dir, 'garbage.so'))).rejects.toMatchObject({ code: 'TORCHLITE_OPS_LOAD', message: expect.stringContaining('cannot load the op library') });
    await expect(ops.load(42 as never)).rejects.toThrow(new TypeError("Expected a non-empty string for `path` but received 42"));
  });
});

// A model saved by a newer PyTorch: its code calls an aten operator that LibTorch 1.13 lacks
// (added in PyTorch 2.2). Made from a 1.13 archive whose code is edited to call it.
const NEWER = `import sys, torch, zipfile
class M(torch.nn.Module):
    def forward(self, x):
        return torch.relu(x)
torch.jit.script(M()).save(sys.argv[1] + '.base')
src = zipfile.ZipFile(sys.argv[1] + '.base')
out = zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_STORED)
for info in src.infolist():
    data = src.read(info.filename)
    if info.filename.endswith('.py'):
        data = data.replace(b'torch.relu(', b'torch._scaled_dot_product_flash_attention_for_cpu(')
    out.writestr(info, data)
out.close()
`;

describe('an operator this LibTorch lacks', () => {
  it.runIf(hasTorch && torchVersion.startsWith('1.'))('names the operator and the LibTorch to build against', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'torchlite-newer-'));
    pythonScript(NEWER, [join(dir, 'newer.pt')]);
    await expect(loadPretrained(join(dir, 'newer.pt'))).rejects.toMatchObject({
      code: 'TORCH_UNKNOWN_OP',
      message: `the model uses the operator aten::_scaled_dot_product_flash_attention_for_cpu, which is not registered: LibTorch ${torchVersion} does not have aten::_scaled_dot_product_flash_attention_for_cpu, which a newer PyTorch added: build torchlite against the LibTorch of the PyTorch that saved the model (LIBTORCH=/path/to/libtorch npm run build:native; see docs/building.md). (Unknown builtin op: aten::_scaled_dot_product_flash_attention_for_cpu.)`,
    });
  });
});
