// What save, saveWeights and loadWeights take, and the metadata they write.
import { typeError } from '../validate';

export interface SaveOptions {
  /** Any JSON (class names, preprocessing, recipe), stored in the archive and read back as `model.metadata`. Defaults to the model's current metadata. */
  metadata?: unknown;
}

/** Options of {@link Model.loadWeights}. */
export interface LoadWeightsOptions {
  /**
   * Every parameter and buffer of the model must be in the file with its shape, and nothing
   * else: else a `TORCHLITE_WEIGHTS_MISMATCH` error names the missing, unexpected and
   * mis-shaped tensors and nothing is loaded. `false` loads what matches and reports the rest,
   * which is how a pretrained body gets a new head. Defaults to `true`.
   */
  strict?: boolean;
  /** Keeps each tensor's dtype from the file (float16, bfloat16) instead of converting to the model's. Defaults to `false`. */
  keepDtype?: boolean;
  /** Maps a file's tensor names to the model's (a prefix added or dropped); a tensor it maps to `undefined` is skipped. Defaults to none. */
  rename?: (name: string) => string | undefined;
}

/** @internal `metadata` as the JSON text an archive stores ('' for none). */
export function metadataText(metadata: unknown): string {
  let text: string;
  try {
    text = metadata === undefined ? '' : JSON.stringify(metadata);
  } catch (error) {
    throw typeError(`JSON-serialisable metadata (${(error as Error).message})`, 'options.metadata', metadata);
  }
  if (text === undefined) throw typeError('JSON-serialisable metadata', 'options.metadata', metadata);
  return text;
}

/** @internal The part of a model's metadata that a safetensors header carries (class names and input spec), as `__metadata__` strings. */
export function carriedMetadata(metadata: unknown): Record<string, string> {
  const own = metadata as { classes?: unknown; input?: unknown } | undefined;
  const carried = own && typeof own === 'object' ? { ...(own.classes !== undefined && { classes: own.classes }), ...(own.input !== undefined && { input: own.input }) } : {};
  return Object.keys(carried).length > 0 ? { torchlite: JSON.stringify(carried) } : {};
}
