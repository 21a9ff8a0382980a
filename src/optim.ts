// Optimizers: param groups by pattern, their defaults, and state dicts keyed by name.
import { callNative, callNativeAsync, disposedError, misuse, TorchError } from './errors';
import { Model } from './model';
import { kStepOptimizer } from './model/protocols';
import type { NativeGroupOptions, NativeOptimizer } from './native';
import { native } from './native';
import { compilePattern, describePattern, type Pattern } from './patterns';
import { Tensor } from './tensor';
import { checkFiniteNumber, checkOptions, checkPositiveInteger, rangeError, typeError } from './validate';

export type OptimizerKind = 'sgd' | 'adam' | 'adamw';

/** Options shared by every optimizer. */
export interface CommonOptions {
  /** Learning rate. Defaults to `1e-3` (`1e-2` for SGD). */
  lr?: number;
  /** L2 penalty (SGD, Adam) or decoupled weight decay (AdamW). Defaults to `0` (`1e-2` for AdamW). */
  weightDecay?: number;
  /** Keeps biases and other 1-D parameters (normalisation weights) out of weight decay. Defaults to `false`. */
  noDecay?: boolean;
}

export interface SgdOptions extends CommonOptions {
  /** Defaults to `0`. */
  momentum?: number;
  /** Defaults to `0`. */
  dampening?: number;
  /** Nesterov momentum; needs `momentum > 0` and `dampening = 0`. Defaults to `false`. */
  nesterov?: boolean;
}

export interface AdamOptions extends CommonOptions {
  /** Defaults to `[0.9, 0.999]`. */
  betas?: [number, number];
  /** Defaults to `1e-8`. */
  eps?: number;
  /** Defaults to `false`. */
  amsgrad?: boolean;
}

/** A group of parameters selected by pattern, with options of its own. */
export type ParamGroupSpec = { params: Pattern } & SgdOptions & AdamOptions;

/** A live view of one param group: reading and writing `lr` and friends acts on the optimizer. */
export interface ParamGroup {
  lr: number;
  weightDecay: number;
  momentum: number;
  betas: [number, number];
  readonly params: string[];
}

const KNOWN: Record<OptimizerKind, string[]> = {
  sgd: ['lr', 'weightDecay', 'noDecay', 'momentum', 'dampening', 'nesterov'],
  adam: ['lr', 'weightDecay', 'noDecay', 'betas', 'eps', 'amsgrad'],
  adamw: ['lr', 'weightDecay', 'noDecay', 'betas', 'eps', 'amsgrad'],
};
/** Every group option of each optimizer at its default: the one place they live (the addon has none). */
const ADAM: NativeGroupOptions = { lr: 1e-3, momentum: 0, dampening: 0, weightDecay: 0, beta1: 0.9, beta2: 0.999, eps: 1e-8, nesterov: false, amsgrad: false };
const DEFAULTS: Record<OptimizerKind, NativeGroupOptions> = {
  sgd: { ...ADAM, lr: 1e-2 },
  adam: ADAM,
  adamw: { ...ADAM, weightDecay: 1e-2 },
};

function nonNegative(value: unknown, name: string): number {
  const n = checkFiniteNumber(value, name);
  if (n < 0) throw rangeError('a non-negative number', name, n);
  return n;
}

function unitInterval(value: unknown, name: string): number {
  const n = checkFiniteNumber(value, name);
  if (n < 0 || n >= 1) throw rangeError('a number in [0, 1)', name, n);
  return n;
}

function flag(value: unknown, name: string): boolean {
  if (typeof value !== 'boolean') throw typeError('a boolean', name, value);
  return value;
}

/** Validates user options into native group options (only the keys given). */
function toNative(kind: OptimizerKind, options: Record<string, unknown>, name: string): Partial<NativeGroupOptions> & { noDecay?: boolean } {
  const o: Partial<NativeGroupOptions> & { noDecay?: boolean } = {};
  if (options.lr !== undefined) o.lr = nonNegative(options.lr, `${name}.lr`);
  if (options.weightDecay !== undefined) o.weightDecay = nonNegative(options.weightDecay, `${name}.weightDecay`);
  if (options.noDecay !== undefined) o.noDecay = flag(options.noDecay, `${name}.noDecay`);
  if (kind === 'sgd') {
    if (options.momentum !== undefined) o.momentum = nonNegative(options.momentum, `${name}.momentum`);
    if (options.dampening !== undefined) o.dampening = nonNegative(options.dampening, `${name}.dampening`);
    if (options.nesterov !== undefined) o.nesterov = flag(options.nesterov, `${name}.nesterov`);
  } else {
    if (options.betas !== undefined) {
      if (!Array.isArray(options.betas) || options.betas.length !== 2) throw typeError('a pair [beta1, beta2]', `${name}.betas`, options.betas);
      o.beta1 = unitInterval(options.betas[0], `${name}.betas[0]`);
      o.beta2 = unitInterval(options.betas[1], `${name}.betas[1]`);
    }
    if (options.eps !== undefined) o.eps = nonNegative(options.eps, `${name}.eps`);
    if (options.amsgrad !== undefined) o.amsgrad = flag(options.amsgrad, `${name}.amsgrad`);
  }
  return o;
}

/** Group options as `stateDict()` wrote them (native names: beta1, beta2, …), checked one by one. */
function savedOptions(options: Record<string, unknown>, name: string): Partial<NativeGroupOptions> {
  const o: Partial<NativeGroupOptions> = {};
  for (const key of ['lr', 'momentum', 'dampening', 'weightDecay', 'eps'] as const)
    if (options[key] !== undefined) o[key] = nonNegative(options[key], `${name}.${key}`);
  for (const key of ['beta1', 'beta2'] as const) if (options[key] !== undefined) o[key] = unitInterval(options[key], `${name}.${key}`);
  for (const key of ['nesterov', 'amsgrad'] as const) if (options[key] !== undefined) o[key] = flag(options[key], `${name}.${key}`);
  return o;
}

function checkNesterov(o: Partial<NativeGroupOptions>, name: string): void {
  if (o.nesterov && (!(o.momentum ?? 0) || (o.dampening ?? 0) !== 0))
    throw new RangeError(`Expected \`${name}.momentum\` > 0 and \`${name}.dampening\` = 0 for \`${name}.nesterov\` but received momentum ${o.momentum ?? 0}, dampening ${o.dampening ?? 0}`);
}

interface PendingGroup {
  pattern: Pattern | undefined; // undefined: every trainable parameter
  options: Partial<NativeGroupOptions> & { noDecay?: boolean };
}

/** What {@link Optimizer.stateDict} returns: group options and per-parameter state keyed by name. */
export interface OptimizerStateDict {
  kind: OptimizerKind;
  groups: (NativeGroupOptions & { params: string[] })[];
  state: Record<string, { step: number } & Record<string, Tensor | number>>;
  pending: number;
}

type BoundGroup = NativeGroupOptions & { params: string[] };

/**
 * SGD, Adam or AdamW over a model's parameters, in param groups. Bound to its model at
 * creation, or at the first `trainStep` when made from patterns alone.
 *
 * Group options (`paramGroups[i].lr` and friends) live in JS and travel with each
 * `trainStep`, as they are at the call, so schedules never wait for a running step.
 * `addParamGroup`, `stateDict` and `loadStateDict` of a bound optimizer are refused with
 * `TORCHLITE_MODEL_BUSY` while its model has operations pending.
 */
export class Optimizer implements Disposable {
  readonly kind: OptimizerKind;
  #defaults: Partial<NativeGroupOptions> & { noDecay?: boolean };
  #pending: PendingGroup[];
  #native: NativeOptimizer | null = null;
  #groups: BoundGroup[] = [];
  #model: Model | null = null;
  #disposed = false;

  /** @internal Use `optim.sgd`, `optim.adam` or `optim.adamw`. */
  constructor(kind: OptimizerKind, defaults: Partial<NativeGroupOptions> & { noDecay?: boolean }, groups: PendingGroup[]) {
    this.kind = kind;
    this.#defaults = defaults;
    this.#pending = groups;
  }

  /** @internal The native optimizer, bound to `model` on first use. */
  static bind(optimizer: Optimizer, model: Model): NativeOptimizer {
    if (optimizer.#disposed) throw disposedError('Optimizer');
    if (optimizer.#model !== null && optimizer.#model !== model)
      throw misuse('TORCHLITE_BAD_ARGUMENT', 'this optimizer belongs to another model');
    if (optimizer.#native === null) {
      optimizer.#model = model;
      const groups = optimizer.#pending.flatMap((group) => optimizer.#resolve(model, group));
      const handle = callNative(() => native.Optimizer.create(Model.handle(model), optimizer.kind, groups));
      optimizer.#native = handle;
      optimizer.#groups = callNative(() => handle.groups());
      optimizer.#pending = [];
    }
    return optimizer.#native;
  }

  /** @internal */
  [kStepOptimizer](model: Model): { handle: NativeOptimizer; groups: NativeGroupOptions[] } {
    const handle = Optimizer.bind(this, model);
    return { handle, groups: this.#optionsNow() };
  }

  /** @internal The group options as a job would take them now (fit reads a window's schedule ahead with it). */
  static optionsNow(optimizer: Optimizer): NativeGroupOptions[] {
    return optimizer.#optionsNow();
  }

  #optionsNow(): NativeGroupOptions[] {
    return this.#groups.map(({ params: _params, ...options }) => options);
  }

  #resolve(model: Model, group: PendingGroup): { names: string[]; options: NativeGroupOptions }[] {
    const params = model.parameters();
    const selected =
      group.pattern === undefined ? params.filter((p) => p.requiresGrad) : params.filter((p) => compilePattern(group.pattern!, 'params')(p.name));
    if (group.pattern !== undefined && selected.length === 0)
      throw new TorchError('TORCHLITE_NO_MATCH', `No parameter matches ${describePattern(group.pattern)}`);
    const { noDecay, ...options } = { ...DEFAULTS[this.kind], ...this.#defaults, ...group.options };
    if (!noDecay) return [{ names: selected.map((p) => p.name), options }];
    // The timm/HF habit: biases and 1-D tensors (normalisation scales) get no decay.
    const exempt = (p: { name: string; shape: number[] }) => p.shape.length <= 1 || p.name.endsWith('.bias');
    return [
      { names: selected.filter((p) => !exempt(p)).map((p) => p.name), options },
      { names: selected.filter(exempt).map((p) => p.name), options: { ...options, weightDecay: 0 } },
    ].filter((g) => g.names.length > 0);
  }

  get #live(): NativeOptimizer | null {
    if (this.#disposed) throw disposedError('Optimizer');
    return this.#native;
  }

  /**
   * Adds parameters with options of their own, e.g. a lower lr for layers just unfrozen.
   * Running schedules pick the group up with its own base lr.
   */
  addParamGroup(group: ParamGroupSpec): void {
    Optimizer.addGroup(this, group, 'group');
  }

  /** @internal */
  static addGroup(optimizer: Optimizer, group: ParamGroupSpec, name: string): void {
    optimizer.#add(group, name);
  }

  #add(group: ParamGroupSpec, name: string): void {
    const pending = this.#parseGroup(group, name);
    const live = this.#live;
    if (live === null) {
      this.#pending.push(pending);
      return;
    }
    Model.idleHandle(this.#model!, 'addParamGroup()');
    for (const g of this.#resolve(this.#model!, pending)) callNative(() => live.addGroup(g.names, g.options));
    this.#groups = [...this.#groups, ...callNative(() => live.groups()).slice(this.#groups.length)];
  }

  #parseGroup(group: ParamGroupSpec, name: string): PendingGroup {
    if (group === null || typeof group !== 'object' || group.params === undefined) throw typeError('a group with `params`', name, group);
    const { params, ...rest } = checkOptions<ParamGroupSpec>(group, name, ['params', ...KNOWN[this.kind]]);
    compilePattern(params!, `${name}.params`);
    const options = toNative(this.kind, rest, name);
    checkNesterov({ ...this.#defaults, ...options }, name);
    return { pattern: params, options };
  }

  /** The param groups. Writing `lr`, `weightDecay`, `momentum` or `betas` changes the optimizer. */
  get paramGroups(): ParamGroup[] {
    const live = this.#live;
    if (live === null)
      return this.#pending.map((group) => {
        const merged = () => ({ ...DEFAULTS[this.kind], ...this.#defaults, ...group.options });
        return view(merged, (patch) => Object.assign(group.options, patch), []);
      });
    return this.#groups.map((group) => view(() => group, (patch) => Object.assign(group, patch), [...group.params]));
  }

  /** Group options and per-parameter state keyed by parameter name (portable across LibTorch versions). */
  stateDict(): OptimizerStateDict {
    const live = this.#requireBound('stateDict');
    Model.idleHandle(this.#model!, 'optimizer.stateDict()');
    const raw = callNative(() => live.stateDict());
    const state = Object.fromEntries(
      Object.entries(raw.state).map(([name, entry]) => [
        name,
        Object.fromEntries(Object.entries(entry).map(([k, v]) => [k, typeof v === 'number' ? v : new Tensor(v as never)])),
      ]),
    ) as OptimizerStateDict['state'];
    return { kind: this.kind, groups: this.#groups.map((g) => ({ ...g, params: [...g.params] })), state, pending: raw.pending };
  }

  /**
   * Restores what {@link Optimizer.stateDict} returned, matching parameters by name.
   * Everything is checked first: a dict that does not fit changes nothing.
   */
  loadStateDict(dict: OptimizerStateDict): void {
    const live = this.#requireBound('loadStateDict');
    if (dict === null || typeof dict !== 'object' || dict.kind !== this.kind || !Array.isArray(dict.groups))
      throw typeError(`a ${this.kind} optimizer state dict`, 'dict', dict);
    if (dict.groups.length !== this.#groups.length || dict.groups.some((g, i) => !Array.isArray(g?.params) || g.params.join() !== this.#groups[i].params.join()))
      throw new TorchError('TORCHLITE_BAD_STATE', 'the state dict has other param groups than this optimizer');
    const options = dict.groups.map(({ params: _params, ...o }, i) => ({ ...this.#groups[i], ...savedOptions(o, `dict.groups[${i}]`) }));
    if (dict.state === null || typeof dict.state !== 'object') throw typeError('a record of per-parameter state', 'dict.state', dict.state);
    const pending = dict.pending ?? 0;
    if (typeof pending !== 'number' || !Number.isSafeInteger(pending) || pending < 0) throw typeError('a non-negative integer', 'dict.pending', pending);
    const state = Object.fromEntries(
      Object.entries(dict.state).map(([name, entry]) => [
        name,
        Object.fromEntries(Object.entries(entry ?? {}).map(([k, v]) => [k, v instanceof Tensor ? Tensor.handle(v) : v])),
      ]),
    );
    Model.idleHandle(this.#model!, 'optimizer.loadStateDict()');
    callNative(() => live.loadStateDict(state, pending));
    this.#groups = options.map((o, i) => ({ ...o, params: this.#groups[i].params }));
  }

  /**
   * Applies a partial gradient-accumulation window now (grads averaged over the
   * micro-batches it holds). Resolves whether a step was taken.
   */
  flush(accumulate: number): Promise<boolean> {
    return callNativeAsync(async () => {
      checkPositiveInteger(accumulate, 'accumulate');
      const live = this.#requireBound('flush');
      const groups = this.#optionsNow();
      return Model.enqueueStep(this.#model!, (_handle, sync) => live.flush(accumulate, groups, sync));
    });
  }

  #requireBound(what: string): NativeOptimizer {
    const live = this.#live;
    if (live === null) throw misuse('TORCHLITE_BAD_ARGUMENT', `${what}() needs the optimizer bound to a model: pass the model to optim.${this.kind}() or run a trainStep first`);
    return live;
  }

  dispose(): void {
    this.#native?.dispose();
    this.#native = null;
    this.#disposed = true;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

function view(read: () => Partial<NativeGroupOptions>, write: (patch: Partial<NativeGroupOptions>) => void, params: string[]): ParamGroup {
  return {
    get lr() {
      return read().lr!;
    },
    set lr(value: number) {
      write({ lr: nonNegative(value, 'lr') });
    },
    get weightDecay() {
      return read().weightDecay ?? 0;
    },
    set weightDecay(value: number) {
      write({ weightDecay: nonNegative(value, 'weightDecay') });
    },
    get momentum() {
      return read().momentum ?? 0;
    },
    set momentum(value: number) {
      write({ momentum: nonNegative(value, 'momentum') });
    },
    get betas(): [number, number] {
      const o = read();
      return [o.beta1 ?? 0.9, o.beta2 ?? 0.999];
    },
    set betas(value: [number, number]) {
      write({ beta1: unitInterval(value[0], 'betas[0]'), beta2: unitInterval(value[1], 'betas[1]') });
    },
    params,
  };
}

function create(kind: OptimizerKind, target: Model | ParamGroupSpec[], options: unknown): Optimizer {
  const opts = checkOptions<Record<string, unknown>>(options, 'options', KNOWN[kind]) as Record<string, unknown>;
  const defaults = toNative(kind, opts, 'options');
  checkNesterov(defaults, 'options');
  if (target instanceof Model) {
    const optimizer = new Optimizer(kind, defaults, [{ pattern: undefined, options: {} }]);
    Optimizer.bind(optimizer, target);
    return optimizer;
  }
  if (!Array.isArray(target) || target.length === 0) throw typeError('a Model or a non-empty array of param groups', 'params', target);
  const optimizer = new Optimizer(kind, defaults, []);
  target.forEach((group, i) => Optimizer.addGroup(optimizer, group, `params[${i}]`));
  return optimizer;
}

/** SGD with optional momentum, dampening, Nesterov and weight decay, like `torch.optim.SGD`. */
export function sgd(params: Model | ParamGroupSpec[], options?: SgdOptions): Optimizer {
  return create('sgd', params, options);
}

/** Adam, like `torch.optim.Adam` (weight decay as L2 penalty). */
export function adam(params: Model | ParamGroupSpec[], options?: AdamOptions): Optimizer {
  return create('adam', params, options);
}

/** AdamW, like `torch.optim.AdamW` (decoupled weight decay). */
export function adamw(params: Model | ParamGroupSpec[], options?: AdamOptions): Optimizer {
  return create('adamw', params, options);
}
