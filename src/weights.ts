// Weights by name in safetensors files: headers read and matched against a model here, the
// bytes read and written by the addon on the model's lane (binding/weights.cc).
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';

import { readError, TorchError } from './errors';
import { readTorchSave } from './pickle';
import { withFile } from './zip';
import type { Dtype } from './tensor';

/** safetensors' dtype names and torchlite's. */
const SAFETENSORS_DTYPES: Record<string, Dtype> = {
  F64: 'float64',
  F32: 'float32',
  F16: 'float16',
  BF16: 'bfloat16',
  I64: 'int64',
  I32: 'int32',
  I16: 'int16',
  I8: 'int8',
  U8: 'uint8',
  BOOL: 'bool',
};
const DTYPE_CODES = Object.fromEntries(Object.entries(SAFETENSORS_DTYPES).map(([code, dtype]) => [dtype, code])) as Record<Dtype, string>;
const BYTES: Record<Dtype, number> = { float64: 8, float32: 4, float16: 2, bfloat16: 2, int64: 8, int32: 4, int16: 2, int8: 1, uint8: 1, bool: 1 };

/** One tensor of a weights file: its dtype and shape, and where its bytes are. */
export interface WeightEntry {
  name: string;
  file: string;
  dtype: Dtype;
  shape: number[];
  offset: number;
  bytes: number;
}

/** A weights file's tensors, and the string metadata of its header (`__metadata__`). */
export interface WeightsFile {
  entries: WeightEntry[];
  metadata: Record<string, string>;
}

/**
 * The tensors of a `.safetensors` file, of the shards a `model.safetensors.index.json` names
 * (Hugging Face's sharded layout), or of a torch.save file (`.pth`, `.bin`), without reading their bytes.
 */
export async function readWeightsIndex(path: string): Promise<WeightsFile> {
  if (path.endsWith('.safetensors.index.json')) {
    let index: { weight_map?: Record<string, string>; metadata?: Record<string, unknown> };
    try {
      index = JSON.parse(await readFile(path, 'utf8'));
    } catch (error) {
      if (error instanceof SyntaxError) throw new TorchError('TORCHLITE_CORRUPT_FILE', `${path} is not valid JSON: ${error.message}`);
      throw readError(error, `cannot read ${path}`);
    }
    if (!index.weight_map || typeof index.weight_map !== 'object') throw new TorchError('TORCHLITE_CORRUPT_FILE', `${path} has no "weight_map"`);
    const shards = [...new Set(Object.values(index.weight_map))];
    const files = await Promise.all(shards.map((shard) => readSafetensorsHeader(join(dirname(path), shard))));
    return { entries: files.flatMap((f) => f.entries), metadata: Object.assign({}, ...files.map((f) => f.metadata)) };
  }
  if (path.endsWith('.safetensors')) return readSafetensorsHeader(path);
  if (/\.(pth|pt|bin|ckpt)$/.test(path)) return readTorchSave(path);
  throw new TorchError('TORCHLITE_UNSUPPORTED_FORMAT', `${path}: weights come as .safetensors files (or a model.safetensors.index.json of shards), or torch.save files (.pth, .bin)`);
}

/** A safetensors file's header: an 8-byte little-endian length, then that many bytes of JSON. */
function readSafetensorsHeader(path: string): Promise<WeightsFile> {
  return withFile(path, async (handle, size) => {
    const prefix = Buffer.alloc(8);
    await handle.read(prefix, 0, 8, 0);
    const length = Number(prefix.readBigUInt64LE(0));
    if (size < 8 || length < 2 || 8 + length > size) throw new TorchError('TORCHLITE_CORRUPT_FILE', `${path} is not a safetensors file (its header length ${length} does not fit its ${size} bytes)`);
    const json = Buffer.alloc(length);
    await handle.read(json, 0, length, 8);
    let header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] } | Record<string, string>>;
    try {
      header = JSON.parse(json.toString('utf8'));
    } catch (error) {
      throw new TorchError('TORCHLITE_CORRUPT_FILE', `${path}: the safetensors header is not valid JSON (${(error as Error).message})`);
    }
    const start = 8 + length;
    const entries: WeightEntry[] = [];
    for (const [name, info] of Object.entries(header)) {
      if (name === '__metadata__') continue;
      const { dtype: code, shape, data_offsets: offsets } = info as { dtype: string; shape: number[]; data_offsets: [number, number] };
      const dtype = SAFETENSORS_DTYPES[code];
      if (!dtype) throw new TorchError('TORCHLITE_UNSUPPORTED_FORMAT', `${path}: '${name}' has dtype ${code}, which torchlite does not read (${Object.keys(SAFETENSORS_DTYPES).join(', ')})`);
      const bytes = shape.reduce((n, d) => n * d, 1) * BYTES[dtype];
      if (!Array.isArray(offsets) || offsets[1] - offsets[0] !== bytes || start + offsets[1] > size)
        throw new TorchError('TORCHLITE_CORRUPT_FILE', `${path}: '${name}' (${code} ${JSON.stringify(shape)}) claims bytes ${JSON.stringify(offsets)}, which do not fit the file; it is truncated or corrupt`);
      entries.push({ name, file: path, dtype, shape, offset: start + offsets[0], bytes });
    }
    const metadata = (header.__metadata__ ?? {}) as Record<string, string>;
    return { entries, metadata };
  });
}

/** What {@link Model.loadWeights} matched between a file and a model. */
export interface LoadWeightsResult {
  /** Names loaded. */
  loaded: string[];
  /** The model's parameters and buffers the file lacks (they keep their values). */
  missing: string[];
  /** The file's tensors the model lacks (ignored). */
  unexpected: string[];
  /** Names in both whose shapes differ (not loaded), with both shapes. */
  mismatched: { name: string; model: number[]; file: number[] }[];
  /** The header's `__metadata__` strings. */
  metadata: Record<string, string>;
}

/**
 * Matches a file's entries to a model's tensors by name, as `load_state_dict` does; with
 * `strict`, anything missing, unexpected or mis-shaped is a `TORCHLITE_WEIGHTS_MISMATCH` error
 * that names the first few of each and counts them.
 */
export function matchWeights(file: string, weights: WeightsFile, model: { name: string; shape: number[] }[], strict: boolean): LoadWeightsResult & { entries: WeightEntry[] } {
  const shapes = new Map(model.map((t) => [t.name, t.shape]));
  const names = new Set(weights.entries.map((e) => e.name));
  const entries: WeightEntry[] = [];
  const result: LoadWeightsResult = { loaded: [], missing: model.filter((t) => !names.has(t.name)).map((t) => t.name), unexpected: [], mismatched: [], metadata: weights.metadata };
  for (const entry of weights.entries) {
    const shape = shapes.get(entry.name);
    if (!shape) result.unexpected.push(entry.name);
    else if (shape.join() !== entry.shape.join()) result.mismatched.push({ name: entry.name, model: shape, file: entry.shape });
    else {
      result.loaded.push(entry.name);
      entries.push(entry);
    }
  }
  if (strict && (result.missing.length || result.unexpected.length || result.mismatched.length))
    throw new TorchError('TORCHLITE_WEIGHTS_MISMATCH', `${file} does not fit this model: ${describeMismatch(result)}. Nothing was loaded; pass strict: false to load the tensors that match (a new head, say)`);
  return { ...result, entries };
}

/** The missing, unexpected and mis-shaped tensors of a match: each kind's count and its first five. */
export function describeMismatch({ missing, unexpected, mismatched }: Pick<LoadWeightsResult, 'missing' | 'unexpected' | 'mismatched'>): string {
  const few = (label: string, items: string[]) => (items.length ? [`${items.length} ${label} (${items.slice(0, 5).join(', ')}${items.length > 5 ? ', …' : ''})`] : []);
  return [
    ...few('missing', missing.map((n) => `'${n}'`)),
    ...few('unexpected', unexpected.map((n) => `'${n}'`)),
    ...few('mis-shaped', mismatched.map((m) => `'${m.name}': model ${JSON.stringify(m.model)}, file ${JSON.stringify(m.file)}`)),
  ].join('; ');
}

/** A safetensors header for `tensors` in order, with string `metadata`, padded to 8 bytes as the format asks. */
export function safetensorsHeader(tensors: { name: string; shape: number[]; dtype: Dtype }[], metadata: Record<string, string>): Buffer {
  let offset = 0;
  const header: Record<string, unknown> = { __metadata__: metadata };
  for (const t of tensors) {
    const bytes = t.shape.reduce((n, d) => n * d, 1) * BYTES[t.dtype];
    header[t.name] = { dtype: DTYPE_CODES[t.dtype], shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  return Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, 0x20)]);
}
