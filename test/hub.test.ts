// The Hub and torchvision's server on loopback: a node:http server answering the URL shapes
// @huggingface/hub and torch.hub request (resolve URLs, ETag and X-Repo-Commit headers, range
// requests), with files made here; the cache is huggingface_hub's layout.
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';

import { hubFile, loadPretrained, loss, manualSeed, optim, pull, tensor, text, TorchError } from '../src';
import { PYTHON, relativeDiff, root } from './helpers';

const COMMIT = 'c0ffee'.padEnd(40, '0');
const REPO = 'someone/tiny-resnet';
const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

/** Served files by repo path, and what the server did: the ranges of body requests, and how it should misbehave. */
const files = new Map<string, Buffer>();
const log: string[] = [];
const trouble = { cutFirst: false, corrupt: false, slow: false };
let server: Server;
let endpoint = '';
let weights: Buffer;
type TextCase = { ids: number[][]; mask: number[][]; logits: number[] };
let textRefs: { bert: TextCase; roberta: TextCase; distilbert: TextCase };
const config = {
  architecture: 'resnet18',
  num_classes: 3,
  label_names: ['ant', 'bee', 'wasp'],
  pretrained_cfg: { input_size: [3, 64, 64], mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25], crop_pct: 0.875 },
};

beforeAll(async () => {
  manualSeed(0);
  await using model = await loadPretrained('torchvision:resnet18', { weights: 'none' });
  model.resetClassifier(3);
  const dir = mkdtempSync(join(tmpdir(), 'torchlite-hub-src-'));
  await model.saveWeights(join(dir, 'model.safetensors'));
  weights = readFileSync(join(dir, 'model.safetensors'));
  files.set(`${REPO}/model.safetensors`, weights);
  files.set(`${REPO}/config.json`, Buffer.from(JSON.stringify(config)));
  server = createServer((req, res) => {
    const url = new URL(req.url!, 'http://x');
    const match = /^\/(\w[\w.-]*\/[\w.-]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname) ?? /^\/models\/(.+)$/.exec(url.pathname);
    const key = match && match.length === 4 ? `${match[1]}/${match[3]}` : match ? `torchvision/${match[1]}` : '';
    const data = files.get(key);
    if (!data) {
      res.writeHead(404, { 'X-Error-Code': 'EntryNotFound' }).end();
      return;
    }
    const lfs = key.endsWith('.safetensors') || key.startsWith('torchvision/');
    const headers: Record<string, string> = { 'X-Repo-Commit': COMMIT, ETag: `"${lfs ? sha256(data) : createHash('sha1').update(data).digest('hex')}"`, 'Accept-Ranges': 'bytes' };
    if (lfs) headers['X-Linked-ETag'] = `"${sha256(data)}"`;
    const range = /bytes=(\d+)-(\d*)/.exec(req.headers.range ?? '');
    const start = range ? Number(range[1]) : 0;
    const end = range && range[2] ? Number(range[2]) : data.length - 1;
    if (req.method === 'HEAD') {
      res.writeHead(200, { ...headers, 'Content-Length': String(data.length) }).end();
      return;
    }
    if (!(start === 0 && end === 0)) log.push(`${key} ${start}-`);
    let body = data.subarray(start, end + 1);
    if (trouble.corrupt) body = Buffer.from(body.map((b) => b ^ 0xff));
    res.writeHead(range ? 206 : 200, { ...headers, 'Content-Length': String(body.length), ...(range && { 'Content-Range': `bytes ${start}-${end}/${data.length}` }) });
    if (trouble.cutFirst && body.length > 1000) {
      trouble.cutFirst = false;
      res.write(body.subarray(0, Math.floor(body.length / 2)), () => res.destroy());
      return;
    }
    if (trouble.slow) {
      // In slices over ~1 s, so that two processes overlap.
      let at = 0;
      const timer = setInterval(() => {
        res.write(body.subarray(at, (at += Math.ceil(body.length / 10))));
        if (at >= body.length) {
          clearInterval(timer);
          res.end();
        }
      }, 100);
      return;
    }
    res.end(body);
  });
  // A tiny BERT classifier (and a BertModel checkpoint) that Python wrote, for the text zoo.
  const bertDir = mkdtempSync(join(tmpdir(), 'torchlite-hub-bert-'));
  const made = spawnSync(PYTHON, [join(root, 'scripts', 'fixtures', 'bert_parity.py'), bertDir], { encoding: 'utf8' });
  if (made.status !== 0) throw new Error(`bert_parity.py failed: ${made.stderr}`);
  textRefs = JSON.parse(made.stdout);
  for (const repo of ['tiny-bert', 'bare-bert', 'tiny-roberta', 'tiny-distilbert'])
    for (const file of readdirSync(join(bertDir, repo))) files.set(`someone/${repo}/${file}`, readFileSync(join(bertDir, repo, file)));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  endpoint = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
});
afterAll(() => server?.close());

let cache = '';
beforeEach(() => {
  cache = mkdtempSync(join(tmpdir(), 'torchlite-hub-cache-'));
  Object.assign(process.env, { HF_HUB_CACHE: cache, HF_ENDPOINT: endpoint, HF_HUB_OFFLINE: '0', TORCH_HOME: join(cache, 'torch'), TORCHLITE_TORCHVISION_MIRROR: `${endpoint}/models/` });
  log.length = 0;
  Object.assign(trouble, { cutFirst: false, corrupt: false, slow: false });
});

const folder = () => join(cache, 'models--someone--tiny-resnet');

describe('hf: names on a loopback Hub', () => {
  it("downloads into huggingface_hub's layout and loads a timm-style ResNet with its classes and preprocessing", async () => {
    await using model = await loadPretrained(`hf:${REPO}`);
    expect(readFileSync(join(folder(), 'refs', 'main'), 'utf8')).toBe(COMMIT);
    const blob = join(folder(), 'blobs', sha256(weights));
    expect(statSync(blob).size).toBe(weights.length);
    const pointer = join(folder(), 'snapshots', COMMIT, 'model.safetensors');
    expect(lstatSync(pointer).isSymbolicLink()).toBe(true);
    expect(readlinkSync(pointer)).toBe(join('..', '..', 'blobs', sha256(weights))); // relative, as huggingface_hub links
    expect(model.metadata).toMatchObject({ classes: ['ant', 'bee', 'wasp'], input: { shape: [3, 64, 64], mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25], resizeTo: 73 }, hub: { repo: REPO, revision: 'main' } });
    await using direct = await loadPretrained('torchvision:resnet18', { weights: 'none' });
    direct.resetClassifier(3);
    await direct.loadWeights(pointer);
    const x = tensor(Float32Array.from({ length: 2 * 3 * 64 * 64 }, (_, i) => Math.sin(i)), [2, 3, 64, 64]);
    const [a, b] = [await model.forward(x), await direct.forward(x)] as ReturnType<typeof tensor>[];
    expect(relativeDiff(a.toTypedArray() as Float32Array, b.toTypedArray() as Float32Array)).toBe(0);
    expect(log).toEqual([`${REPO}/config.json 0-`, `${REPO}/model.safetensors 0-`]);
    // A cache hit downloads nothing (a one-byte request checks the revision, as huggingface_hub's HEAD does).
    log.length = 0;
    await using again = await loadPretrained(`hf:${REPO}`);
    expect([log, again.metadata]).toEqual([[], model.metadata]);
  });

  it('resumes a download cut off half-way from where it stopped', async () => {
    trouble.cutFirst = true;
    const error = await hubFile(REPO, 'model.safetensors').catch((e: TorchError) => e);
    expect((error as TorchError).code).toBe('TORCHLITE_DOWNLOAD_FAILED');
    expect((error as TorchError).message).toMatch(/run it again to resume$/);
    const partial = join(folder(), 'blobs', `${sha256(weights)}.incomplete`);
    const half = statSync(partial).size;
    expect(half).toBeGreaterThan(0);
    expect(half).toBeLessThan(weights.length);
    const path = await hubFile(REPO, 'model.safetensors');
    expect(log).toEqual([`${REPO}/model.safetensors 0-`, `${REPO}/model.safetensors ${half}-`]);
    expect(sha256(readFileSync(path!))).toBe(sha256(weights));
    expect(existsSync(partial)).toBe(false);
  });

  it("detects a corrupted download by the Hub's sha256 and keeps nothing of it", async () => {
    trouble.corrupt = true;
    await expect(hubFile(REPO, 'model.safetensors')).rejects.toThrow(expect.objectContaining({ code: 'TORCHLITE_CORRUPT_FILE', message: expect.stringContaining(`not ${sha256(weights)}; it was removed, run it again`) }));
    expect(existsSync(join(folder(), 'blobs', sha256(weights)))).toBe(false);
    expect(existsSync(join(folder(), 'blobs', `${sha256(weights)}.incomplete`))).toBe(false);
  });

  it('offline, reads the cache alone, and names a missing file and the cache folder', async () => {
    await hubFile(REPO, 'config.json');
    process.env.HF_HUB_OFFLINE = '1';
    log.length = 0;
    expect(await hubFile(REPO, 'config.json')).toBe(join(folder(), 'snapshots', COMMIT, 'config.json'));
    await expect(hubFile(REPO, 'model.safetensors')).rejects.toThrow(
      new TorchError('TORCHLITE_NOT_CACHED', `HF_HUB_OFFLINE is set and ${REPO}@main's model.safetensors is not in the cache (${folder()}); run \`torchlite pull hf:${REPO}\` where there is a network, or unset HF_HUB_OFFLINE`),
    );
    expect(log).toEqual([]);
  });

  it('two processes loading the same model at once download it once, and both get it whole', async () => {
    trouble.slow = true;
    const script = `require(${JSON.stringify(join(root, 'lib'))}).pull('hf:${REPO}').then((f) => console.log(f.length), (e) => { console.error(e.message); process.exit(1); })`;
    const run = () =>
      new Promise<{ code: number | null; out: string }>((resolve) => {
        const child = spawn(process.execPath, ['-e', script], { env: process.env });
        let out = '';
        child.stdout.on('data', (d) => (out += d));
        child.stderr.on('data', (d) => (out += d));
        child.on('close', (code) => resolve({ code, out }));
      });
    const results = await Promise.all([run(), run()]);
    expect(results.map((r) => r.code)).toEqual([0, 0]);
    expect(log.filter((l) => l.startsWith(`${REPO}/model.safetensors`))).toHaveLength(1);
    expect(sha256(readFileSync(join(folder(), 'snapshots', COMMIT, 'model.safetensors')))).toBe(sha256(weights));
  });

  it("reads the preprocessing of a repository without timm's pretrained_cfg from transformers' preprocessor_config.json", async () => {
    files.set('someone/plain-resnet/config.json', Buffer.from(JSON.stringify({ architecture: 'resnet18', num_classes: 3 })));
    files.set('someone/plain-resnet/model.safetensors', weights);
    files.set('someone/plain-resnet/preprocessor_config.json', Buffer.from(JSON.stringify({ image_mean: [0.5, 0.4, 0.3], image_std: [0.2, 0.2, 0.2], size: { shortest_edge: 160 }, crop_size: { height: 128, width: 128 } })));
    await using model = await loadPretrained('hf:someone/plain-resnet');
    expect((model.metadata as { input: unknown }).input).toEqual({ shape: [3, 128, 128], mean: [0.5, 0.4, 0.3], std: [0.2, 0.2, 0.2], resize: 'center-crop', resizeTo: 160 });
  });

  it('says which architectures it can take', async () => {
    files.set('someone/gpt/config.json', Buffer.from(JSON.stringify({ model_type: 'gpt2', architectures: ['GPT2LMHeadModel'] })));
    await expect(loadPretrained('hf:someone/gpt')).rejects.toThrow(expect.objectContaining({ code: 'TORCHLITE_UNSUPPORTED_ARCHITECTURE', message: expect.stringMatching(/^someone\/gpt's config names GPT2LMHeadModel, which torchlite's zoo cannot take yet/) }));
    files.set('someone/deep-bert/config.json', Buffer.from(JSON.stringify({ model_type: 'bert', num_hidden_layers: 5 })));
    await expect(loadPretrained('hf:someone/deep-bert')).rejects.toThrow(expect.objectContaining({ code: 'TORCHLITE_UNSUPPORTED_ARCHITECTURE', message: "a BERT of 5 layers: torchlite's zoo has BERTs of 1, 2, 3, 4, 6, 8, 10, 12, 24 layers" }));
  });
});

describe("torchvision: names through torch.hub's cache", () => {
  it("downloads a published file into $TORCH_HOME/hub/checkpoints and checks the sha256 prefix in its name", async () => {
    // The server's resnet18-f37072fd.pth is not torchvision's: its hash cannot match the name's prefix.
    files.set('torchvision/resnet18-f37072fd.pth', weights);
    await expect(loadPretrained('torchvision:resnet18')).rejects.toThrow(expect.objectContaining({ code: 'TORCHLITE_CORRUPT_FILE', message: expect.stringContaining('resnet18-f37072fd.pth is corrupt: its sha256 is') }));
    expect(existsSync(join(cache, 'torch', 'hub', 'checkpoints', 'resnet18-f37072fd.pth'))).toBe(false);
  });

  it('pull fills the caches ahead of time', async () => {
    expect(await pull(`hf:${REPO}`)).toEqual([join(folder(), 'snapshots', COMMIT, 'config.json'), join(folder(), 'snapshots', COMMIT, 'model.safetensors')]);
    await expect(pull('resnet18')).rejects.toThrow(expect.objectContaining({ code: 'TORCHLITE_UNKNOWN_MODEL' }));
  });
});

describe('BERT text classifiers from the Hub', () => {
  const ids = (c: TextCase = textRefs.bert) => tensor(c.ids.flat(), [2, 7], { dtype: 'int64' });
  const mask = (c: TextCase = textRefs.bert) => tensor(c.mask.flat(), [2, 7], { dtype: 'int64' });

  it("sizes the zoo's BERT from config.json, skips the pretraining head, and gives Python's logits with its tokenizer and labels", async () => {
    await using model = await loadPretrained('hf:someone/tiny-bert');
    const out = (await model.forward(ids(), mask())) as ReturnType<typeof tensor>;
    expect(out.shape).toEqual([2, 3]);
    expect(relativeDiff(out.toTypedArray() as Float32Array, textRefs.bert.logits)).toBeLessThan(1e-5);
    expect(model.metadata).toMatchObject({ classes: ['neg', 'pos', 'neutral'], text: { maxLength: 40, inputs: ['input_ids', 'attention_mask'] }, zoo: { architecture: 'bert-L2' } });
    expect(text.tokenizerOf(model)!.encode(['hello world']).ids.shape[0]).toBe(1);
    expect(model.parameters().find((p) => p.name === 'bert.encoder.layer.1.intermediate.dense.weight')!.shape).toEqual([64, 32]);
  });

  it("fine-tunes, and Python loads the saved weights into the reference and agrees", async () => {
    manualSeed(0);
    await using model = await loadPretrained('hf:someone/tiny-bert');
    model.train();
    const opt = optim.adamw(model, { lr: 1e-3 });
    for (let i = 0; i < 3; i++) await model.trainStep([ids(), mask()], tensor(BigInt64Array.from([0n, 2n])), { loss: loss.crossEntropy(), optimizer: opt });
    model.eval();
    const ours = (await model.forward(ids(), mask())) as ReturnType<typeof tensor>;
    const dir = mkdtempSync(join(tmpdir(), 'torchlite-bert-out-'));
    await model.saveWeights(join(dir, 'tuned.safetensors'));
    writeFileSync(join(dir, 'case.json'), JSON.stringify({ ids: textRefs.bert.ids, mask: textRefs.bert.mask }));
    const check = spawnSync(
      PYTHON,
      [
        '-c',
        `import json, sys, torch
sys.path.insert(0, ${JSON.stringify(join(root, 'scripts', 'fixtures'))}); sys.path.insert(0, ${JSON.stringify(join(root, 'scripts', 'zoo'))})
from safetensors_io import load_file
import bert
from bert_parity import CONFIG
m = bert.BertForSequenceClassification(CONFIG).eval()
m.load_state_dict(load_file(sys.argv[1])[0], strict=True)
case = json.load(open(sys.argv[2]))
with torch.no_grad():
    print(json.dumps(m(torch.tensor(case["ids"]), torch.tensor(case["mask"])).flatten().tolist()))`,
        join(dir, 'tuned.safetensors'),
        join(dir, 'case.json'),
      ],
      { encoding: 'utf8' },
    );
    expect(check.stderr).toBe('');
    expect(relativeDiff(ours.toTypedArray() as Float32Array, JSON.parse(check.stdout))).toBeLessThan(1e-5);
    expect(relativeDiff(ours.toTypedArray() as Float32Array, textRefs.bert.logits)).toBeGreaterThan(1e-3); // it did train
  });

  it.for([
    { family: 'roberta', about: 'positions from the padding index, its dense/out_proj head; the unused pooler and lm_head skipped', classes: 2, metadata: { zoo: { architecture: 'roberta-L3' } } },
    { family: 'distilbert', about: 'its own config names; the masked-LM projector skipped', classes: 4, metadata: { classes: ['a', 'b', 'c', 'd'], zoo: { architecture: 'distilbert-L2' } } },
  ] as const)("sizes a $family ($about) and gives Python's logits", async ({ family, classes, metadata }) => {
    await using model = await loadPretrained(`hf:someone/tiny-${family}`);
    const r = textRefs[family];
    const out = (await model.forward(ids(r), mask(r))) as ReturnType<typeof tensor>;
    expect(out.shape).toEqual([2, classes]);
    expect(relativeDiff(out.toTypedArray() as Float32Array, r.logits)).toBeLessThan(1e-5);
    expect(model.metadata).toMatchObject(metadata);
  });

  it('loads a BertModel checkpoint (no prefix, no classifier) behind a fresh classifier', async () => {
    await using model = await loadPretrained('hf:someone/bare-bert');
    expect(model.parameters().find((p) => p.name === 'classifier.weight')!.shape).toEqual([2, 32]); // num_labels' default
    expect((model.metadata as { text?: unknown }).text).toBeUndefined(); // that repository has no tokenizer.json
    const out = (await model.forward(ids(), mask())) as ReturnType<typeof tensor>;
    expect(Array.from(out.toTypedArray() as Float32Array).every(Number.isFinite)).toBe(true);
  });
});

