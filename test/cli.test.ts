import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import sharp from 'sharp';
import { beforeAll, describe, expect, it } from 'vitest';

import { isHeldOut, readLanguages } from '../src/cli/fortunes';
import { data, loadPretrained, text } from '../src';
import { fixture, hasTorch, python, root } from './helpers';

const cli = (...args: string[]) => spawnSync('node', [join(root, 'lib', 'cli', 'main.js'), ...args], { encoding: 'utf8', cwd: work });
const hasFashion = existsSync('/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz');
const work = mkdtempSync(join(tmpdir(), 'torchlite-cli-'));

/** Python's torch.jit.load reads the file and runs it on zeros of the metadata's input shape. */
function pythonRuns(model: string): number[] {
  return JSON.parse(python(`import sys, json, torch
m = torch.jit.load(sys.argv[1]).eval()
print(json.dumps(list(m(torch.zeros(2, 1, 28, 28)).shape)))`, [model]));
}

describe.skipIf(!hasFashion)('torchlite demo', () => {
  it('compares head-only, fine-tuning and scratch, saves a model Python loads, and writes a report', () => {
    const { status, stdout } = cli('demo', '--quick', '--out', 'demo.pt', '--report', 'demo.html');
    expect(status).toBe(0);
    expect(stdout).toMatch(/^approach +test accuracy +steps to 80\.0% +time$/m);
    for (const name of ['head only', 'fine-tune (gradual unfreezing)', 'from scratch']) expect(stdout).toMatch(new RegExp(`^${name.replace(/[()]/g, '\\$&')} +\\d+\\.\\d% +(never|\\d+) +\\d+\\.\\ds$`, 'm'));
    const accuracy = Number(/^fine-tune \(gradual unfreezing\) +(\d+\.\d)%/m.exec(stdout)![1]);
    expect(accuracy).toBeGreaterThan(60); // 5 quick epochs on 200 images (74.6% here, deterministic on the CPU); chance is 20
    expect(stdout).toMatch(/^test image 1 +true: \S.* +top-3: .+%, .+%, .+%$/m);
    const html = readFileSync(join(work, 'demo.html'), 'utf8');
    expect(html).toContain('<svg');
    expect(html).toContain('Confusion matrix');
    if (hasTorch) expect(pythonRuns(join(work, 'demo.pt'))).toEqual([2, 5]);
  });
});

describe('torchlite demo --data-dir', () => {
  it('reads Fashion-MNIST-style IDX files from that folder', () => {
    const dir = join(work, 'idx');
    mkdirSync(dir);
    for (const split of ['train', 't10k'])
      for (const [kind, n] of [['images', 3], ['labels', 1]] as const)
        symlinkSync(fixture(`fashion-5to9-${split}-${kind}.idx.gz`), join(dir, `${split}-${kind}-idx${n}-ubyte.gz`));
    const { status, stdout, stderr } = cli('demo', '--quick', '--data-dir', dir, '--out', 'idx.pt', '--report', 'idx.html');
    expect(stderr).not.toContain('torchlite:');
    expect(status).toBe(0);
    expect(stdout).toContain('with 200 labelled images, 5 epochs, testing on 200 images');
  });
});

describe.skipIf(!hasFashion)('torchlite finetune, eval and predict on an image folder', () => {
  const folder = join(work, 'images');
  beforeAll(async () => {
    const images = await data.readIdx(fixture('fashion-5to9-train-images.idx.gz'));
    const labels = await data.readIdx(fixture('fashion-5to9-train-labels.idx.gz'));
    const names = ['sandal', 'shirt', 'sneaker', 'bag', 'boot'];
    for (let i = 0; i < labels.shape[0]; i++) {
      const dir = join(folder, names[labels.data[i] - 5]);
      mkdirSync(dir, { recursive: true });
      await sharp(Buffer.from(images.data.subarray(i * 784, (i + 1) * 784)), { raw: { width: 28, height: 28, channels: 1 } }).png().toFile(join(dir, `${i}.png`));
    }
  });

  it('fine-tunes the shipped model on PNG folders and saves a model with class names', () => {
    const { status, stdout, stderr } = cli('finetune', '--model', join(root, 'models', 'fashion-cnn.pt'), '--data', folder, '--epochs', '3', '--lr', '0.01', '--out', 'ft.pt', '--report', 'ft.html', '--json');
    expect(stderr).toBe('');
    expect(status).toBe(0);
    const result = JSON.parse(stdout);
    expect(result.classes).toEqual(['bag', 'boot', 'sandal', 'shirt', 'sneaker']);
    expect(result.history).toHaveLength(4);
    expect([result.freezeEpochs, result.epochs]).toEqual([1, 3]); // --epochs given: nothing scaled
    expect(result.featureCache).toMatchObject({ used: true }); // its dropout sits right before the head: replayed on the cache
    expect(result.final.accuracy).toBeGreaterThan(0.5); // 50 validation images; chance is 0.2
    expect(readFileSync(join(work, 'ft.html'), 'utf8')).toContain('Learning rate');
    if (hasTorch) expect(pythonRuns(join(work, 'ft.pt'))).toEqual([2, 5]);

    const predicted = cli('predict', 'ft.pt', join(folder, 'bag', readdirSync(join(folder, 'bag'))[0]), '--top', '2');
    expect(predicted.status).toBe(0);
    expect(predicted.stdout).toMatch(/\.png: (bag|boot|sandal|shirt|sneaker) \d+\.\d%, (bag|boot|sandal|shirt|sneaker) \d+\.\d%$/m);

    const evaluated = cli('eval', 'ft.pt', '--data', folder, '--json');
    expect(evaluated.status).toBe(0);
    expect(JSON.parse(evaluated.stdout).confusionMatrix).toHaveLength(5);
    // eval scores with the loss training reported (label smoothing 0.1), and says so.
    expect(cli('eval', 'ft.pt', '--data', folder).stdout).toMatch(/^loss +\d+\.\d{4} \(cross-entropy with label smoothing 0\.1, as in training\)$/m);
  });

  it('scores a folder by the model\'s class names, and refuses classes or inputs it cannot place', async () => {
    // ft.pt from the test above knows bag, boot, sandal, shirt, sneaker (in that order).
    const some = join(work, 'some');
    for (const name of ['sneaker', 'bag']) {
      mkdirSync(join(some, name), { recursive: true });
      for (const file of readdirSync(join(folder, name)).slice(0, 10)) symlinkSync(join(folder, name, file), join(some, name, file));
    }
    const scored = cli('eval', 'ft.pt', '--data', some, '--json');
    expect(scored.stderr).toBe('');
    const result = JSON.parse(scored.stdout);
    expect(result.classes).toEqual(['bag', 'sneaker']); // rows in the model's order, not the folder's
    expect(result.confusionMatrix.map((row: number[]) => row.reduce((a, b) => a + b, 0))).toEqual([10, 10]);
    expect(result.accuracy).toBeCloseTo((result.confusionMatrix[0][0] + result.confusionMatrix[1][1]) / 20, 10);

    mkdirSync(join(some, 'hat'));
    symlinkSync(join(folder, 'bag', readdirSync(join(folder, 'bag'))[0]), join(some, 'hat', 'x.png'));
    const unknown = cli('eval', 'ft.pt', '--data', some);
    expect(unknown.status).toBe(1);
    expect(unknown.stderr.trim()).toBe("torchlite: the data has classes the model does not know: 'hat' (the model's are 'bag', 'boot', 'sandal', 'shirt', 'sneaker') [TORCHLITE_UNKNOWN_CLASSES]");

    // A model without an input spec: no silent 224 px guess.
    const bare = cli('predict', fixture('resnet_small.scripted.pt'), join(some, 'hat', 'x.png'));
    expect(bare.status).toBe(1);
    expect(bare.stderr).toContain('does not say how images become its input');
    expect(bare.stderr).toContain('pass --size');
    expect(bare.stderr).toContain('[TORCHLITE_NO_INPUT_SPEC]');
    const sized = cli('predict', fixture('resnet_small.scripted.pt'), join(some, 'hat', 'x.png'), '--size', '32', '--top', '1');
    expect(sized.stderr).toBe('');
    expect(sized.stdout).toMatch(/x\.png: \d+ \d+\.\d%$/m);
    // ...and without class names, a class-count mismatch is an error, not a 10×10 guess.
    const counted = cli('eval', fixture('resnet_small.scripted.pt'), '--data', some, '--size', '32');
    expect(counted.status).toBe(1);
    expect(counted.stderr).toContain('the model has 10 outputs and no class names in its metadata, but the data has 3 classes');
  });

  it('repeats a fine-tuning run exactly under the same --seed, at the default lr with no search', async () => {
    const run = (out: string, seed: string) => {
      const r = cli('finetune', '--model', join(root, 'models', 'fashion-cnn.pt'), '--data', folder, '--epochs', '1', '--freeze-epochs', '1', '--per-class', '20', '--seed', seed, '--out', out, '--json');
      expect(r.stderr).toBe(''); // --json prints no progress
      const { final, lr, lrFinder, search } = JSON.parse(r.stdout);
      return { final, lr, lrFinder, search };
    };
    const a = run('s1.pt', '3');
    expect([a.lr, a.lrFinder, a.search]).toEqual([0.01, undefined, undefined]);
    expect(run('s2.pt', '3')).toEqual(a);
    expect(run('s3.pt', '4').final.loss).not.toBe(a.final.loss); // another seed gives another model
    const weights = async (file: string) => {
      const m = await loadPretrained(join(work, file));
      const values = Array.from((await m.stateDict())['classifier.2.weight'].toTypedArray() as Float32Array);
      m.dispose();
      return values;
    };
    expect(await weights('s2.pt')).toEqual(await weights('s1.pt'));
    // --lr-search: says what it will run first, a line per trial as it ends, and how the lr and the BatchNorm policy were chosen.
    const told = cli('finetune', '--model', join(root, 'models', 'fashion-cnn.pt'), '--data', folder, '--epochs', '1', '--freeze-epochs', '1', '--per-class', '20', '--seed', '3', '--lr-search', '--out', 's4.pt');
    expect(told.stdout).toMatch(/^augmentation: none \(--augment none\|light\|default\)$/m); // 28 px images: no crops, no flips
    expect(told.stdout).toMatch(/^lr search: 8 trial lrs on 5 folds, 40 whole fine-tunes before the real one, roughly \d+ (s|min)$/m);
    expect(told.stderr.match(/^lr trial \d\/8 {2}lr \S+ (frozen-eval|eval) {2}held-out acc \d+\.\d% {2}loss \d+\.\d{4}( {2}at chance)?$/gm)).toHaveLength(8);
    expect(told.stdout).toMatch(/^lr \S+( under bnPolicy '(frozen-eval|eval)', the lowest held-out loss \+ 2 × error rate of 8 trials|, from the lr given \(or the default\): no trial)/m);
    // --bn-policy fixes the policy: five trials, none named, and the saved recipe records it.
    const fixed = cli('finetune', '--model', join(root, 'models', 'fashion-cnn.pt'), '--data', folder, '--epochs', '1', '--freeze-epochs', '1', '--per-class', '20', '--seed', '3', '--bn-policy', 'eval', '--lr-search', '--out', 's5.pt', '--json');
    const { bnPolicy, search } = JSON.parse(fixed.stdout);
    expect([bnPolicy, ...search.trials.map((t: { bnPolicy: string }) => t.bnPolicy)]).toEqual(Array(6).fill('eval'));
    const saved = await loadPretrained(join(work, 's5.pt'));
    expect((saved.metadata as { recipe: { bnPolicy: string } }).recipe.bnPolicy).toBe('eval');
    saved.dispose();
  });

  it('says when no held-out trial beat chance, and trains at the centre lr', () => {
    // Labels that say nothing of the images: every other image of each class in 'odd', the rest
    // in 'even'. The split and --per-class leave 19 of the 34 held-out training samples in one class.
    const noise = join(work, 'noise');
    for (const name of readdirSync(folder))
      readdirSync(join(folder, name)).forEach((file, k) => {
        mkdirSync(join(noise, k % 2 ? 'odd' : 'even'), { recursive: true });
        symlinkSync(join(folder, name, file), join(noise, k % 2 ? 'odd' : 'even', `${name}-${file}`));
      });
    const r = cli('finetune', '--model', join(root, 'models', 'fashion-cnn.pt'), '--data', noise, '--epochs', '1', '--freeze-epochs', '1', '--per-class', '20', '--seed', '3', '--lr-search', '--out', 's6.pt');
    expect(r.status).toBe(0);
    expect(r.stderr).toMatch(/\[TORCHLITE_NO_SIGNAL\] Warning: lrSearch: no trial did better on its 34 held-out samples than always answering the commonest class \(55\.9%; the best trial reached \d+\.\d%\), so fineTune trains at lr 1\.00e-2 under bnPolicy 'frozen-eval'\./);
    expect(r.stdout).toMatch(/^lr 1\.00e-2, from the lr given \(or the default\): no trial did better on its 34 held-out samples than always answering the commonest class \(55\.9%; the best trial reached \d+\.\d%\), 5 folds \((\S+ (frozen-eval|eval) loss \d+\.\d{3} \(\d+\.\d%, at chance\)(, )?){8}\)$/m);
  });
});

describe('torchlite CLI', () => {
  it('inspect prints the table, the head, the archive kind and the metadata', () => {
    const { status, stdout } = cli('inspect', join(root, 'models', 'fashion-cnn.pt'));
    expect(status).toBe(0);
    expect(stdout).toContain('FashionCNN (scripted, cpu, eval mode)');
    expect(stdout).toContain('Total params:     38,829');
    expect(stdout).toContain('Classifier head: classifier.2 (Linear, 325 params)');
    expect(stdout).toContain('Archive: scripted (torch.jit.script)');
    expect(stdout).toContain('"T-shirt/top"');
    const json = JSON.parse(cli('inspect', '--json', fixture('mlp.traced.pt')).stdout);
    expect(json.traced).toBe(true);
    expect(json.head).toBe('net.4');
  });

  it('bad flags exit 2 with one line; failures exit 1 with the code', () => {
    const bad = cli('demo', '--budget', '0');
    expect(bad.status).toBe(2);
    expect(bad.stderr.trim()).toBe("torchlite: Expected a positive integer for `--budget` but received '0'");
    const unknown = cli('demo', '--nope');
    expect(unknown.status).toBe(2);
    expect(unknown.stderr).toContain("error: unknown option '--nope'");
    const missing = cli('inspect', '/nonexistent.pt');
    expect(missing.status).toBe(1);
    expect(missing.stderr.trim()).toBe('torchlite: no such file: /nonexistent.pt [TORCHLITE_FILE_NOT_FOUND]');
    const noData = cli('finetune', '--model', join(root, 'models', 'fashion-cnn.pt'), '--data', join(work, 'nowhere'));
    expect(noData.status).toBe(1);
    expect(noData.stderr).toMatch(/^torchlite: cannot read image folder .*nowhere.* \[TORCHLITE_FILE_NOT_FOUND\]$/m);
    const cache = cli('finetune', '--model', join(root, 'models', 'fashion-cnn.pt'), '--data', work, '--cache-features', 'maybe');
    expect(cache.status).toBe(2);
    expect(cache.stderr.trim()).toBe("torchlite: Expected one of auto, on, off for `--cache-features` but received 'maybe'");
    const policy = cli('finetune', '--model', join(root, 'models', 'fashion-cnn.pt'), '--data', work, '--bn-policy', 'frozen');
    expect(policy.status).toBe(2);
    expect(policy.stderr.trim()).toBe("torchlite: Expected one of auto, frozen-eval, eval, train for `--bn-policy` but received 'frozen'");
    const ranks = cli('run', '--nproc', '0', 'train.mjs');
    expect(ranks.status).toBe(2);
    expect(ranks.stderr.trim()).toBe("torchlite: Expected a positive integer for `--nproc` but received '0'");
    const version = cli('--version');
    expect(version.status).toBe(0);
    expect(version.stdout.trim()).toMatch(/^torchlite \d+\.\d+\.\d+ \(LibTorch \d+\.\d+\.\d+\)$/);
    const help = cli('finetune', '--help');
    expect(help.status).toBe(0);
    expect(help.stdout).toContain('Examples:');
  });
});

describe('torchlite with text', () => {
  const TEXT_MODEL = join(root, 'models', 'fortunes-encoder.pt');
  const words = { food: ['pizza', 'bread', 'soup', 'cheese'], law: ['court', 'judge', 'lawyer', 'jury'], sports: ['goal', 'ball', 'match', 'team'] };
  const rows = Object.entries(words).flatMap(([label, ws]) => ws.flatMap((w, i) => [`the ${w} was ${ws[(i + 1) % 4]}`, `a ${w} and a ${ws[(i + 2) % 4]}`].map((text) => ({ text, label }))));

  it('fine-tunes the shipped text encoder on JSONL, predicts texts from arguments and stdin, and evaluates a CSV', () => {
    writeFileSync(join(work, 'topics.jsonl'), rows.map((r) => JSON.stringify(r)).join('\n'));
    writeFileSync(join(work, 'topics.csv'), `text,label\n${rows.map((r) => `"${r.text}",${r.label}`).join('\n')}\n`);
    const tuned = cli('finetune', '--model', TEXT_MODEL, '--data', 'topics.jsonl', '--val', 'topics.csv', '--freeze-epochs', '1', '--epochs', '3', '--lr', '0.01', '--batch-size', '8', '--out', 'topics.pt', '--json');
    expect(tuned.stderr).toBe('');
    const result = JSON.parse(tuned.stdout) as { classes: string[]; featureCache: { used: boolean; reason: string } };
    expect(result.classes).toEqual(['food', 'law', 'sports']);
    expect(result.featureCache).toEqual({ used: false, reason: "the model's inputs are not one tensor a sample (the cache covers image-like inputs)" });
    const predicted = cli('predict', 'topics.pt', 'the judge and the jury', 'pizza and soup', '--top', '1', '--json');
    const answers = JSON.parse(predicted.stdout) as { text: string; top: { label: string }[] }[];
    expect(answers.map((a) => a.text)).toEqual(['the judge and the jury', 'pizza and soup']);
    const piped = spawnSync('node', [join(root, 'lib', 'cli', 'main.js'), 'predict', 'topics.pt', '--top', '2'], { encoding: 'utf8', cwd: work, input: 'a ball and a goal\n\nthe court\n' });
    expect(piped.stdout.trim().split('\n').map((l) => l.replace(/:.*/, ''))).toEqual(['a ball and a goal', 'the court']);
    expect(piped.stdout).toMatch(/^the court: (food|law|sports) \d+\.\d%, (food|law|sports) \d+\.\d%$/m);
    const scored = cli('eval', 'topics.pt', '--data', 'topics.csv', '--json');
    const metrics = JSON.parse(scored.stdout) as { accuracy: number; classes: string[] };
    expect(metrics.classes).toEqual(['food', 'law', 'sports']);
    expect(metrics.accuracy).toBeGreaterThan(0.5); // the training texts themselves; chance is 1/3
  });

  it('reads the fortune databases by language, prose files only, and names the package a missing language needs', () => {
    const dir = join(work, 'fortunes');
    mkdirSync(join(dir, 'it'), { recursive: true });
    mkdirSync(join(dir, 'it', 'off'));
    writeFileSync(join(dir, 'it', 'luke'), 'Il solo vero realista\n\te\' il visionario.\n%\nSecondo  detto\n%\n');
    writeFileSync(join(dir, 'it', 'luke.dat'), 'binary index');
    writeFileSync(join(dir, 'it', 'banner'), '#####\n%\n');
    symlinkSync('luke', join(dir, 'it', 'luke.u8'));
    expect(readLanguages(['italian'], dir)).toEqual([
      { text: "Il solo vero realista e' il visionario.", label: 'italian' },
      { text: 'Secondo detto', label: 'italian' },
    ]);
    expect(() => readLanguages(['german'], dir)).toThrow(
      expect.objectContaining({ code: 'TORCHLITE_FILE_NOT_FOUND', message: `${join(dir, 'de')} does not exist: install the german fortunes (apt-get install fortunes-de), or pass --data-dir` }),
    );
  });

  it('holds one fortune in five out of the pretraining, by its text alone', () => {
    const texts = Array.from({ length: 5000 }, (_, i) => `fortune number ${i}`);
    const held = texts.filter(isHeldOut).length;
    expect(held).toBeGreaterThan(900);
    expect(held).toBeLessThan(1100);
    // FNV-1a of the text, as Python computes it: the split never depends on file order.
    expect(texts.slice(0, 40).flatMap((t, i) => (isHeldOut(t) ? [i] : []))).toEqual([6, 8, 17, 20, 25, 31]);
  });

  it.skipIf(!existsSync('/usr/share/games/fortunes/de'))('demo text compares head-only, fine-tuning and scratch at telling languages apart and saves a text model', async () => {
    const run = cli('demo', 'text', '--quick', '--json', '--out', 'demo-text.pt');
    expect(run.stderr).toBe('');
    const result = JSON.parse(run.stdout) as { perClass: number; train: number; test: number; outcomes: { name: string; accuracy: number }[]; claims: string[]; examples: { label: string }[] };
    expect([result.perClass, result.train, result.test]).toEqual([8, 32, 80]);
    expect(result.outcomes.map((o) => o.name)).toEqual(['head only', 'fine-tune', 'from scratch']);
    // 3 quick epochs on 8 fortunes a language: 82.5% fine-tuned, 25.0% (chance) from scratch here.
    const [head, tune, scratch] = result.outcomes.map((o) => o.accuracy);
    expect(tune).toBeGreaterThan(0.7);
    expect(tune - scratch).toBeGreaterThan(0.2);
    expect(tune).toBeGreaterThan(head);
    expect(result.examples.map((e) => e.label)).toEqual(['english', 'german', 'spanish', 'italian']);
    expect(result.claims[0]).toMatch(/^Better results: the pretrained encoder beats the same model trained from scratch by \d+\.\d points with the same 32 fortunes and epochs\.$/);
    await using saved = await loadPretrained(join(work, 'demo-text.pt'));
    expect((saved.metadata as { classes: string[] }).classes).toEqual(['english', 'german', 'spanish', 'italian']);
    expect(text.tokenizerOf(saved)?.maxLength).toBe(64);
  });

  it('demo text refuses a --model without a tokenizer', () => {
    const run = cli('demo', 'text', '--model', join(root, 'models', 'fashion-cnn.pt'), '--quick');
    expect(run.status).toBe(1);
    expect(run.stderr.trim()).toBe(`torchlite: ${join(root, 'models', 'fashion-cnn.pt')} has no tokenizer in its metadata (\`text\`): --model takes a text encoder that scripts/text/pretrain.mjs wrote [TORCHLITE_NO_INPUT_SPEC]`);
  });

  it('inspect sums up the tokenizer a text model carries', () => {
    expect(cli('inspect', TEXT_MODEL).stdout).toContain('"tokenizer": "<tokenizer.json: WordPiece, 6,000 pieces; --json prints it whole>"');
  });

  it('asks for a tokenizer when the model has none, and names a bad row', () => {
    const bare = cli('finetune', '--model', fixture('encoder.scripted.pt'), '--data', 'topics.jsonl');
    expect(bare.status).toBe(1);
    expect(bare.stderr.trim()).toBe(`torchlite: ${fixture('encoder.scripted.pt')} has no tokenizer in its metadata (\`text\`); pass --tokenizer tokenizer.json, or export it with scripts/export_model.py --text [TORCHLITE_NO_INPUT_SPEC]`);
    writeFileSync(join(work, 'broken.jsonl'), '{"text": "a", "label": "x"}\n{"text": 3, "label": "y"}\n');
    const broken = cli('finetune', '--model', TEXT_MODEL, '--data', 'broken.jsonl');
    expect(broken.status).toBe(2);
    expect(broken.stderr.trim()).toBe('torchlite: broken.jsonl:2: the row has no text in "text"; fix it, or skip bad rows (skipBadRows: true, or --skip-bad-rows) [TORCHLITE_BAD_DATA]');
  });
});
