// Text datasets: JSONL and CSV files, tokenized.
import { readFile } from 'node:fs/promises';
import { extname } from 'node:path';

import { readError, TorchError } from '../errors';
import { type TextInput, textInput, TextTokenizer, textSpecOf, tokenizerOf } from '../text';
import { classesLike } from '../preprocess';
import { checkOptions, checkPositiveInteger, checkString, typeError } from '../validate';
import type { Dataset } from './dataset';

export interface TextDatasetOptions {
  /** The tokenizer. Defaults to the one in `like`'s metadata; one of the two is needed. */
  tokenizer?: TextTokenizer;
  /** A text model whose `metadata.text` (tokenizer, max length, input names) and class names the dataset takes. */
  like?: { readonly metadata: unknown };
  /** Longest input in tokens; longer texts are truncated. Defaults to `like`'s, else the tokenizer's. */
  maxLength?: number;
  /** The field (JSONL) or column (CSV) holding the text. Defaults to `'text'`. */
  textField?: string;
  /** The field or column holding the label. Defaults to `'label'`. */
  labelField?: string;
  /**
   * Class names in output order; a label outside them is a bad row. Defaults to `like`'s class
   * names where every label found is one of them, to the labels found (sorted) where none is
   * (new classes, to fine-tune for), and is an error where some are.
   */
  classes?: string[];
  /**
   * Forward's argument names for the token ids and the mask, to pass them by name.
   * Defaults to `like`'s `metadata.text.inputs`, else by position (`[ids, mask]`).
   */
  inputs?: [string, string];
  /** Skip bad rows with one warning (`TORCHLITE_BAD_DATA`) instead of failing on the first. Defaults to `false`. */
  skipBadRows?: boolean;
  /** `'jsonl'` or `'csv'`. Defaults to the file's extension (`.jsonl`/`.json`/`.ndjson`, `.csv`). */
  format?: 'jsonl' | 'csv';
}

/** The format `textDataset` reads a file as, from its extension: `.jsonl`, `.json` or `.ndjson` are JSONL, `.csv` is CSV; undefined for others. */
export function textFormatOf(file: string): 'jsonl' | 'csv' | undefined {
  return ({ '.csv': 'csv', '.jsonl': 'jsonl', '.json': 'jsonl', '.ndjson': 'jsonl' } as const)[extname(file).toLowerCase() as '.csv'];
}

/** One parsed record and the line it starts on. */
interface Row {
  line: number;
  fields: Record<string, unknown>;
}

function jsonlRows(content: string, file: string, bad: (line: number, why: string) => void): Row[] {
  const rows: Row[] = [];
  content.split('\n').forEach((text, i) => {
    if (text.trim() === '') return;
    try {
      const fields = JSON.parse(text) as unknown;
      if (fields === null || typeof fields !== 'object' || Array.isArray(fields)) bad(i + 1, 'is not a JSON object');
      else rows.push({ line: i + 1, fields: fields as Record<string, unknown> });
    } catch (error) {
      bad(i + 1, `is not valid JSON (${(error as Error).message})`);
    }
  });
  if (rows.length === 0 && content.trim() === '') throw new TorchError('TORCHLITE_BAD_DATA', `${file} is empty`);
  return rows;
}

/** RFC 4180 CSV: a header row, quoted fields with "" escapes and line breaks inside quotes. */
function csvRows(content: string, file: string, bad: (line: number, why: string) => void): Row[] {
  const records: { line: number; values: string[] }[] = [];
  let values: string[] = [];
  let field = '';
  let quoted = false;
  let line = 1;
  let start = 1;
  const endField = () => {
    values.push(field);
    field = '';
  };
  const endRecord = () => {
    endField();
    if (!(values.length === 1 && values[0] === '')) records.push({ line: start, values });
    values = [];
  };
  for (let i = 0; i < content.length; i++) {
    const c = content[i];
    if (quoted) {
      if (c === '"' && content[i + 1] === '"') {
        field += '"';
        i++;
      } else if (c === '"') quoted = false;
      else {
        if (c === '\n') line++;
        field += c;
      }
    } else if (c === '"' && field === '') quoted = true;
    else if (c === ',') endField();
    else if (c === '\n' || c === '\r') {
      if (c === '\r' && content[i + 1] === '\n') i++;
      endRecord();
      line++;
      start = line;
    } else field += c;
  }
  if (quoted) bad(start, 'has a quote that is never closed');
  else if (field !== '' || values.length > 0) endRecord();
  const [header, ...body] = records;
  if (!header) throw new TorchError('TORCHLITE_BAD_DATA', `${file} is empty`);
  return body.flatMap(({ line: at, values: row }) => {
    if (row.length !== header.values.length) {
      bad(at, `has ${row.length} fields where the header has ${header.values.length}`);
      return [];
    }
    return [{ line: at, fields: Object.fromEntries(header.values.map((name, k) => [name, row[k]])) }];
  });
}

/**
 * Labelled texts from a JSONL file (one `{"text": …, "label": …}` object a line) or a CSV
 * file with a header row, tokenized up front. Batches from a {@link loader} are padded to
 * their longest text: the input is `[ids, mask]` (int64 `[B, L]`, mask 1 for tokens), or
 * named by `inputs`. Class names come from the labels. A bad row (unparseable, without a
 * string text or a label, or with a label outside `classes`) is a `TORCHLITE_BAD_DATA`
 * error naming its line, or skipped with a warning under `skipBadRows`.
 */
export async function textDataset(file: string, options: TextDatasetOptions): Promise<Dataset<TextInput>> {
  checkString(file, 'file');
  const o = checkOptions<TextDatasetOptions>(options, 'options', ['tokenizer', 'like', 'maxLength', 'textField', 'labelField', 'classes', 'inputs', 'skipBadRows', 'format']);
  if (o.tokenizer !== undefined && !(o.tokenizer instanceof TextTokenizer)) throw typeError('a tokenizer from `text.tokenizer()`', 'options.tokenizer', o.tokenizer);
  const spec = o.like === undefined ? undefined : textSpecOf(o.like);
  if (o.like !== undefined && !spec && !o.tokenizer)
    throw new TorchError('TORCHLITE_NO_INPUT_SPEC', 'the model passed as `like` has no tokenizer in its metadata (`metadata.text`); pass `tokenizer: await text.tokenizer(path)`');
  const tok = o.tokenizer ?? (o.like && tokenizerOf(o.like));
  if (!tok) throw typeError('a tokenizer (options.tokenizer) or a text model (options.like)', 'options', options);
  const maxLength = o.maxLength === undefined ? (spec?.maxLength ?? tok.maxLength) : checkPositiveInteger(o.maxLength, 'options.maxLength');
  const textField = o.textField === undefined ? 'text' : checkString(o.textField, 'options.textField');
  const labelField = o.labelField === undefined ? 'label' : checkString(o.labelField, 'options.labelField');
  const inputs = o.inputs ?? spec?.inputs;
  if (inputs !== undefined && !(Array.isArray(inputs) && inputs.length === 2 && inputs.every((n) => typeof n === 'string')))
    throw typeError("two argument names, e.g. ['input_ids', 'attention_mask']", 'options.inputs', inputs);
  const given = o.classes;
  if (given !== undefined && (!Array.isArray(given) || given.some((c) => typeof c !== 'string'))) throw typeError('an array of class names', 'options.classes', given);
  const format = o.format ?? textFormatOf(file);
  if (format !== 'csv' && format !== 'jsonl') throw typeError("'jsonl' or 'csv' (the file's extension does not say)", 'options.format', o.format);

  let content: string;
  try {
    content = await readFile(file, 'utf8');
  } catch (error) {
    throw readError(error, `cannot read ${file}`);
  }
  const skipped: number[] = [];
  const bad = (line: number, why: string) => {
    if (!o.skipBadRows) throw new TorchError('TORCHLITE_BAD_DATA', `${file}:${line}: the row ${why}; fix it, or skip bad rows (skipBadRows: true, or --skip-bad-rows)`);
    skipped.push(line);
  };
  // Spreadsheet exports start CSV files with a byte-order mark, which would otherwise join the first column's name.
  const rows = (format === 'csv' ? csvRows : jsonlRows)(content.replace(/^\uFEFF/, ''), file, bad);
  const labelled = rows.flatMap(({ line, fields }) => {
    const text = fields[textField];
    const label = fields[labelField];
    if (typeof text !== 'string') bad(line, `has no text in "${textField}"`);
    else if (typeof label !== 'string' && typeof label !== 'number') bad(line, `has no label in "${labelField}"`);
    else if (String(label) === '') bad(line, `has an empty label in "${labelField}"`);
    else if (given && !given.includes(String(label))) bad(line, `has the label '${label}', which is not one of the classes (${given.map((c) => `'${c}'`).join(', ')})`);
    else return [{ line, text, label: String(label) }];
    return [];
  });
  if (skipped.length > 0)
    process.emitWarning(`${file}: skipped ${skipped.length} bad row${skipped.length > 1 ? 's' : ''} (line${skipped.length > 1 ? 's' : ''} ${skipped.slice(0, 10).join(', ')}${skipped.length > 10 ? ', …' : ''})`, { code: 'TORCHLITE_BAD_DATA' });
  if (labelled.length === 0) throw new TorchError('TORCHLITE_BAD_DATA', `${file} has no labelled texts`);
  const numeric = labelled.every((r) => r.label.trim() !== '' && Number.isFinite(Number(r.label)));
  const found = [...new Set(labelled.map((r) => r.label))].sort(numeric ? (a, b) => Number(a) - Number(b) : undefined);
  const classes = given ?? (o.like && classesLike(o.like, found, 'labels')) ?? found;
  const index = new Map(classes.map((c, i) => [c, i]));
  const targets = labelled.map((r) => index.get(r.label)!);
  const ids = labelled.map((r) => Int32Array.from(tok.ids(r.text, maxLength)));
  return {
    length: labelled.length,
    inputShape: [maxLength],
    targetShape: [],
    classes,
    target: (i) => targets[i],
    get: (i) => ({ input: ids[i], target: targets[i] }),
    describe: (i) => `${file}:${labelled[i].line}`,
    collate: (rowsOfIds) => textInput(tok.pad(rowsOfIds as Int32Array[]), inputs),
    text: { ...tok.spec(inputs), maxLength },
  };
}
