// Loading: TorchScript archives and checkpoints, and the zoo's architectures filled with
// pretrained weights from torchvision or the Hugging Face Hub.
import { callNativeAsync, TorchError } from '../errors';
import { native } from '../native';
import type { Device } from '../tensor';
import { checkDevice, checkOptions, checkString, typeError } from '../validate';
import { ensureTorchvisionOps } from '../ops';
import { describeMismatch } from '../weights';
import { type HubModel, hubModel, type ZooMetadata, zooPath, zooWeightsFile } from '../zoo';
import { Model } from './model';

export interface LoadOptions {
  /** Where the weights are placed. Defaults to `'cpu'`. */
  device?: Device;
  /**
   * The memory layout of 4-D weights and inputs. `'auto'` picks channels-last (NHWC) on the
   * CPU for models with 4-D weights (convolutions), which oneDNN trains faster than NCHW
   * (measured: the shipped CNN 1.3-1.4x, MobileNetV3 1.3x, ResNet-18 1.05x); a model whose
   * graph fails in NHWC where it runs in NCHW (a `view()` of a convolution's output) goes back
   * to NCHW on its first call, found by one extra inference pass that changes nothing, so the
   * result is that of a model that never tried; so does a model with a layer
   * oneDNN cannot train in NHWC (a 1x1 convolution with stride > 1 over a channel count that
   * is not a multiple of 16: its weight gradient corrupts memory inside LibTorch), on its first
   * training step on the CPU; moving the model to a GPU turns an automatic choice off.
   * `true`/`false` force it (as `model.channelsLast(on)` does later; `true` fails such a
   * model's CPU training steps with `TORCHLITE_UNSAFE_LAYOUT`). Saved files hold NCHW weights
   * either way.
   * Defaults to `'auto'`.
   */
  channelsLast?: boolean | 'auto';
  /**
   * For a zoo model (`'torchvision:resnet50'`): `'none'` (PyTorch's default initialisation of
   * each layer, drawn from the generator `manualSeed` seeds), a torchvision weights name such
   * as `'IMAGENET1K_V2'` or `'DEFAULT'` (read from torch.hub's cache, `$TORCH_HOME/hub/checkpoints`,
   * downloaded there when missing), or a `.safetensors` or `.pth` file. Ignored for a TorchScript
   * file. Defaults to `'DEFAULT'`.
   */
  weights?: string;
}

/** The extra file that marks an archive as a torchlite checkpoint (checkpoint.ts writes it). */
export const CHECKPOINT_STATE = 'torchlite-checkpoint.json';

/**
 * Loads a TorchScript archive saved by `torch.jit.script(...).save()` or
 * `torch.jit.trace(...).save()`, in the mode it was saved in; or the weights of a checkpoint
 * that the `checkpoint` callback wrote (`best.ckpt` is the best epoch), in eval mode, ready for
 * inference (a checkpoint is written mid-training, in train mode; `train()` trains it again).
 */
export function loadPretrained(path: string, options?: LoadOptions): Promise<Model> {
  return callNativeAsync(async () => {
    checkString(path, 'path');
    const zoo = /^torchvision:(.+)$/.exec(path);
    if (zoo) return loadZoo(zooPath(zoo[1]), options ?? {});
    const hub = await hubModel(path);
    if (hub) return loadZoo(zooPath(hub.architecture, hub.text !== undefined), { ...options, weights: 'none' }, hub);
    const { weights: _weights, ...rest } = checkOptions<LoadOptions>(options, 'options', ['device', 'channelsLast', 'weights']);
    const { model, extras } = await loadArchive(path, rest, [CHECKPOINT_STATE]);
    return extras[CHECKPOINT_STATE] ? model.eval() : model;
  });
}

/**
 * A zoo architecture: its archive in NCHW; sized from a Hub config (text) or given a head of its
 * class count; the weights asked for, straight into the placeholders; the placeholders they
 * leave filled with default initialisation and the layout chosen, in one job on the lane; then
 * the device asked for (a copy or a layout change would have densified the placeholders).
 */
async function loadZoo(archive: string, options: LoadOptions, hub?: HubModel): Promise<Model> {
  const { weights = 'DEFAULT', channelsLast = 'auto', device = 'cpu' } = checkOptions<LoadOptions>(options, 'options', ['device', 'channelsLast', 'weights']);
  checkString(weights, 'options.weights');
  const target = checkDevice(device, 'options.device');
  if (channelsLast !== 'auto' && typeof channelsLast !== 'boolean') throw typeError("a boolean or 'auto'", 'options.channelsLast', channelsLast);
  // On the CPU first: a copy to another device would turn the placeholders into dense zeros.
  const { model } = await loadArchive(archive, { channelsLast: false }, []);
  try {
    const file = hub ? hub.weights : await zooWeightsFile((model.metadata as { zoo: ZooMetadata }).zoo, weights);
    if (hub?.text) Model.resize(model, hub.text.shapes, hub.text.values);
    else if (hub && hub.numClasses !== 1000) model.resetClassifier(hub.numClasses);
    if (hub) model.metadata = { ...(model.metadata as object), ...(hub.numClasses !== 1000 && { classes: undefined }), ...hub.metadata };
    if (file) {
      // The weights go straight into the placeholders; what they leave (a new head) is drawn after.
      // A text checkpoint may lack the classifier (a bare encoder) and hold tensors the rename skips.
      const loaded = await model.loadWeights(file, { strict: !hub?.text, ...(hub?.text && { rename: hub.text.rename }) });
      const missing = loaded.missing.filter((name) => !name.startsWith('classifier.'));
      if (missing.length || loaded.mismatched.length)
        throw new TorchError('TORCHLITE_WEIGHTS_MISMATCH', `${file} does not fit its config.json: ${describeMismatch({ missing, unexpected: [], mismatched: loaded.mismatched })}`);
    }
    await Model.enqueue(model, (handle) => handle.materialize(channelsLast === 'auto' ? 'auto' : channelsLast ? 'on' : 'off'));
    if (target !== 'cpu') await model.to(target as Device);
    return model.eval();
  } catch (error) {
    model.dispose();
    throw error;
  }
}

/** @internal Loads an archive and the named extra files (checkpoint state) in it. */
export async function loadArchive(path: string, options: LoadOptions | undefined, extraNames: string[]): Promise<{ model: Model; extras: Record<string, Buffer> }> {
  checkString(path, 'path');
  const { device = 'cpu', channelsLast = 'auto' } = checkOptions<LoadOptions>(options, 'options', ['device', 'channelsLast']);
  const target = checkDevice(device, 'options.device');
  if (channelsLast !== 'auto' && typeof channelsLast !== 'boolean') throw typeError("a boolean or 'auto'", 'options.channelsLast', channelsLast);
  const layout = channelsLast === 'auto' ? 'auto' : channelsLast ? 'on' : 'off';
  const handle = await native.Model.load(path, target, extraNames, layout).catch(async (error: unknown) => {
    // torchvision's ops are loaded when a model first needs them, then the load runs again:
    // Debian's build of them drags in OpenCV, GStreamer and GLib, which a process that never
    // meets a detection model (or that decodes images with sharp) is better without.
    if (!unknownOp(error)?.startsWith('torchvision::') || !(await ensureTorchvisionOps())) throw explainUnknownOp(error);
    return native.Model.load(path, target, extraNames, layout).catch((again: unknown) => {
      throw explainUnknownOp(again);
    });
  });
  return { model: new Model(handle), extras: handle.extras() };
}

/** The operator a TORCH_UNKNOWN_OP failure names. */
function unknownOp(error: unknown): string | undefined {
  const failure = error as { code?: string; message?: string };
  return failure.code === 'TORCH_UNKNOWN_OP' ? /Unknown builtin op: ([\w:.]+?)\.?(?:\s|$)/.exec(failure.message ?? '')?.[1] : undefined;
}

/** Adds to a TORCH_UNKNOWN_OP failure what to install or load for the operator it names. */
function explainUnknownOp(error: unknown): unknown {
  const op = unknownOp(error);
  if (!op) return error;
  const failure = error as { message: string };
  const version = native.torchVersion;
  const what = op.startsWith('torchvision::')
    ? `it calls torchvision's operators: install torchvision's for LibTorch ${version} (Debian: apt-get install python3-torchvision; with a pip torch, the torchvision release that matches it), which torchlite then loads by itself, or load the library with ops.load(path) or TORCHLITE_TORCHVISION_OPS=path`
    : op.startsWith('aten::')
      ? `LibTorch ${version} does not have ${op}, which a newer PyTorch added: build torchlite against the LibTorch of the PyTorch that saved the model (LIBTORCH=/path/to/libtorch npm run build:native; see docs/building.md)`
      : `load the library that defines ${op} with ops.load(path) first`;
  (error as Error).message = `the model uses the operator ${op}, which is not registered: ${what}. (${failure.message.split('\n')[0]})`;
  return error;
}
