// LoRA adapters (Hu et al. 2021) on any loaded model, as Hugging Face PEFT builds them: each
// targeted Linear or Conv2d is wrapped, its weight frozen, with per-adapter factors A (drawn
// as PEFT draws it) and B (zeros) whose product, times alpha / r, adds to its output.
// Adapters save and load in PEFT's format (adapter_model.safetensors, adapter_config.json).
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';

import { callNativeAsync, readError, TorchError } from './errors';
import { hubFile, parseHubName } from './hub';
import { Model } from './model';
import { native } from './native';
import type { LayerSpec } from './nn';
import { compilePattern, describePattern, type Pattern } from './patterns';
import { Tensor, zeros } from './tensor';
import { checkFiniteNumber, checkOptions, checkPositiveInteger, checkString, rangeError, typeError } from './validate';
import { readWeightsIndex, safetensorsHeader } from './weights';

export interface LoraOptions {
  /**
   * The Linear and Conv2d modules that get the adapter: module paths, globs or RegExps, as
   * `freeze` takes them (`/attention\.(query|value)$/`, `'*.fc'`). One that matches no
   * Linear or Conv2d is a `TORCHLITE_NO_MATCH` error.
   */
  targets: Pattern;
  /** The rank of the update B·A. Defaults to `8`. */
  r?: number;
  /** The update is scaled by `alpha / r`. Defaults to `8`, as PEFT's `lora_alpha`. */
  alpha?: number;
  /** Dropout on the adapter's input, in training. Defaults to `0`. */
  dropout?: number;
  /** The adapter's name: letters, digits and `_`, not starting with a digit. Defaults to `'default'`. */
  name?: string;
  /** Modules trained in full beside the adapter, as PEFT's `modules_to_save` (a new head). Defaults to none. */
  modulesToSave?: Pattern;
}

/** What {@link apply} did. */
export interface LoraResult {
  adapter: string;
  /** The wrapped modules' paths. */
  modules: string[];
  /** Parameter elements that train now, and in all. */
  trainable: number;
  total: number;
}

/** An adapter's settings, as PEFT's `LoraConfig` holds them. */
interface AdapterConfig {
  r: number;
  alpha: number;
  dropout: number;
  modules: string[];
  modulesToSave: string[];
}

/** The adapters each model carries, by name. */
const adaptersOf = new WeakMap<Model, Map<string, AdapterConfig>>();

const NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
/** Where a wrapper keeps its parts: never a target itself. */
const INSIDE_WRAPPER = /(^|\.)(base_layer|lora_A|lora_B)(\.|$)/;

/** The module paths `targets` picks among the model's Linear and Conv2d layers (and wrappers of them). */
function targetModules(model: Model, targets: Pattern): { path: string; kind: 'linear' | 'conv2d'; weight: number[] }[] {
  const matches = compilePattern(targets, 'options.targets');
  const params = new Map(model.parameters().map((p) => [p.name, p.shape]));
  const picked = model.modules().flatMap((m) => {
    if (!m.path || INSIDE_WRAPPER.test(m.path) || !matches(m.path)) return [];
    const wrapped = m.type === 'LoraLayer';
    const type = wrapped ? model.modules().find((c) => c.path === `${m.path}.base_layer`)?.type : m.type;
    if (type !== 'Linear' && type !== 'Conv2d') return [];
    const weight = params.get(`${m.path}${wrapped ? '.base_layer' : ''}.weight`);
    if (!weight) return [];
    return [{ path: m.path, kind: type === 'Linear' ? ('linear' as const) : ('conv2d' as const), weight }];
  });
  if (picked.length === 0) throw new TorchError('TORCHLITE_NO_MATCH', `No Linear or Conv2d module matches ${describePattern(targets)} (LoRA wraps those)`);
  return picked;
}

/**
 * Adds a LoRA adapter to every Linear and Conv2d that `targets` picks, and freezes everything
 * else but `modulesToSave`: the optimizer then holds the adapter's parameters only. Draws A
 * as PEFT does (the generator's draws of `nn.Linear(in, r)`, `nn.Linear(r, out)` and then
 * `kaiming_uniform_(A, a=√5)`, module by module), so a seed gives PEFT's adapter. Works on
 * scripted and traced models; a second name adds a second adapter beside the first (the
 * first stays active; see {@link use}). Synchronous; refused while operations are pending.
 */
export function apply(model: Model, options: LoraOptions): LoraResult {
  if (!(model instanceof Model)) throw typeError('a Model', 'model', model);
  const o = checkOptions<LoraOptions>(options, 'options', ['targets', 'r', 'alpha', 'dropout', 'name', 'modulesToSave']);
  const r = o.r === undefined ? 8 : checkPositiveInteger(o.r, 'options.r');
  const alpha = o.alpha === undefined ? 8 : checkFiniteNumber(o.alpha, 'options.alpha');
  const dropout = o.dropout === undefined ? 0 : checkFiniteNumber(o.dropout, 'options.dropout');
  if (dropout < 0 || dropout >= 1) throw rangeError('a probability in [0, 1)', 'options.dropout', dropout);
  const name = o.name === undefined ? 'default' : checkString(o.name, 'options.name');
  if (!NAME.test(name)) throw rangeError('a name of letters, digits and _, not starting with a digit', 'options.name', name);
  const adapters = adaptersOf.get(model) ?? new Map<string, AdapterConfig>();
  if (adapters.has(name)) throw new TypeError(`The model already has the LoRA adapter '${name}'; pass another name`);
  if (o.targets === undefined) throw typeError('module paths, globs or RegExps', 'options.targets', o.targets);
  const targets = targetModules(model, o.targets);
  const saving = o.modulesToSave === undefined ? undefined : compilePattern(o.modulesToSave, 'options.modulesToSave');
  const toSave = saving ? model.modules().filter((m) => m.path && saving(m.path)).map((m) => m.path) : [];
  if (saving && toSave.length === 0) throw new TorchError('TORCHLITE_NO_MATCH', `No module matches ${describePattern(o.modulesToSave!)} (options.modulesToSave)`);

  const draw = (shape: number[]) => native.initLayerParameters(shape, false).weight;
  const wrappers = targets.map(({ path, kind, weight }): [string, LayerSpec] => {
    const [out, inputs, ...kernel] = weight;
    // PEFT's update_layer: nn.Linear(in, r) and nn.Linear(r, out) draw in their constructors,
    // then reset_lora_parameters redraws A and zeroes B.
    draw([r, inputs, ...kernel]);
    draw(kind === 'linear' ? [out, r] : [out, r, 1, 1]);
    const a = draw([r, inputs, ...kernel]);
    const b = Tensor.handle(zeros(kind === 'linear' ? [out, r] : [out, r, 1, 1]));
    return [path, { kind: 'lora', layer: kind, adapter: name, remove: false, scaling: alpha / r, dropout, tensors: { A: a, B: b } }];
  });
  Model.replaceAll(model, wrappers);
  model.freeze();
  const trained = [...targets.flatMap(({ path }) => [`${path}.lora_A.${name}`, `${path}.lora_B.${name}`]), ...toSave];
  const { trainable, frozen } = model.unfreeze(trained);
  adapters.set(name, { r, alpha, dropout, modules: targets.map((t) => t.path), modulesToSave: toSave });
  adaptersOf.set(model, adapters);
  return { adapter: name, modules: targets.map((t) => t.path), trainable, total: trainable + frozen };
}

/**
 * Unloads adapter `name`: every wrapper drops it, and a module left without adapters gets its
 * original layer back (the parameter names with it). An active adapter removed hands over to
 * the first one left. Refused while it is merged (`lora.unmerge` first). Synchronous, as
 * {@link apply}; refused while operations are pending (`await model.idle()` first).
 */
export function remove(model: Model, name = 'default'): void {
  if (!(model instanceof Model)) throw typeError('a Model', 'model', model);
  const config = configOf(model, checkString(name, 'name'));
  Model.replaceAll(model, config.modules.map((path): [string, LayerSpec] => [path, { kind: 'lora', adapter: name, remove: true, tensors: {} }]));
  adaptersOf.get(model)!.delete(name);
}

/** The names of the model's adapters, in the order they were added. */
export function adapters(model: Model): string[] {
  return [...(adaptersOf.get(model)?.keys() ?? [])];
}

function configOf(model: Model, name: string): AdapterConfig {
  const config = adaptersOf.get(model)?.get(name);
  if (!config) throw new TorchError('TORCHLITE_NO_MATCH', `The model has no LoRA adapter '${name}' (it has ${adapters(model).map((a) => `'${a}'`).join(', ') || 'none'})`);
  return config;
}

/**
 * Makes every wrapper run adapter `name`, or none with `null` (the base model alone).
 * Queued as a write: requests queued before it see the adapter they were queued with.
 */
export function use(model: Model, name: string | null): Promise<void> {
  return callNativeAsync(async () => {
    if (name !== null) configOf(model, checkString(name, 'name'));
    await Model.enqueue(model, (handle) => native.loraUse(handle, name ?? ''));
  });
}

/**
 * Folds adapter `name` into its base weights (W + B·A·alpha/r), for inference at the base
 * model's speed; the wrappers then skip it. The base weights before are kept, so
 * {@link unmerge} restores them bit for bit. Queued behind pending operations.
 */
export function merge(model: Model, name = 'default'): Promise<void> {
  return callNativeAsync(async () => {
    configOf(model, checkString(name, 'name'));
    await Model.enqueue(model, (handle) => native.loraMerge(handle, name));
  });
}

/** Restores the base weights a {@link merge} changed, exactly. Queued behind pending operations. */
export function unmerge(model: Model): Promise<void> {
  return callNativeAsync(() => Model.enqueue(model, (handle) => native.loraUnmerge(handle)));
}

const PEFT_PREFIX = 'base_model.model.';

/** The model's parameter for a PEFT adapter key, and back: PEFT's saved keys drop the adapter name. */
function peftKey(name: string, adapter: string): string {
  return PEFT_PREFIX + name.replace(`.lora_A.${adapter}.`, '.lora_A.').replace(`.lora_B.${adapter}.`, '.lora_B.');
}

export interface SaveAdapterOptions {
  /** Which adapter. Defaults to `'default'`. */
  name?: string;
  /** Goes into `adapter_config.json` as `base_model_name_or_path`. Defaults to `null`. */
  baseModel?: string;
}

/**
 * Writes adapter `name` as PEFT does: `dir/adapter_model.safetensors` with keys
 * `base_model.model.<path>.lora_A.weight` (and `lora_B`, and the `modulesToSave`
 * parameters under their paths), and `dir/adapter_config.json`. Files are written whole
 * and renamed into place. Queued behind pending operations.
 */
export function save(model: Model, dir: string, options?: SaveAdapterOptions): Promise<void> {
  return callNativeAsync(async () => {
    checkString(dir, 'dir');
    const o = checkOptions<SaveAdapterOptions>(options, 'options', ['name', 'baseModel']);
    const name = o.name === undefined ? 'default' : checkString(o.name, 'options.name');
    const config = configOf(model, name);
    await model.idle();
    const own = (p: string) => config.modules.some((m) => p.startsWith(`${m}.lora_A.${name}.`) || p.startsWith(`${m}.lora_B.${name}.`)) || config.modulesToSave.some((m) => p.startsWith(`${m}.`));
    const tensors = model.parameters().filter((p) => own(p.name));
    await mkdir(dir, { recursive: true });
    const header = safetensorsHeader(tensors.map((t) => ({ ...t, name: peftKey(t.name, name) })), { format: 'pt' });
    const file = join(dir, 'adapter_model.safetensors');
    await Model.enqueue(model, (handle) => handle.saveWeights(file, header, tensors.map((t) => t.name)));
    const peft = {
      peft_type: 'LORA',
      task_type: null,
      r: config.r,
      lora_alpha: config.alpha,
      lora_dropout: config.dropout,
      target_modules: config.modules,
      bias: 'none',
      modules_to_save: config.modulesToSave.length > 0 ? config.modulesToSave : null,
      fan_in_fan_out: false,
      init_lora_weights: true,
      inference_mode: true,
      base_model_name_or_path: o.baseModel ?? null,
    };
    const temporary = join(dir, `.adapter_config.json.${process.pid}`);
    await writeFile(temporary, `${JSON.stringify(peft, null, 2)}\n`);
    await rename(temporary, join(dir, 'adapter_config.json'));
  });
}

export interface LoadAdapterOptions {
  /** The name it takes on this model. Defaults to `'default'`. */
  name?: string;
}

/**
 * Loads a PEFT adapter (`dir/adapter_config.json` and `dir/adapter_model.safetensors`, or a
 * Hub repository's as `hf:owner/name[@revision]`, through the cache as `loadPretrained`
 * reads it) onto its base model: wraps the modules its config targets, then reads its
 * weights. A target the model lacks, or a weight whose shape is not the module's, is a
 * `TORCHLITE_WEIGHTS_MISMATCH` error naming the module; nothing is loaded then.
 */
export function load(model: Model, source: string, options?: LoadAdapterOptions): Promise<LoraResult> {
  return callNativeAsync(async () => {
    checkString(source, 'source');
    const hub = parseHubName(source);
    const dir = hub ? dirname((await hubFile(hub.repo, 'adapter_config.json', { revision: hub.revision }))!) : source;
    if (hub) await hubFile(hub.repo, 'adapter_model.safetensors', { revision: hub.revision });
    const o = checkOptions<LoadAdapterOptions>(options, 'options', ['name']);
    const name = o.name === undefined ? 'default' : checkString(o.name, 'options.name');
    let text;
    try {
      text = await readFile(join(dir, 'adapter_config.json'), 'utf8');
    } catch (error) {
      throw readError(error, `cannot read the adapter's config in ${dir}`);
    }
    let config: { peft_type?: string; r?: number; lora_alpha?: number; lora_dropout?: number; target_modules?: string[] | string; modules_to_save?: string[] | null };
    try {
      config = JSON.parse(text);
    } catch (error) {
      throw new TorchError('TORCHLITE_BAD_DATA', `${join(dir, 'adapter_config.json')} is not JSON: ${(error as Error).message}`);
    }
    if (config.peft_type !== undefined && config.peft_type !== 'LORA') throw new TorchError('TORCHLITE_UNSUPPORTED_FORMAT', `${dir} holds a ${config.peft_type} adapter; torchlite loads LORA adapters`);
    const file = join(dir, 'adapter_model.safetensors');
    const weights = await readWeightsIndex(file);
    await model.idle();
    const paths = model.modules().map((m) => m.path);
    // PEFT matches a target by its full name, or by the name's last parts.
    const wanted = (Array.isArray(config.target_modules) ? config.target_modules : [config.target_modules ?? '']).filter(Boolean);
    const targets = paths.filter((p) => p && !INSIDE_WRAPPER.test(p) && wanted.some((t) => p === t || p.endsWith(`.${t}`)));
    const missing = wanted.filter((t) => !paths.some((p) => p === t || p.endsWith(`.${t}`)));
    if (missing.length > 0) throw new TorchError('TORCHLITE_WEIGHTS_MISMATCH', `the adapter in ${dir} targets ${missing.map((m) => `'${m}'`).join(', ')}, which the model does not have: is it the adapter's base model?`);
    const shapes = new Map(model.parameters().map((p) => [p.name, p.shape]));
    const r = checkPositiveInteger(config.r, 'adapter_config.json r');
    // Check every shape before changing the model: a mismatch names the module.
    for (const entry of weights.entries) {
      const match = /^base_model\.model\.(.+)\.lora_([AB])\.weight$/.exec(entry.name);
      if (!match) continue;
      const weight = shapes.get(`${match[1]}.weight`) ?? shapes.get(`${match[1]}.base_layer.weight`);
      const [out, inputs, ...kernel] = weight ?? [];
      const expected = match[2] === 'A' ? [r, inputs, ...kernel] : [out, r, ...kernel.map(() => 1)];
      if (!weight || expected.some((v, i) => v !== entry.shape[i]) || expected.length !== entry.shape.length)
        throw new TorchError('TORCHLITE_WEIGHTS_MISMATCH', `the adapter's ${entry.name} has shape [${entry.shape.join(', ')}] but '${match[1]}' takes [${expected.join(', ')}] (r ${r}): the adapter was trained on another base model`);
    }
    const result = apply(model, { targets: targets.map((t) => new RegExp(`^${t.replace(/[.]/g, '\\.')}$`)), r, alpha: config.lora_alpha ?? 8, dropout: config.lora_dropout ?? 0, name, ...(config.modules_to_save?.length && { modulesToSave: config.modules_to_save }) });
    const adapterOf = new Map(model.parameters().map((p) => [peftKey(p.name, name), p.name]));
    await model.loadWeights(file, { strict: false, rename: (key) => adapterOf.get(key) });
    return result;
  });
}
