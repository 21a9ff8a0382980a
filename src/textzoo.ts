// BERT-family text encoders for sequence classification (BERT, RoBERTa), sized from a
// checkpoint's config.json: the zoo ships scripts/zoo/bert.py scripted at each depth
// (bert-L<n>, roberta-L<n>); the config sets the placeholders' shapes and the sizing
// attributes before the weights load.
import { TorchError } from './errors';

/** The config.json fields a BERT or RoBERTa needs, as transformers writes them (DistilBERT's own names are mapped onto them by {@link normalisedConfig}). */
export interface BertConfig {
  model_type?: string;
  vocab_size: number;
  hidden_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  intermediate_size: number;
  max_position_embeddings: number;
  type_vocab_size?: number;
  layer_norm_eps?: number;
  hidden_act?: string;
  hidden_dropout_prob?: number;
  attention_probs_dropout_prob?: number;
  classifier_dropout?: number | null;
  pad_token_id?: number;
  id2label?: Record<string, string>;
  num_labels?: number;
}

/** The depths the zoo has an archive for (`models/zoo/bert-L<n>.pt`). */
export const BERT_DEPTHS = [1, 2, 3, 4, 6, 8, 10, 12, 24];
/** hidden_act values and bert.py's activation codes. */
const ACTIVATIONS: Record<string, number> = { gelu: 0, gelu_new: 1, gelu_pytorch_tanh: 1, relu: 2 };

/** The text families the zoo has: their prefix in checkpoint names, and whether they pool with a `pooler`. */
export type TextFamily = 'bert' | 'roberta' | 'distilbert';

/** Which zoo architecture a config.json asks for (its family and depth), or undefined for one that is not a BERT or RoBERTa. */
export function textArchitecture(config: { model_type?: string; architectures?: string[]; num_hidden_layers?: number }): { architecture: string; family: TextFamily } | undefined {
  const is = (type: string, prefix: RegExp) => config.model_type === type || config.architectures?.some((a) => prefix.test(a));
  const family: TextFamily | undefined = is('roberta', /^Roberta/) ? 'roberta' : is('distilbert', /^DistilBert/) ? 'distilbert' : is('bert', /^Bert/) ? 'bert' : undefined;
  if (!family) return undefined;
  const depth = family === 'distilbert' ? ((config as { n_layers?: number }).n_layers ?? 6) : (config.num_hidden_layers ?? 12);
  const name = { bert: 'BERT', roberta: 'RoBERTa', distilbert: 'DistilBERT' }[family];
  if (!BERT_DEPTHS.includes(depth)) throw new TorchError('TORCHLITE_UNSUPPORTED_ARCHITECTURE', `a ${name} of ${depth} layers: torchlite's zoo has ${name}s of ${BERT_DEPTHS.join(', ')} layers`);
  return { architecture: `${family}-L${depth}`, family };
}

/** The class names of a config's `id2label`, in index order; undefined where it has none. */
export function classesOf(config: BertConfig): string[] | undefined {
  if (!config.id2label) return undefined;
  return Object.entries(config.id2label).sort(([a], [b]) => Number(a) - Number(b)).map(([, name]) => name);
}

/** DistilBERT's config.json in BERT's names (dim, n_layers, n_heads, hidden_dim, dropout, …); a BERT's or RoBERTa's as it is. */
export function normalisedConfig(config: Record<string, unknown>, family: TextFamily): BertConfig {
  if (family !== 'distilbert') return config as unknown as BertConfig;
  const c = config as { dim: number; n_layers: number; n_heads: number; hidden_dim: number; dropout?: number; attention_dropout?: number; seq_classif_dropout?: number; activation?: string };
  return {
    ...(config as unknown as BertConfig),
    hidden_size: c.dim,
    num_hidden_layers: c.n_layers,
    num_attention_heads: c.n_heads,
    intermediate_size: c.hidden_dim,
    hidden_dropout_prob: c.dropout ?? 0.1,
    attention_probs_dropout_prob: c.attention_dropout ?? 0.1,
    classifier_dropout: c.seq_classif_dropout ?? 0.2,
    hidden_act: c.activation ?? 'gelu',
  };
}

/** Every tensor's shape and every sizing attribute of scripts/zoo/bert.py's model of `family` under `config`. */
export function bertSizing(c: BertConfig, family: TextFamily): { shapes: Record<string, number[]>; values: Record<string, number>; classes: number } {
  const act = ACTIVATIONS[c.hidden_act ?? 'gelu'];
  if (act === undefined) throw new TorchError('TORCHLITE_UNSUPPORTED_ARCHITECTURE', `hidden_act '${c.hidden_act}': torchlite's BERT has ${Object.keys(ACTIVATIONS).join(', ')}`);
  if (c.hidden_size % c.num_attention_heads !== 0) throw new TorchError('TORCHLITE_CORRUPT_FILE', `config.json: hidden_size ${c.hidden_size} is not a multiple of num_attention_heads ${c.num_attention_heads}`);
  if (family === 'distilbert') return distilSizing(c, act);
  const [h, i] = [c.hidden_size, c.intermediate_size];
  const classes = classesOf(c)?.length ?? c.num_labels ?? 2;
  const eps = c.layer_norm_eps ?? 1e-12;
  const hidden = c.hidden_dropout_prob ?? 0.1;
  const body = family;
  const shapes: Record<string, number[]> = {
    [`${body}.embeddings.word_embeddings.weight`]: [c.vocab_size, h],
    [`${body}.embeddings.position_embeddings.weight`]: [c.max_position_embeddings, h],
    [`${body}.embeddings.token_type_embeddings.weight`]: [c.type_vocab_size ?? 2, h],
  };
  const values: Record<string, number> = {
    [`${body}.embeddings.word_embeddings.padding_idx`]: c.pad_token_id ?? (family === 'roberta' ? 1 : 0),
    [`${body}.embeddings.dropout.p`]: hidden,
  };
  const norm = (path: string) => {
    shapes[`${path}.weight`] = [h];
    shapes[`${path}.bias`] = [h];
    values[`${path}.eps`] = eps;
  };
  const linear = (path: string, out: number, inp: number) => {
    shapes[`${path}.weight`] = [out, inp];
    shapes[`${path}.bias`] = [out];
  };
  norm(`${body}.embeddings.LayerNorm`);
  // BERT: a tanh pooler, then dropout and a linear classifier. RoBERTa: no pooler; its head is dense, tanh, out_proj.
  if (family === 'bert') {
    linear('bert.pooler.dense', h, h);
    linear('classifier', classes, h);
    values['dropout.p'] = c.classifier_dropout ?? hidden;
  } else {
    linear('classifier.dense', h, h);
    linear('classifier.out_proj', classes, h);
    values['classifier.dropout.p'] = c.classifier_dropout ?? hidden;
  }
  for (let l = 0; l < c.num_hidden_layers; l++) {
    const layer = `${body}.encoder.layer.${l}`;
    for (const name of ['query', 'key', 'value']) linear(`${layer}.attention.self.${name}`, h, h);
    values[`${layer}.attention.self.num_attention_heads`] = c.num_attention_heads;
    values[`${layer}.attention.self.dropout.p`] = c.attention_probs_dropout_prob ?? 0.1;
    linear(`${layer}.attention.output.dense`, h, h);
    norm(`${layer}.attention.output.LayerNorm`);
    values[`${layer}.attention.output.dropout.p`] = hidden;
    linear(`${layer}.intermediate.dense`, i, h);
    values[`${layer}.intermediate.act`] = act;
    linear(`${layer}.output.dense`, h, i);
    norm(`${layer}.output.LayerNorm`);
    values[`${layer}.output.dropout.p`] = hidden;
  }
  return { shapes, values, classes };
}

/** DistilBERT's shapes and attributes (scripts/zoo/bert.py's DistilBertForSequenceClassification). */
function distilSizing(c: BertConfig, act: number): { shapes: Record<string, number[]>; values: Record<string, number>; classes: number } {
  const [h, i] = [c.hidden_size, c.intermediate_size];
  const classes = classesOf(c)?.length ?? c.num_labels ?? 2;
  const shapes: Record<string, number[]> = {
    'distilbert.embeddings.word_embeddings.weight': [c.vocab_size, h],
    'distilbert.embeddings.position_embeddings.weight': [c.max_position_embeddings, h],
  };
  const values: Record<string, number> = {
    'distilbert.embeddings.word_embeddings.padding_idx': c.pad_token_id ?? 0,
    'distilbert.embeddings.dropout.p': c.hidden_dropout_prob!,
    'dropout.p': c.classifier_dropout ?? 0.2,
  };
  const linear = (path: string, out: number, inp: number) => {
    shapes[`${path}.weight`] = [out, inp];
    shapes[`${path}.bias`] = [out];
  };
  const norm = (path: string) => {
    shapes[`${path}.weight`] = [h];
    shapes[`${path}.bias`] = [h];
  };
  norm('distilbert.embeddings.LayerNorm');
  linear('pre_classifier', h, h);
  linear('classifier', classes, h);
  for (let l = 0; l < c.num_hidden_layers; l++) {
    const layer = `distilbert.transformer.layer.${l}`;
    for (const name of ['q_lin', 'k_lin', 'v_lin', 'out_lin']) linear(`${layer}.attention.${name}`, h, h);
    values[`${layer}.attention.n_heads`] = c.num_attention_heads;
    values[`${layer}.attention.dropout.p`] = c.attention_probs_dropout_prob!;
    norm(`${layer}.sa_layer_norm`);
    linear(`${layer}.ffn.lin1`, i, h);
    linear(`${layer}.ffn.lin2`, h, i);
    values[`${layer}.ffn.act`] = act;
    values[`${layer}.ffn.dropout.p`] = c.hidden_dropout_prob!;
    norm(`${layer}.output_layer_norm`);
  }
  return { shapes, values, classes };
}

/**
 * A checkpoint name as the model names it: a bare BertModel's, RobertaModel's or
 * DistilBertModel's checkpoint lacks the family prefix that the *For* classes' have, so a body
 * name without it gets it; position-id buffers, poolers the RoBERTa classifier does not use, and
 * pretraining heads (`cls.*`, `lm_head.*`, DistilBERT's `vocab_*`) are skipped.
 */
export function bertName(name: string, family: TextFamily): string | undefined {
  if (/(^|\.)(position_ids|token_type_ids)$/.test(name) || /^(cls|lm_head|vocab_transform|vocab_layer_norm|vocab_projector)\./.test(name)) return undefined;
  const named = name.startsWith(`${family}.`) || /^(pre_)?classifier\./.test(name) ? name : `${family}.${name}`;
  return family === 'roberta' && named.startsWith('roberta.pooler.') ? undefined : named;
}
