import { type Augment, type BatchInput, type Callback, checkpoint, data, type Dataset, fineTune, type FineTuneHistory, loadPretrained, type Loss, loss as losses, manualSeed, progressBar } from '..';
import { type InputFlags, inputSpec, isTextData, loadDataset, loadTextDataset, parseClasses, type TextFlags, textTokenizer } from './data';
import { choiceFlag, intFlag, numberFlag } from './flags';
import { finetuneDetector, finetuneSegmenter } from './tasks';

const { loader, split, subset } = data;
import { stepRecorder, writeReport } from './report';

export interface FinetuneFlags extends InputFlags, TextFlags {
  model: string;
  task: string;
  masks?: string;
  data: string;
  val?: string;
  classes?: string;
  perClass?: string;
  epochs?: string;
  freezeEpochs?: string;
  lr?: string;
  weights?: string;
  lrSearch?: boolean;
  augment?: string;
  batchSize: string;
  device: string;
  out: string;
  report?: string;
  unfreeze?: string;
  checkpointDir?: string;
  resume?: string;
  seed: string;
  cacheFeatures: string;
  bnPolicy: string;
  json?: boolean;
}

export async function runFinetune(flags: FinetuneFlags): Promise<void> {
  const task = choiceFlag(flags.task, '--task', ['classify', 'detect', 'segment'] as const);
  if (task === 'detect') return finetuneDetector(flags);
  if (task === 'segment') return finetuneSegmenter(flags);
  const epochs = flags.epochs === undefined ? undefined : intFlag(flags.epochs, '--epochs', 0);
  const freezeEpochs = flags.freezeEpochs === undefined ? undefined : intFlag(flags.freezeEpochs, '--freeze-epochs', 0);
  const batchSize = intFlag(flags.batchSize, '--batch-size');
  const lr = flags.lr === undefined ? undefined : flags.lr === 'auto' ? 'auto' : numberFlag(flags.lr, '--lr');
  const augmentFlag = flags.augment === undefined ? undefined : choiceFlag(flags.augment, '--augment', ['none', 'light', 'default'] as const);
  const cacheFeatures = ({ auto: 'auto', on: true, off: false } as const)[choiceFlag(flags.cacheFeatures, '--cache-features', ['auto', 'on', 'off'] as const)];
  const bnPolicy = choiceFlag(flags.bnPolicy, '--bn-policy', ['auto', 'frozen-eval', 'eval', 'train'] as const);
  const classes = parseClasses(flags.classes);
  // The seed covers everything random: the new head's weights, dropout, the subset, the
  // validation split, shuffling and augmentation. The same command gives the same model.
  const seed = intFlag(flags.seed, '--seed', 0);
  manualSeed(seed);
  await using model = await loadPretrained(flags.model, { device: flags.device as 'cpu', ...(flags.weights && { weights: flags.weights }) });
  // Labelled texts for a text model, else images shaped by the model's input spec.
  const tokenizer = isTextData(flags.data, flags) ? await textTokenizer(model, flags, flags.model) : undefined;
  const input = tokenizer ? undefined : inputSpec(model, flags, flags.model);
  // Small images (digits, icons) lose their meaning to tight crops and mirrors: none by default.
  const augment: Augment = augmentFlag ?? (input !== undefined && input.shape[1] > 32 ? 'light' : 'none');
  const load = (spec: string, part: 'train' | 't10k', augmented: Augment = 'none', names?: string[]): Promise<Dataset<BatchInput>> =>
    tokenizer ? loadTextDataset(spec, model, tokenizer, flags, names) : loadDataset(spec, part, input!, { classes, augment: augmented });
  let train = await load(flags.data, 'train', augment);
  if (flags.perClass !== undefined) train = subset(train, { perClass: intFlag(flags.perClass, '--per-class'), seed });
  let val = flags.val ? await load(flags.val, 't10k', 'none', train.classes) : undefined;
  if (!val) {
    if (flags.data === 'fashion-mnist') val = await load(flags.data, 't10k');
    else ({ train, val } = split(train, { val: 0.1, seed }));
  }
  const names = train.classes ?? Array.from({ length: Math.max(...Array.from({ length: train.length }, (_, i) => train.target(i))) + 1 }, (_, i) => String(i));
  const trainLoader = loader(train, { batchSize, shuffle: true, seed });
  const valLoader = loader(val, { batchSize: 256 });
  const steps = stepRecorder();
  const labelSmoothing = 0.1;
  const loss: Loss = losses.crossEntropy({ labelSmoothing });
  const history = await fineTune(model, {
    train: trainLoader,
    val: valLoader,
    numClasses: names.length,
    freezeEpochs,
    epochs,
    ...(lr !== undefined && { lr }),
    lrSearch: flags.lrSearch === true,
    loss,
    unfreeze: flags.unfreeze ? flags.unfreeze.split(',') : 'all',
    cacheFeatures,
    bnPolicy,
    callbacks: [progressBar({ enabled: !flags.json, batchSize }), steps, ...(flags.json ? [] : [announceSearch]), ...(flags.checkpointDir ? [checkpoint({ dir: flags.checkpointDir })] : [])],
    ...(flags.resume && { resume: flags.resume }),
  });
  const lrLine = describeLr(history);
  const augmentLine = input && `augmentation: ${augment}${augmentFlag ? '' : ' (--augment none|light|default)'}`;
  const epochLine = `${history.freezeEpochs} epoch${history.freezeEpochs === 1 ? '' : 's'} with the body frozen, then ${history.epochs} unfrozen (${trainLoader.length} steps each)`;
  const cacheLine = history.featureCache?.used
    ? `head-only epochs on cached backbone features (${((history.featureCache.bytes ?? 0) / 2 ** 20).toFixed(1)} MB, computed in ${(history.featureCache.seconds ?? 0).toFixed(1)} s${history.featureCache.optimized ? ' by a frozen copy of the body, optimised for inference' : ''})`
    : history.featureCache && `head-only epochs on the whole model: ${history.featureCache.reason}`;
  if (!flags.json) console.log([epochLine, lrLine, augmentLine, cacheLine].filter(Boolean).join('\n'));
  const final = await model.evaluate(valLoader, { loss, metrics: ['accuracy', 'f1', 'confusionMatrix'] });
  // fit has recorded the classes and the input spec; the model is in eval mode.
  await model.save(flags.out, {
    metadata: { ...(model.metadata as object), classes: names, ...(input && { input }), recipe: { command: 'torchlite finetune', data: flags.data, epochs: history.epochs, freezeEpochs: history.freezeEpochs, lr: history.lr, lrFinder: history.lrFinder, search: history.search, augment: input && augment, labelSmoothing, bnPolicy: history.bnPolicy, batchSize, seed, valAccuracy: final.accuracy } },
  });
  if (flags.report)
    await writeReport(flags.report, {
      title: `torchlite finetune: ${flags.model}`,
      summary: [`data ${flags.data}, ${train.length} training samples, ${val.length} validation samples`, epochLine, lrLine, `validation accuracy ${((final.accuracy ?? 0) * 100).toFixed(2)}%, macro F1 ${(final.f1 ?? 0).toFixed(3)}`, `saved ${flags.out}`],
      history,
      steps: steps.steps,
      confusion: { matrix: final.confusionMatrix ?? [], classes: names },
    });
  if (flags.json) console.log(JSON.stringify({ out: flags.out, classes: names, lr: history.lr, lrFinder: history.lrFinder, search: history.search, bnPolicy: history.bnPolicy, freezeEpochs: history.freezeEpochs, epochs: history.epochs, featureCache: history.featureCache, history, final }));
  else console.log(`validation accuracy ${((final.accuracy ?? 0) * 100).toFixed(2)}%, saved ${flags.out}${flags.report ? `, report ${flags.report}` : ''}`);
}

/** Says what `--lr-search` will cost before it starts. */
const announceSearch: Callback = {
  name: 'announceSearch',
  onLrSearch({ trials, folds, runs, estimatedSeconds }) {
    const time = estimatedSeconds < 90 ? `${estimatedSeconds} s` : `${Math.round(estimatedSeconds / 60)} min`;
    console.log(`lr search: ${trials} trial lrs${folds > 1 ? ` on ${folds} folds` : ''}, ${runs} whole fine-tunes before the real one, roughly ${time}`);
  },
};

/** How the run's lr came about: given, the default, read off the range test, or the best of the held-out trials around it. */
function describeLr(history: FineTuneHistory): string {
  const lr = `lr ${history.lr.toExponential(2)}`;
  const finder = history.lrFinder;
  const others = finder && Object.entries(finder.suggestions)
    .filter(([rule]) => rule !== finder.rule)
    .map(([rule, value]) => `${rule} ${value.toExponential(2)}`)
    .join(', ');
  const source = finder ? `the LR range test (${finder.rule} rule × ${finder.scale}; ${others})` : 'the lr given (or the default)';
  const { search } = history;
  if (!search) return `${lr}, ${finder ? `chosen by ${source}` : 'as given (--lr), or the default; --lr-search tries others'}`;
  if (!search.used) return `${lr}, from ${source}; no held-out trials: ${search.reason}`;
  // Trials under two BatchNorm policies name theirs, and so does the run.
  const [, second] = new Set(search.trials!.map((t) => t.bnPolicy));
  const trials = search.trials!.map((t) => `${t.lr.toExponential(2)}${second ? ` ${t.bnPolicy}` : ''} loss ${t.loss.toFixed(3)}${t.accuracy === undefined ? '' : ` (${(t.accuracy * 100).toFixed(1)}%${t.beatsChance === false ? ', at chance' : ''})`}`).join(', ');
  const folds = search.folds! > 1 ? `, ${search.folds} folds` : '';
  if (search.abstained) return `${lr}, from ${source}: ${search.reason}${folds} (${trials})`;
  const policy = second ? ` under bnPolicy '${history.bnPolicy}'` : '';
  const rule = second ? ` (an '${second}' one only where the '${second}' trials have the lower mean loss at the lrs both policies tried)` : '';
  return `${lr}${policy}, the lowest held-out ${search.score} of ${search.trials!.length} trials${search.chance === undefined ? '' : ` beating chance (${(search.chance * 100).toFixed(1)}%)`}${rule} on ${search.holdout} held-out training samples${folds} (${trials}) around ${source}`;
}
