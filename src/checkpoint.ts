// One-file checkpoints: the model as a TorchScript archive (so Python can load it too),
// with the training state in two extra files: JSON (options, schedule, position, RNG)
// and the optimizer's state tensors as raw bytes indexed by parameter name.
import { TorchError } from './errors';
import { CHECKPOINT_STATE, Model } from './model';
import { loadArchive } from './model/load';
import { native } from './native';
import { Optimizer, type OptimizerStateDict } from './optim';
import type { PlateauScheduler, Scheduler } from './sched';
import { type Dtype, Tensor, tensor } from './tensor';

const STATE = CHECKPOINT_STATE;
const TENSORS = 'torchlite-optimizer.bin';

/** Where training stands, saved with the weights. */
export interface TrainingPosition {
  /** Epochs completed. */
  epoch: number;
  /** Optimizer updates taken. */
  step: number;
  /** fineTune's stage (0: head only), or 0 for plain fit. */
  stage: number;
  /** Epoch records so far. */
  history: unknown[];
  /** Callback state (early stopping, best metric). */
  callbacks: Record<string, unknown>;
}

interface TensorEntry {
  param: string;
  key: string;
  dtype: Dtype;
  shape: number[];
  offset: number;
  bytes: number;
}

interface CheckpointJson extends TrainingPosition {
  version: 1;
  optimizer: Omit<OptimizerStateDict, 'state'> & { steps: Record<string, number>; tensors: TensorEntry[] };
  scheduler: unknown;
  rng: string;
  /** Data-parallel runs: every rank's generator, in rank order (`rng` is rank 0's). */
  rngs?: string[];
}

export interface TrainingState {
  model: Model;
  optimizer: Optimizer;
  scheduler?: Scheduler | PlateauScheduler;
  position: TrainingPosition;
  /** Every rank's generator state (base64), for a data-parallel run. */
  rngs?: string[];
}

/** Writes a checkpoint atomically (temporary file, fsync, rename). */
export async function saveCheckpoint(path: string, state: TrainingState): Promise<void> {
  const dict = state.optimizer.stateDict();
  const tensors: TensorEntry[] = [];
  const chunks: Buffer[] = [];
  const steps: Record<string, number> = {};
  let offset = 0;
  for (const [param, entry] of Object.entries(dict.state)) {
    for (const [key, value] of Object.entries(entry)) {
      if (typeof value === 'number') {
        steps[param] = value;
        continue;
      }
      const data = await value.read();
      const bytes = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
      tensors.push({ param, key, dtype: value.dtype, shape: value.shape, offset, bytes: bytes.length });
      chunks.push(bytes);
      offset += bytes.length;
      value.dispose();
    }
  }
  const json: CheckpointJson = {
    version: 1,
    ...state.position,
    optimizer: { kind: dict.kind, groups: dict.groups, pending: dict.pending, steps, tensors },
    scheduler: state.scheduler?.stateDict() ?? null,
    rng: native.getRngState().toString('base64'),
    ...(state.rngs && { rngs: state.rngs }),
  };
  await Model.saveWithExtras(state.model, path, { [STATE]: Buffer.from(JSON.stringify(json)), [TENSORS]: Buffer.concat(chunks) });
}

/**
 * Restores weights, optimizer, scheduler and (unless `rng` is false) the process-wide
 * generator from a checkpoint; returns the position.
 */
export async function loadCheckpoint(path: string, state: Omit<TrainingState, 'position' | 'rngs'> & { rng?: boolean; rank?: number }): Promise<TrainingPosition> {
  const { model: saved, extras } = await loadArchive(path, { device: state.model.device, channelsLast: false }, [STATE, TENSORS]); // weights only copied out: no layout work
  try {
    if (!extras[STATE]) throw new TorchError('TORCHLITE_BAD_STATE', `${path} is a model but not a torchlite checkpoint`);
    const json = JSON.parse(extras[STATE].toString('utf8')) as CheckpointJson;
    const weights = (await saved.stateDict());
    await state.model.loadStateDict(weights);
    Object.values(weights).forEach((t) => t.dispose());
    const blob = extras[TENSORS] ?? Buffer.alloc(0);
    const perParam: OptimizerStateDict['state'] = {};
    for (const [param, step] of Object.entries(json.optimizer.steps)) perParam[param] = { step };
    for (const entry of json.optimizer.tensors) {
      const bytes = blob.subarray(entry.offset, entry.offset + entry.bytes);
      const copy = new Uint8Array(bytes).buffer;
      const data = entry.dtype === 'float64' ? new Float64Array(copy) : new Float32Array(copy);
      perParam[entry.param] ??= { step: 0 };
      perParam[entry.param][entry.key] = tensor(data, entry.shape, { dtype: entry.dtype });
    }
    const { steps: _steps, tensors: _tensors, ...optimizer } = json.optimizer;
    Optimizer.bind(state.optimizer, state.model);
    state.optimizer.loadStateDict({ ...optimizer, state: perParam });
    for (const entry of Object.values(perParam)) for (const value of Object.values(entry)) if (value instanceof Tensor) value.dispose();
    if (json.scheduler && state.scheduler) state.scheduler.loadStateDict(json.scheduler as never);
    // A rank of a data-parallel run takes its own generator back (rank 0's if the world grew).
    if (state.rng !== false) native.setRngState(Buffer.from((state.rank !== undefined && json.rngs?.[state.rank]) || json.rng, 'base64'));
    return { epoch: json.epoch, step: json.step, stage: json.stage, history: json.history, callbacks: json.callbacks };
  } finally {
    saved.dispose();
  }
}

/** The position stored in a checkpoint, without restoring anything. */
export async function readCheckpointPosition(path: string): Promise<TrainingPosition> {
  const { model, extras } = await loadArchive(path, { channelsLast: false }, [STATE]);
  model.dispose();
  if (!extras[STATE]) throw new TorchError('TORCHLITE_BAD_STATE', `${path} is a model but not a torchlite checkpoint`);
  const { epoch, step, stage, history, callbacks } = JSON.parse(extras[STATE].toString('utf8')) as CheckpointJson;
  return { epoch, step, stage, history, callbacks };
}
