// Surgery decided in JS: which parameters a freeze pattern selects, where the classifier
// head is, and the counts the snapshot shows after a freeze.
import { TorchError } from '../errors';
import { compilePattern, describePattern, type Pattern } from '../patterns';
import { typeError } from '../validate';
import type { ModuleInfo, Snapshot } from './snapshot';

/** Parameter element counts after a freeze, unfreeze or requiresGrad call. */
export interface FreezeResult {
  trainable: number;
  frozen: number;
}

/**
 * `'frozen-eval'` keeps a BatchNorm layer whose parameters are all frozen in eval mode
 * (running statistics untouched) even while the model trains; `'eval'` keeps every
 * BatchNorm layer so (its scale and shift still train), as Keras advises for fine-tuning on
 * small batches; `'train'` lets every layer follow the model.
 */
export const BATCH_NORM_POLICIES = ['frozen-eval', 'eval', 'train'] as const;
export type BatchNormPolicy = (typeof BATCH_NORM_POLICIES)[number];

export interface ResetClassifierOptions {
  /** Dropout probability put in front of the new Linear; `0` adds no dropout layer. Defaults to `0`. */
  dropout?: number;
}

/**
 * @internal A torchvision R-CNN detector's predictors, which `resetClassifier` sizes for new
 * classes as the fine-tuning tutorial does (`FastRCNNPredictor`, `MaskRCNNPredictor`):
 * `undefined` for other models. RetinaNet's and SSD's heads are refused: their forward
 * reshapes by a `num_classes` attribute fixed when the model was scripted.
 */
export function detectorPredictors(modules: readonly ModuleInfo[]): { classes: string; boxes: string; masks?: string } | undefined {
  const has = (path: string, type: string) => modules.some((m) => m.path === path && m.type === type);
  if (has('head.classification_head.cls_logits', 'Conv2d') || modules.some((m) => m.path === 'head.classification_head.module_list'))
    throw new TorchError('TORCHLITE_UNSUPPORTED_SURGERY', "RetinaNet's and SSD's classification heads reshape by a num_classes fixed when the model was scripted: export the model with num_classes set for your classes (torchvision's num_classes argument), then fine-tune it");
  if (!has('roi_heads.box_predictor.cls_score', 'Linear') || !has('roi_heads.box_predictor.bbox_pred', 'Linear')) return undefined;
  return {
    classes: 'roi_heads.box_predictor.cls_score',
    boxes: 'roi_heads.box_predictor.bbox_pred',
    ...(has('roi_heads.mask_predictor.mask_fcn_logits', 'Conv2d') && { masks: 'roi_heads.mask_predictor.mask_fcn_logits' }),
  };
}

/**
 * @internal A torchvision segmentation model's per-pixel classifier convolutions (FCN's and
 * DeepLabV3's `classifier.4` and `aux_classifier.4`, LR-ASPP's two), which `resetClassifier`
 * sizes for new classes; `undefined` for other models.
 */
export function segmenterClassifiers(modules: readonly ModuleInfo[]): string[] | undefined {
  const convs = ['classifier.4', 'aux_classifier.4', 'classifier.low_classifier', 'classifier.high_classifier'].filter((path) => modules.some((m) => m.path === path && m.type === 'Conv2d'));
  return convs.length > 0 && !modules.some((m) => m.type === 'Linear') ? convs : undefined;
}

// Where classifier heads live in common architectures (torchvision, timm), checked in order.
const HEAD_PATHS = ['fc', 'classifier', 'head', 'heads.head', 'heads', 'head.fc', 'last_linear'];

/** @internal The path of the final classifier Linear (see `Model.classifierHead`). */
export function classifierHead(modules: readonly ModuleInfo[]): string | undefined {
  const linears = modules.filter((m) => m.type === 'Linear').map((m) => m.path);
  for (const head of HEAD_PATHS) {
    const inside = linears.filter((path) => path === head || path.startsWith(`${head}.`));
    if (inside.length > 0) return inside[inside.length - 1];
  }
  return linears.at(-1);
}

/** @internal The names of the parameters `patterns` selects (all when `undefined`); a part that selects none is `TORCHLITE_NO_MATCH`. */
export function selectParameters(s: Snapshot, patterns: Pattern | undefined): Set<string> {
  const parts = patterns === undefined ? undefined : Array.isArray(patterns) ? patterns : [patterns as string | RegExp];
  if (parts?.length === 0) throw typeError('a non-empty pattern array', 'patterns', patterns);
  const names = new Set<string>();
  if (parts === undefined) s.parameters.forEach((p) => names.add(p.name));
  parts?.forEach((part, i) => {
    const matches = compilePattern(part, Array.isArray(patterns) ? `patterns[${i}]` : 'patterns');
    const hits = s.parameters.filter((p) => matches(p.name));
    if (hits.length === 0) throw new TorchError('TORCHLITE_NO_MATCH', `No parameter matches ${describePattern(part)}`);
    hits.forEach((p) => names.add(p.name));
  });
  return names;
}

/** @internal Marks `names` trainable or frozen in the snapshot, recounts its modules, and returns the totals. */
export function markRequiresGrad(s: Snapshot, names: ReadonlySet<string>, flag: boolean): FreezeResult {
  const all = s.parameters;
  for (const p of all) if (names.has(p.name)) p.requiresGrad = flag;
  for (const m of s.modules) {
    const inside = all.filter((p) => m.path === '' || p.name.startsWith(`${m.path}.`));
    m.trainable = inside.reduce((n, p) => n + (p.requiresGrad ? p.numel : 0), 0);
  }
  const trainable = all.reduce((n, p) => n + (p.requiresGrad ? p.numel : 0), 0);
  return { trainable, frozen: all.reduce((n, p) => n + p.numel, 0) - trainable };
}
