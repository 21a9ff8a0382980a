// Tokenization with Hugging Face's tokenizers, read from a tokenizer.json. The pure-JS
// @huggingface/tokenizers runs it: it gives the official native binding's ids (a test
// checks), at 20k fortunes/s on one thread against the binding's 36k/s batched over two
// (bench/text.mjs), and it is 0.6 MB with nothing native to install, where the binding is
// 64 MB of binaries for every platform. It has no truncation or padding, which are done
// here as the binding does them.
import { readFile } from 'node:fs/promises';

import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';

import { readError, TorchError } from './errors';
import { Tensor, tensor } from './tensor';
import { checkOptions, checkPositiveInteger, checkString, typeError } from './validate';

/**
 * What a text model carries in `metadata.text`, so that evaluation, prediction and further
 * fine-tuning tokenize as training did. scripts/export_model.py writes it for text models,
 * and fit/fineTune on a {@link textDataset} record it.
 */
export interface TextSpec {
  /** The whole tokenizer.json. */
  tokenizer: object;
  /** Longest input in tokens, special tokens included; longer texts are truncated. */
  maxLength: number;
  /** Forward's argument names for the token ids and the attention mask, when they are passed by name. */
  inputs?: [string, string];
}

export interface TokenizerOptions {
  /** Longest input in tokens, special tokens included. Defaults to the tokenizer.json's truncation length, else `512`. */
  maxLength?: number;
}

/** Token ids `[B, L]` and an attention mask `[B, L]` (1 for tokens, 0 for padding), both int64, padded to the longest text. */
export interface EncodedTexts {
  ids: Tensor;
  mask: Tensor;
}

/** A Hugging Face tokenizer (tokenizer.json) with truncation and padding. */
export class TextTokenizer {
  /** The tokenizer.json this tokenizer was made from. */
  readonly json: object;
  /** Longest input in tokens, special tokens included. */
  readonly maxLength: number;
  /** The id padding takes: the tokenizer.json's padding id, else the id of a `[PAD]`/`<pad>` token, else 0. */
  readonly padId: number;
  readonly #tokenizer: HfTokenizer;
  /** Special tokens the post-processor puts after the text (`[SEP]`), kept when truncating. */
  readonly #suffix: number;

  /** @internal Use {@link tokenizer} or {@link tokenizerOf}. */
  constructor(json: object, maxLength: number | undefined, source: string) {
    try {
      this.#tokenizer = new HfTokenizer(json, {});
    } catch (error) {
      throw new TorchError('TORCHLITE_BAD_DATA', `${source} is not a tokenizer.json that @huggingface/tokenizers reads: ${(error as Error).message}`, { cause: error });
    }
    this.json = json;
    const spec = json as { truncation?: { max_length?: number } | null; padding?: { pad_id?: number } | null };
    this.maxLength = maxLength ?? spec.truncation?.max_length ?? 512;
    const vocab = this.#tokenizer.get_vocab(true);
    this.padId = spec.padding?.pad_id ?? ['[PAD]', '<pad>', '<|pad|>'].map((t) => vocab.get(t)).find((id) => id !== undefined) ?? 0;
    const plain = this.#tokenizer.encode('a', { add_special_tokens: false }).ids;
    const full = this.#tokenizer.encode('a').ids;
    const at = full.findIndex((_, i) => plain.every((id, k) => full[i + k] === id));
    this.#suffix = at < 0 ? 0 : full.length - at - plain.length;
    if (this.maxLength <= full.length - plain.length) throw new RangeError(`Expected a maxLength above the ${full.length - plain.length} special tokens for \`options.maxLength\` but received ${this.maxLength}`);
  }

  /** Tokens in the vocabulary, added tokens included. */
  get vocabSize(): number {
    return this.#tokenizer.get_vocab(true).size;
  }

  /** The ids of one text, special tokens included, truncated to `maxLength` (keeping the closing special tokens). */
  ids(text: string, maxLength = this.maxLength): number[] {
    const ids = this.#tokenizer.encode(text).ids;
    if (ids.length <= maxLength) return ids;
    return [...ids.slice(0, maxLength - this.#suffix), ...ids.slice(ids.length - this.#suffix)];
  }

  /** Tokens of one text, for inspection. */
  tokens(text: string): string[] {
    return this.#tokenizer.encode(text).tokens;
  }

  /** Text from ids, special tokens left out. */
  decode(ids: readonly number[]): string {
    return this.#tokenizer.decode([...ids], { skip_special_tokens: true });
  }

  /** Tokenizes a batch: truncated to `maxLength`, padded to the longest text of the batch. */
  encode(texts: readonly string[], options?: TokenizerOptions): EncodedTexts {
    if (!Array.isArray(texts) || texts.length === 0 || texts.some((t) => typeof t !== 'string')) throw typeError('a non-empty array of strings', 'texts', texts);
    const o = checkOptions<TokenizerOptions>(options, 'options', ['maxLength']);
    const maxLength = o.maxLength === undefined ? this.maxLength : checkPositiveInteger(o.maxLength, 'options.maxLength');
    return this.pad(texts.map((t) => this.ids(t, maxLength)));
  }

  /** @internal Pads token id rows to the longest: the batch of a text dataset. */
  pad(rows: readonly ArrayLike<number>[]): EncodedTexts {
    const length = Math.max(...rows.map((r) => r.length));
    const ids = new BigInt64Array(rows.length * length).fill(BigInt(this.padId));
    const mask = new BigInt64Array(rows.length * length);
    rows.forEach((row, b) => {
      for (let i = 0; i < row.length; i++) {
        ids[b * length + i] = BigInt(row[i]);
        mask[b * length + i] = 1n;
      }
    });
    return { ids: tensor(ids, [rows.length, length]), mask: tensor(mask, [rows.length, length]) };
  }

  /** What a model trained with this tokenizer records in `metadata.text`. */
  spec(inputs?: [string, string]): TextSpec {
    return { tokenizer: this.json, maxLength: this.maxLength, ...(inputs && { inputs }) };
  }
}

/** Loads a tokenizer.json (Hugging Face's format, as `tokenizer.save()` or a model repository writes it). */
export async function tokenizer(path: string, options?: TokenizerOptions): Promise<TextTokenizer> {
  checkString(path, 'path');
  const o = checkOptions<TokenizerOptions>(options, 'options', ['maxLength']);
  const maxLength = o.maxLength === undefined ? undefined : checkPositiveInteger(o.maxLength, 'options.maxLength');
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    throw readError(error, `cannot read tokenizer ${path}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new TorchError('TORCHLITE_BAD_DATA', `${path} is not JSON: ${(error as Error).message}`, { cause: error });
  }
  if (json === null || typeof json !== 'object' || !('model' in json)) throw new TorchError('TORCHLITE_BAD_DATA', `${path} is not a tokenizer.json (it has no "model")`);
  return new TextTokenizer(json, maxLength, path);
}

/** The text spec in a model's metadata, if it has a valid one. */
export function textSpecOf(model: { readonly metadata: unknown }): TextSpec | undefined {
  const text = (model.metadata as { text?: Partial<TextSpec> } | null | undefined)?.text;
  if (!text || text.tokenizer === null || typeof text.tokenizer !== 'object' || !Number.isInteger(text.maxLength)) return undefined;
  const inputs = Array.isArray(text.inputs) && text.inputs.length === 2 && text.inputs.every((n) => typeof n === 'string') ? text.inputs : undefined;
  return { tokenizer: text.tokenizer, maxLength: text.maxLength!, ...(inputs && { inputs }) };
}

/** The tokenizer a text model carries in `metadata.text`, or undefined when it has none. */
export function tokenizerOf(model: { readonly metadata: unknown }): TextTokenizer | undefined {
  const spec = textSpecOf(model);
  return spec && new TextTokenizer(spec.tokenizer, spec.maxLength, "the model's metadata.text.tokenizer");
}

/** A text batch's input: `[ids, mask]`, or the two named by forward's argument names. */
export type TextInput = [Tensor, Tensor] | Record<string, Tensor>;

/**
 * A batch input for a text model: `[ids, mask]` by position, or named by `inputs` (forward's
 * argument names, e.g. `['input_ids', 'attention_mask']`).
 */
export function textInput(encoded: EncodedTexts, inputs?: readonly [string, string]): TextInput {
  return inputs ? { [inputs[0]]: encoded.ids, [inputs[1]]: encoded.mask } : [encoded.ids, encoded.mask];
}
