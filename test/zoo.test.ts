// The architecture zoo and weights by name: torchvision's classes shipped as archives without
// weights, filled from safetensors files that Python wrote, and written back for Python.
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { beforeAll, describe, expect, it } from 'vitest';

import sharp from 'sharp';

import { data, loadPretrained, loss, manualSeed, optim, tensor, TorchError } from '../src';
import { fixture, hasTorchvision, PYTHON, readF32, relativeDiff, root } from './helpers';

const dir = mkdtempSync(join(tmpdir(), 'torchlite-zoo-'));
const FAST = ['resnet18', 'mobilenet_v3_small'];
let shapes: Record<string, number[]> = {};

beforeAll(() => {
  // One Python process for the file: random weights, inputs and eager outputs for each architecture.
  const r = spawnSync(PYTHON, [join(root, 'scripts', 'fixtures', 'zoo_parity.py'), dir, '64', ...FAST], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`zoo_parity.py failed: ${r.stderr}`);
  shapes = JSON.parse(r.stdout);
});

describe.skipIf(!hasTorchvision)('the zoo', () => {
  it.for(FAST)("%s from safetensors gives Python eager's outputs within 1e-5, with torchvision's metadata", async (name) => {
    await using model = await loadPretrained(`torchvision:${name}`, { weights: join(dir, `${name}.safetensors`) });
    const meta = model.metadata as { classes: string[]; input: { shape: number[]; mean: number[] }; zoo: { architecture: string } };
    expect(meta.zoo.architecture).toBe(name);
    expect(meta.classes).toHaveLength(1000);
    expect(meta.classes[0]).toBe('tench');
    expect(meta.input.shape).toEqual([3, 224, 224]);
    expect(model.training).toBe(false);
    const out = await model.forward(tensor(readF32(join(dir, `${name}.input.f32`)), shapes[name]));
    expect(relativeDiff((out as ReturnType<typeof tensor>).toTypedArray() as Float32Array, readF32(join(dir, `${name}.output.f32`)))).toBeLessThan(1e-5);
  });

  it.for(FAST)("%s from torch.save's .pth gives the same outputs as from safetensors", async (name) => {
    await using model = await loadPretrained(`torchvision:${name}`, { weights: join(dir, `${name}.pth`) });
    const out = await model.forward(tensor(readF32(join(dir, `${name}.input.f32`)), shapes[name]));
    expect(relativeDiff((out as ReturnType<typeof tensor>).toTypedArray() as Float32Array, readF32(join(dir, `${name}.output.f32`)))).toBeLessThan(1e-5);
  });

  it("reads torchvision's published weights from torch.hub's cache, as Python left them", async () => {
    const previous = process.env.TORCH_HOME;
    process.env.TORCH_HOME = join(dir, 'hub-home');
    mkdirSync(join(dir, 'hub-home', 'hub', 'checkpoints'), { recursive: true });
    copyFileSync(join(dir, 'resnet18.pth'), join(dir, 'hub-home', 'hub', 'checkpoints', 'resnet18-f37072fd.pth'));
    try {
      await using model = await loadPretrained('torchvision:resnet18'); // weights: 'DEFAULT'
      const out = await model.forward(tensor(readF32(join(dir, 'resnet18.input.f32')), shapes.resnet18));
      expect(relativeDiff((out as ReturnType<typeof tensor>).toTypedArray() as Float32Array, readF32(join(dir, 'resnet18.output.f32')))).toBeLessThan(1e-5);
    } finally {
      if (previous === undefined) delete process.env.TORCH_HOME;
      else process.env.TORCH_HOME = previous;
    }
  });

  it("saveWeights writes Python's names and torchlite's metadata; Python loads them into the eager model and agrees", async () => {
    await using model = await loadPretrained('torchvision:resnet18', { weights: join(dir, 'resnet18.safetensors') });
    const x = tensor(readF32(join(dir, 'resnet18.input.f32')), shapes.resnet18);
    model.train();
    const opt = optim.sgd(model, { lr: 0.05, momentum: 0.9 });
    for (let i = 0; i < 3; i++) await model.trainStep(x, tensor(BigInt64Array.from([1n, 7n])), { loss: loss.crossEntropy(), optimizer: opt });
    model.eval();
    const ours = (await model.forward(x)) as ReturnType<typeof tensor>;
    writeFileSync(join(dir, 'ours.f32'), Buffer.from((ours.toTypedArray() as Float32Array).buffer));
    const file = join(dir, 'tuned.safetensors');
    await model.saveWeights(file, { metadata: { note: 'three steps' } });
    const check = spawnSync(
      PYTHON,
      [
        '-c',
        `import json, sys, numpy, torch, torchvision
sys.path.insert(0, ${JSON.stringify(join(root, 'scripts', 'fixtures'))})
from safetensors_io import load_file
tensors, meta = load_file(sys.argv[1])
m = torchvision.models.resnet18().eval()
m.load_state_dict(tensors, strict=True)
x = torch.from_numpy(numpy.fromfile(sys.argv[2], dtype="<f4").reshape(2, 3, 64, 64))
ours = torch.from_numpy(numpy.fromfile(sys.argv[3], dtype="<f4").reshape(2, 1000))
with torch.no_grad():
    y = m(x)
print(json.dumps({"diff": float((y - ours).abs().max() / ours.abs().max()), "meta": meta}))`,
        file,
        join(dir, 'resnet18.input.f32'),
        join(dir, 'ours.f32'),
      ],
      { encoding: 'utf8' },
    );
    expect(check.stderr).toBe('');
    const { diff, meta } = JSON.parse(check.stdout);
    expect(diff).toBeLessThan(1e-5);
    expect(meta.format).toBe('pt');
    expect(meta.note).toBe('three steps');
    expect(JSON.parse(meta.torchlite).classes).toHaveLength(1000);
  });

  it('names what does not fit; strict: false loads the rest, so a pretrained body takes a new head', async () => {
    await using small = await loadPretrained('torchvision:mobilenet_v3_small', { weights: 'none' });
    const error = await small.loadWeights(join(dir, 'resnet18.safetensors')).catch((e: TorchError) => e);
    expect(error).toBeInstanceOf(TorchError);
    expect((error as TorchError).code).toBe('TORCHLITE_WEIGHTS_MISMATCH');
    expect((error as TorchError).message).toMatch(/^\S+resnet18\.safetensors does not fit this model: \d+ missing \('features\.0\.0\.weight', .*; \d+ unexpected \('conv1\.weight', .*\. Nothing was loaded; pass strict: false to load the tensors that match \(a new head, say\)$/);
    await using tuned = await loadPretrained('torchvision:resnet18', { weights: join(dir, 'resnet18.safetensors') });
    tuned.resetClassifier(10);
    await tuned.saveWeights(join(dir, 'ten.safetensors'));
    await using body = await loadPretrained('torchvision:resnet18', { weights: join(dir, 'resnet18.safetensors') });
    const strictError = await body.loadWeights(join(dir, 'ten.safetensors')).catch((e: TorchError) => e);
    expect((strictError as TorchError).message).toContain("2 mis-shaped ('fc.weight': model [1000,512], file [10,512], 'fc.bias': model [1000], file [10])");
    const result = await body.loadWeights(join(dir, 'ten.safetensors'), { strict: false });
    expect(result.mismatched.map((m) => m.name)).toEqual(['fc.weight', 'fc.bias']);
    expect([result.missing, result.unexpected, result.loaded.length]).toEqual([[], [], 120]);
  });

  it("weights: 'none' draws PyTorch's default initialisation from the seeded generator, ready to train", async () => {
    manualSeed(5);
    await using a = await loadPretrained('torchvision:resnet18', { weights: 'none' });
    manualSeed(5);
    await using b = await loadPretrained('torchvision:resnet18', { weights: 'none' });
    const w = async (m: typeof a, name: string) => Array.from((await m.stateDict())[name].toTypedArray() as Float32Array);
    expect(await w(a, 'layer1.0.conv1.weight')).toEqual(await w(b, 'layer1.0.conv1.weight'));
    const conv = await w(a, 'layer1.0.conv1.weight');
    const bound = Math.sqrt(3) * Math.sqrt(2 / 6) / Math.sqrt(64 * 9); // kaiming_uniform(a=√5), fan-in 576
    expect(Math.max(...conv.map(Math.abs))).toBeLessThanOrEqual(bound);
    expect(Math.max(...conv.map(Math.abs))).toBeGreaterThan(bound * 0.9);
    expect(new Set(await w(a, 'bn1.weight'))).toEqual(new Set([1]));
    expect(new Set(await w(a, 'bn1.running_var'))).toEqual(new Set([1]));
    // The layout is chosen on the lane once the placeholders are filled: channels-last by default for convolutions, NCHW when asked.
    expect(a.memoryFormat).toBe('channelsLast');
    await using nchw = await loadPretrained('torchvision:resnet18', { weights: 'none', channelsLast: false });
    expect(nchw.memoryFormat).toBe('contiguous');
    a.train();
    const opt = optim.sgd(a, { lr: 0.01 });
    const { loss: l } = await a.trainStep(tensor(new Float32Array(2 * 3 * 32 * 32).fill(0.5), [2, 3, 32, 32]), tensor(BigInt64Array.from([0n, 1n])), { loss: loss.crossEntropy(), optimizer: opt });
    expect(Number.isFinite(l)).toBe(true);
  });

  it('reads float16, bfloat16 and sharded files, converting to the model\'s dtype unless asked to keep the file\'s', async () => {
    await using mlp = await loadPretrained(fixture('mlp.scripted.pt'));
    const before = (await mlp.stateDict());
    const half = await mlp.loadWeights(join(dir, 'mlp.f16.safetensors'));
    expect(half.metadata).toEqual({ note: 'half' });
    for (const [name, t] of Object.entries((await mlp.stateDict()))) {
      expect(t.dtype).toBe('float32');
      const want = Array.from(before[name].toTypedArray() as Float32Array);
      const got = Array.from(t.toTypedArray() as Float32Array);
      expect(relativeDiff(got, want)).toBeLessThan(1e-3); // float16's 11-bit mantissa
    }
    await mlp.loadWeights(join(dir, 'mlp.bf16.safetensors'), { keepDtype: true });
    expect(new Set(mlp.parameters().map((p) => p.dtype))).toEqual(new Set(['bfloat16']));
    const sharded = await mlp.loadWeights(join(dir, 'mlp.safetensors.index.json'));
    expect(sharded.loaded.sort()).toEqual(mlp.parameters().map((p) => p.name).sort());
  });

  it("prepares images `like` a zoo model as torchvision's eval transform does: the short side to 256, then the centre 224", async () => {
    await using model = await loadPretrained('torchvision:resnet18', { weights: 'none' });
    expect((model.metadata as { input: { resizeTo: number } }).input.resizeTo).toBe(256);
    const image = await sharp({ create: { width: 320, height: 300, channels: 3, background: { r: 10, g: 200, b: 90 } } }).png().toBuffer();
    const batch = await data.loadImage(image, { like: model });
    expect(batch.shape).toEqual([1, 3, 224, 224]);
    const plain = await data.loadImage(image, { like: model, size: 224 }); // a size given: resized to it, no larger pre-crop
    expect(plain.shape).toEqual([1, 3, 224, 224]);
    await expect(data.loadImage(image, { like: model, resizeTo: 0 })).rejects.toThrow(new RangeError('Expected a positive integer for `options.resizeTo` but received 0'));
  });

  it('refuses unknown names, uncached weights and torch.save files with what to do', async () => {
    await expect(loadPretrained('torchvision:resnet19')).rejects.toThrow(expect.objectContaining({ code: 'TORCHLITE_UNKNOWN_MODEL', message: expect.stringMatching(/^torchlite's zoo has no 'resnet19'; it has convnext_tiny, densenet121, /) }));
    const previous = { TORCH_HOME: process.env.TORCH_HOME, TORCHLITE_OFFLINE: process.env.TORCHLITE_OFFLINE };
    Object.assign(process.env, { TORCH_HOME: join(dir, 'torch-home'), TORCHLITE_OFFLINE: '1' });
    try {
      await expect(loadPretrained('torchvision:resnet18')).rejects.toThrow(
        expect.objectContaining({ code: 'TORCHLITE_NOT_CACHED', message: `offline (HF_HUB_OFFLINE or TORCHLITE_OFFLINE is set) and resnet18-f37072fd.pth is not in ${join(dir, 'torch-home', 'hub', 'checkpoints')}: fetch https://download.pytorch.org/models/resnet18-f37072fd.pth into it, or run \`torchlite pull\` where there is a network` }),
      );
      await expect(loadPretrained('torchvision:resnet18', { weights: 'IMAGENET1K_V9' })).rejects.toThrow(expect.objectContaining({ code: 'TORCHLITE_UNKNOWN_MODEL', message: "resnet18 has no weights 'IMAGENET1K_V9'; torchvision publishes IMAGENET1K_V1 (or pass 'none', or a .safetensors or .pth file)" }));
    } finally {
      for (const [key, value] of Object.entries(previous)) {
        if (value === undefined) delete process.env[key];
        else process.env[key] = value;
      }
    }
    await using mlp = await loadPretrained(fixture('mlp.scripted.pt'));
    writeFileSync(join(dir, 'legacy.pth'), Buffer.from([0x80, 0x02, 0x8a, 0x0a]));
    await expect(mlp.loadWeights(join(dir, 'legacy.pth'))).rejects.toThrow(expect.objectContaining({ code: 'TORCHLITE_UNSUPPORTED_FORMAT', message: expect.stringContaining("legacy (pre-1.6) format") }));
    writeFileSync(join(dir, 'short.safetensors'), Buffer.from([200, 0, 0, 0, 0, 0, 0, 0, 123]));
    await expect(mlp.loadWeights(join(dir, 'short.safetensors'))).rejects.toThrow(expect.objectContaining({ code: 'TORCHLITE_CORRUPT_FILE' }));
    await expect(mlp.loadWeights(join(dir, 'absent.safetensors'))).rejects.toThrow(expect.objectContaining({ code: 'TORCHLITE_FILE_NOT_FOUND' }));
    // saveWeights writes as save() does: a missing folder and a folder in the way are coded errors, and nothing is left behind.
    await expect(mlp.saveWeights(join(dir, 'no-such-folder', 'w.safetensors'))).rejects.toThrow(expect.objectContaining({ code: 'TORCHLITE_FILE_NOT_FOUND', message: `no such directory: ${join(dir, 'no-such-folder')}` }));
    mkdirSync(join(dir, 'taken.safetensors'));
    await expect(mlp.saveWeights(join(dir, 'taken.safetensors'))).rejects.toThrow(expect.objectContaining({ code: 'TORCHLITE_IS_DIRECTORY' }));
    expect(readdirSync(dir).filter((f) => f.includes('.tmp'))).toEqual([]);
  });
});
