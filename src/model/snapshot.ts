// The JS snapshot of a model: the native facts that the synchronous getters read, copied
// when the model is idle, and the summary table made from them.
import type { NativeModel } from '../native';
import type { Device, Dtype } from '../tensor';
import type { BatchNormPolicy } from './surgery';

/** A method of a model (see {@link Model.methods}). */
export interface MethodInfo {
  name: string;
  /** Its arguments after `self`: name, TorchScript type (`Tensor`, `Dict[str, Tensor]`, `float`, …) and default, as written. */
  arguments: { name: string; type: string; default?: string }[];
  /** Its return type (a tuple's as `(T1, T2)`). */
  returns: string;
}

export interface ModuleInfo {
  /** Dotted path, as in Python (`layer1.0.conv1`); `''` is the model itself. */
  path: string;
  /** Class name without TorchScript's module path and mangling, e.g. `BatchNorm2d`. */
  type: string;
  /** Parameters in this module and below it. */
  params: number;
  /** Of those, the ones with `requiresGrad`. */
  trainable: number;
}

export interface TensorInfo {
  name: string;
  shape: number[];
  dtype: Dtype;
  numel: number;
}

export interface ParameterInfo extends TensorInfo {
  requiresGrad: boolean;
}

/** @internal What the synchronous getters read. */
export interface Snapshot {
  training: boolean;
  traced: boolean;
  device: Device;
  bnPolicy: BatchNormPolicy;
  modules: ModuleInfo[];
  methods: MethodInfo[];
  parameters: ParameterInfo[];
  buffers: TensorInfo[];
}

/** @internal The snapshot of a native model, read when nothing is queued on it. */
export function readSnapshot(handle: NativeModel): Snapshot {
  const info = handle.info();
  return {
    training: info.training,
    traced: info.traced,
    device: info.device as Device,
    bnPolicy: info.bnPolicy as BatchNormPolicy,
    modules: handle.modules(),
    methods: handle.methods(),
    parameters: handle.parameters() as ParameterInfo[],
    buffers: handle.buffers() as TensorInfo[],
  };
}

function formatCount(n: number): string {
  return n.toLocaleString('en-US');
}

/** @internal A table of modules with their parameter counts, and totals (see `Model.summary`). */
export function formatSummary(s: Snapshot): string {
  const rows = s.modules;
  const [total] = rows;
  const body = rows.slice(1).map((m) => [
    `${'  '.repeat(m.path.split('.').length - 1)}${m.path.split('.').pop()}`,
    m.type,
    formatCount(m.params),
    m.params === 0 ? '-' : m.trainable === m.params ? 'yes' : m.trainable === 0 ? 'no' : 'partly',
  ]);
  const header = ['path', 'type', 'params', 'trainable'];
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((r) => r[i].length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => (i === 2 ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join('  ').trimEnd();
  const rule = '-'.repeat(widths.reduce((a, b) => a + b + 2, -2));
  return [
    `${total.type} (${s.traced ? 'traced' : 'scripted'}, ${s.device}, ${s.training ? 'train' : 'eval'} mode)`,
    line(header),
    rule,
    ...body.map(line),
    rule,
    `Total params:     ${formatCount(total.params)}`,
    `Trainable params: ${formatCount(total.trainable)}`,
    `Frozen params:    ${formatCount(total.params - total.trainable)}`,
  ].join('\n');
}
