// The architectures torchlite ships (models/zoo/, made from torchvision's own classes by
// scripts/zoo/make_zoo.py), the names that reach them ('torchvision:resnet50', 'hf:owner/name'),
// and where their weights come from.
import { existsSync, readdirSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';

import { TorchError } from './errors';
import { hubFile, parseHubName, torchHubFile } from './hub';
import type { TextSpec } from './text';
import { bertName, bertSizing, classesOf, normalisedConfig, textArchitecture } from './textzoo';
import { readZipText } from './zip';

/** The zoo's archives: code and names, with placeholders where the weights go. */
export const ZOO_DIR = join(__dirname, '..', 'models', 'zoo');

/** What a zoo archive's metadata says of its published weights. */
export interface ZooMetadata {
  architecture: string;
  source: string;
  default: string;
  weights: Record<string, { url: string; classes: number; crop: number; resize: number }>;
}

/** The text archives (BERT at each depth), reached through hf: names rather than torchvision: ones. */
const TEXT_ARCHIVE = /^(bert|roberta|distilbert)-L\d+$/;

/** The zoo's vision architectures, the names after `torchvision:`. */
export function zooNames(): string[] {
  return readdirSync(ZOO_DIR).filter((f) => f.endsWith('.pt')).map((f) => f.slice(0, -3)).filter((name) => !TEXT_ARCHIVE.test(name)).sort();
}

/** The archive of a zoo architecture: a vision one by its torchvision name, or (with `text`) a text one. */
export function zooPath(architecture: string, text = false): string {
  const path = join(ZOO_DIR, `${architecture}.pt`);
  if (TEXT_ARCHIVE.test(architecture) !== text || !existsSync(path)) throw new TorchError('TORCHLITE_UNKNOWN_MODEL', `torchlite's zoo has no '${architecture}'; it has ${zooNames().join(', ')}`);
  return path;
}

/** torch.hub's checkpoint folder: $TORCH_HOME/hub/checkpoints, TORCH_HOME defaulting as torch.hub's does. */
export function hubCheckpoints(): string {
  const torchHome = process.env.TORCH_HOME ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'torch');
  return join(torchHome, 'hub', 'checkpoints');
}

/**
 * The file to load a zoo model's weights from: `weights` itself where it is a path, else the
 * named torchvision weights (`'DEFAULT'`, `'IMAGENET1K_V2'`, …) from torch.hub's cache, where
 * Python's torchvision keeps them, downloaded there first when missing; undefined for `'none'`.
 */
export async function zooWeightsFile(zoo: ZooMetadata, weights: string): Promise<string | undefined> {
  if (weights === 'none') return undefined;
  if (/[/\\]|\.(safetensors|json|pth|bin)$/.test(weights)) return weights;
  const name = weights === 'DEFAULT' ? zoo.default : weights;
  const published = zoo.weights[name];
  if (!published)
    throw new TorchError('TORCHLITE_UNKNOWN_MODEL', `${zoo.architecture} has no weights '${weights}'; torchvision publishes ${Object.keys(zoo.weights).join(', ')} (or pass 'none', or a .safetensors or .pth file)`);
  const file = join(hubCheckpoints(), new URL(published.url).pathname.split('/').pop()!);
  // A safetensors copy beside torch.hub's file (same name) is read first.
  const converted = file.replace(/\.pth$/, '.safetensors');
  if (existsSync(converted)) return converted;
  return torchHubFile(mirrored(published.url), hubCheckpoints());
}

/** torchvision's URL through TORCHLITE_TORCHVISION_MIRROR (a base that replaces `https://download.pytorch.org/models/`), where set. */
function mirrored(url: string): string {
  const mirror = process.env.TORCHLITE_TORCHVISION_MIRROR;
  return mirror ? url.replace(/^https:\/\/download\.pytorch\.org\/models\//, mirror.endsWith('/') ? mirror : `${mirror}/`) : url;
}

/** What loading a Hub repository needs: the zoo architecture, its weights file, and the metadata its config gives. */
export interface HubModel {
  architecture: string;
  weights: string;
  numClasses: number;
  metadata: { classes?: string[]; input?: { shape: number[]; mean: number[]; std: number[]; resize: 'center-crop'; resizeTo?: number }; text?: TextSpec; hub: { repo: string; revision: string } };
  /** A text model: the shapes and attributes its config sets, and how checkpoint names map to the model's. */
  text?: { shapes: Record<string, number[]>; values: Record<string, number>; rename: (name: string) => string | undefined };
}

/** The weights files a Hub repository may hold, in the order they are tried. */
const HUB_WEIGHTS = ['model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin'];

/**
 * A Hub repository (`hf:owner/name[@revision]`) of an architecture the zoo has: timm's
 * ResNet family, whose parameter names are torchvision's. Its `config.json` names the
 * architecture and the class count, and its `pretrained_cfg` the preprocessing.
 */
export async function hubModel(spec: string): Promise<HubModel | undefined> {
  const name = parseHubName(spec);
  if (!name) return undefined;
  const { repo, revision } = name;
  const configFile = (await hubFile(repo, 'config.json', { revision }))!;
  const config = JSON.parse(await readFile(configFile, 'utf8')) as {
    architecture?: string;
    architectures?: string[];
    model_type?: string;
    num_classes?: number;
    label_names?: string[];
    pretrained_cfg?: { input_size?: number[]; mean?: number[]; std?: number[]; crop_pct?: number; num_classes?: number };
  };
  const text = textArchitecture(config);
  const architecture = text?.architecture ?? config.architecture;
  if (!architecture || !(text || /^(resnet(18|34|50|101)|resnext50_32x4d|wide_resnet50_2)$/.test(architecture)))
    throw new TorchError(
      'TORCHLITE_UNSUPPORTED_ARCHITECTURE',
      `${repo}'s config names ${architecture ?? config.architectures?.join(', ') ?? 'no architecture'}, which torchlite's zoo cannot take yet (from the Hub: BERT, RoBERTa and DistilBERT text classifiers, and timm's ResNet family; for the rest, the torchvision: names, or export the model with scripts/export_model.py)`,
    );
  let weights: string | undefined;
  for (const file of HUB_WEIGHTS) {
    weights = await hubFile(repo, file, { revision, optional: true });
    if (weights) break;
  }
  if (!weights) throw new TorchError('TORCHLITE_FILE_NOT_FOUND', `${repo}@${revision} has no weights (${HUB_WEIGHTS.join(', ')})`);
  if (weights.endsWith('.index.json')) {
    const index = JSON.parse(await readFile(weights, 'utf8')) as { weight_map: Record<string, string> };
    for (const shard of new Set(Object.values(index.weight_map))) await hubFile(repo, shard, { revision });
  }
  if (text) {
    const bert = normalisedConfig(config as Record<string, unknown>, text.family);
    const sizing = bertSizing(bert, text.family);
    const tokenizerFile = await hubFile(repo, 'tokenizer.json', { revision, optional: true });
    const tokenizer = tokenizerFile ? (JSON.parse(await readFile(tokenizerFile, 'utf8')) as { truncation?: { max_length?: number } | null }) : undefined;
    const maxLength = Math.min(bert.max_position_embeddings, tokenizer?.truncation?.max_length ?? bert.max_position_embeddings);
    const classes = classesOf(bert);
    return {
      architecture,
      weights,
      numClasses: sizing.classes,
      metadata: { ...(classes && { classes }), ...(tokenizer && { text: { tokenizer, maxLength, inputs: ['input_ids', 'attention_mask'] } }), hub: { repo, revision } },
      text: { shapes: sizing.shapes, values: sizing.values, rename: (name) => bertName(name, text.family) },
    };
  }
  const cfg = config.pretrained_cfg ?? {};
  const numClasses = config.num_classes ?? cfg.num_classes ?? 1000;
  const input = cfg.mean && cfg.std ? timmInput(cfg) : await imageProcessorInput(repo, revision);
  return { architecture, weights, numClasses, metadata: { ...(config.label_names && { classes: config.label_names }), ...(input && { input }), hub: { repo, revision } } };
}

type HubInput = NonNullable<HubModel['metadata']['input']>;

/** timm's `pretrained_cfg`: input size, mean, std, and the crop share (the short side is resized to size / crop_pct). */
function timmInput(cfg: { input_size?: number[]; mean?: number[]; std?: number[]; crop_pct?: number }): HubInput {
  const [channels, height] = cfg.input_size ?? [3, 224, 224];
  return { shape: [channels, height, height], mean: cfg.mean!, std: cfg.std!, resize: 'center-crop', ...(cfg.crop_pct && { resizeTo: Math.floor(height / cfg.crop_pct) }) };
}

/** transformers' `preprocessor_config.json` (an image processor's image_mean, image_std, size and crop_size), where the repository has one. */
async function imageProcessorInput(repo: string, revision: string): Promise<HubInput | undefined> {
  const file = await hubFile(repo, 'preprocessor_config.json', { revision, optional: true });
  if (!file) return undefined;
  const p = JSON.parse(await readFile(file, 'utf8')) as { image_mean?: number[]; image_std?: number[]; size?: number | { shortest_edge?: number; height?: number }; crop_size?: number | { height?: number } };
  if (!p.image_mean || !p.image_std) return undefined;
  const side = (v: number | { shortest_edge?: number; height?: number } | undefined) => (typeof v === 'number' ? v : (v?.height ?? v?.shortest_edge));
  const resizeTo = side(p.size) ?? 224;
  const crop = side(p.crop_size) ?? resizeTo;
  return { shape: [p.image_mean.length, crop, crop], mean: p.image_mean, std: p.image_std, resize: 'center-crop', ...(resizeTo > crop && { resizeTo }) };
}

/**
 * Fills the caches ahead of time, for a machine that will run offline: a `torchvision:` name's
 * weights (torch.hub's cache), or a Hub repository's config, weights, tokenizer and
 * preprocessing files. Returns the files, in the caches.
 */
export async function pull(spec: string, options: { weights?: string } = {}): Promise<string[]> {
  const torchvision = /^torchvision:(.+)$/.exec(spec);
  if (torchvision) {
    const zoo = (JSON.parse((await readZipText(zooPath(torchvision[1]), '/extra/torchlite.json'))!) as { zoo: ZooMetadata }).zoo;
    const file = await zooWeightsFile(zoo, options.weights ?? 'DEFAULT');
    return file ? [file] : [];
  }
  const name = parseHubName(spec);
  if (!name) throw new TorchError('TORCHLITE_UNKNOWN_MODEL', `${spec}: pull takes torchvision:NAME or hf:owner/name[@revision]`);
  const files: string[] = [];
  for (const file of ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'preprocessor_config.json', ...HUB_WEIGHTS]) {
    const path = await hubFile(name.repo, file, { revision: name.revision, optional: true });
    if (path) files.push(path);
    if (path && file.startsWith('model.safetensors')) break; // one weights format is enough
  }
  const index = files.find((f) => f.endsWith('.index.json'));
  if (index)
    for (const shard of new Set(Object.values((JSON.parse(await readFile(index, 'utf8')) as { weight_map: Record<string, string> }).weight_map)))
      files.push((await hubFile(name.repo, shard, { revision: name.revision }))!);
  if (files.length === 0) throw new TorchError('TORCHLITE_FILE_NOT_FOUND', `${name.repo}@${name.revision} has none of the files torchlite loads`);
  return files;
}
