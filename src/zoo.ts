// The architectures torchlite ships (models/zoo/, made from torchvision's own classes by
// scripts/zoo/make_zoo.py): names such as 'torchvision:resnet50', and where their weights are.
import { existsSync, readdirSync } from 'node:fs';
import { homedir } from 'node:os';
import { basename, join } from 'node:path';

import { TorchError } from './errors';

/** The zoo's archives: code and names, with placeholders where the weights go. */
export const ZOO_DIR = join(__dirname, '..', 'models', 'zoo');

/** What a zoo archive's metadata says of its published weights. */
export interface ZooMetadata {
  architecture: string;
  source: string;
  default: string;
  weights: Record<string, { url: string; classes: number; crop: number; resize: number }>;
}

/** The archive a `torchvision:NAME` spec names, or undefined for a spec that is a path. */
export function zooArchive(spec: string): string | undefined {
  const match = /^torchvision:(.+)$/.exec(spec);
  if (!match) return undefined;
  const path = join(ZOO_DIR, `${match[1]}.pt`);
  if (!existsSync(path)) {
    const known = readdirSync(ZOO_DIR).filter((f) => f.endsWith('.pt')).map((f) => f.slice(0, -3)).sort();
    throw new TorchError('TORCHLITE_UNKNOWN_MODEL', `torchlite's zoo has no '${match[1]}'; it has ${known.join(', ')}`);
  }
  return path;
}

/** torch.hub's checkpoint folder: $TORCH_HOME/hub/checkpoints, TORCH_HOME defaulting as torch.hub's does. */
export function hubCheckpoints(): string {
  const torchHome = process.env.TORCH_HOME ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'torch');
  return join(torchHome, 'hub', 'checkpoints');
}

/**
 * The file to load a zoo model's weights from: `weights` itself where it is a path, else the
 * named torchvision weights (`'DEFAULT'`, `'IMAGENET1K_V2'`, …) in torch.hub's cache, where
 * Python's torchvision puts them; undefined for `'none'`.
 */
export function zooWeightsFile(zoo: ZooMetadata, weights: string): string | undefined {
  if (weights === 'none') return undefined;
  if (/[/\\]|\.safetensors$|\.json$/.test(weights)) return weights;
  const name = weights === 'DEFAULT' ? zoo.default : weights;
  const published = zoo.weights[name];
  if (!published)
    throw new TorchError('TORCHLITE_UNKNOWN_MODEL', `${zoo.architecture} has no weights '${weights}'; torchvision publishes ${Object.keys(zoo.weights).join(', ')} (or pass 'none', or a .safetensors file)`);
  const folder = hubCheckpoints();
  const file = join(folder, basename(new URL(published.url).pathname));
  // A safetensors copy beside torch.hub's file (same name) is read first.
  const converted = file.replace(/\.pth$/, '.safetensors');
  if (existsSync(converted)) return converted;
  if (existsSync(file)) return file;
  throw new TorchError(
    'TORCHLITE_NOT_CACHED',
    `${zoo.architecture}'s ${name} weights are not in ${folder} (${basename(file)}); torchlite does not download yet: fetch ${published.url} into that folder (Python's torchvision does the same), or pass weights: a .safetensors file, or 'none'`,
  );
}
