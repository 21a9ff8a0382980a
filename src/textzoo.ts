// BERT-family text encoders for sequence classification, sized from a checkpoint's config.json:
// the zoo ships scripts/zoo/bert.py scripted at each depth (bert-L<n>); the config sets the
// placeholders' shapes and the sizing attributes before the weights load.
import { TorchError } from './errors';

/** The config.json fields a BERT needs, as transformers writes them. */
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

/** Which zoo architecture a config.json asks for, or undefined for one that is not BERT's. */
export function textArchitecture(config: { model_type?: string; architectures?: string[]; num_hidden_layers?: number }): string | undefined {
  const bert = config.model_type === 'bert' || config.architectures?.some((a) => /^Bert/.test(a));
  if (!bert) return undefined;
  const depth = config.num_hidden_layers ?? 12;
  if (!BERT_DEPTHS.includes(depth)) throw new TorchError('TORCHLITE_UNSUPPORTED_ARCHITECTURE', `a BERT of ${depth} layers: torchlite's zoo has BERTs of ${BERT_DEPTHS.join(', ')} layers`);
  return `bert-L${depth}`;
}

/** The class names of a config's `id2label`, in index order; undefined where it has none. */
export function classesOf(config: BertConfig): string[] | undefined {
  if (!config.id2label) return undefined;
  return Object.entries(config.id2label).sort(([a], [b]) => Number(a) - Number(b)).map(([, name]) => name);
}

/** Every tensor's shape and every sizing attribute of scripts/zoo/bert.py's model under `config`. */
export function bertSizing(c: BertConfig): { shapes: Record<string, number[]>; values: Record<string, number>; classes: number } {
  const act = ACTIVATIONS[c.hidden_act ?? 'gelu'];
  if (act === undefined) throw new TorchError('TORCHLITE_UNSUPPORTED_ARCHITECTURE', `hidden_act '${c.hidden_act}': torchlite's BERT has ${Object.keys(ACTIVATIONS).join(', ')}`);
  if (c.hidden_size % c.num_attention_heads !== 0) throw new TorchError('TORCHLITE_CORRUPT_FILE', `config.json: hidden_size ${c.hidden_size} is not a multiple of num_attention_heads ${c.num_attention_heads}`);
  const [h, i] = [c.hidden_size, c.intermediate_size];
  const classes = classesOf(c)?.length ?? c.num_labels ?? 2;
  const eps = c.layer_norm_eps ?? 1e-12;
  const hidden = c.hidden_dropout_prob ?? 0.1;
  const shapes: Record<string, number[]> = {
    'bert.embeddings.word_embeddings.weight': [c.vocab_size, h],
    'bert.embeddings.position_embeddings.weight': [c.max_position_embeddings, h],
    'bert.embeddings.token_type_embeddings.weight': [c.type_vocab_size ?? 2, h],
    'bert.pooler.dense.weight': [h, h],
    'bert.pooler.dense.bias': [h],
    'classifier.weight': [classes, h],
    'classifier.bias': [classes],
  };
  const values: Record<string, number> = {
    'bert.embeddings.word_embeddings.padding_idx': c.pad_token_id ?? 0,
    'bert.embeddings.dropout.p': hidden,
    'dropout.p': c.classifier_dropout ?? hidden,
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
  norm('bert.embeddings.LayerNorm');
  for (let l = 0; l < c.num_hidden_layers; l++) {
    const layer = `bert.encoder.layer.${l}`;
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

/**
 * A checkpoint name as the model names it: BertModel checkpoints lack the `bert.` prefix that
 * BertFor* checkpoints have; the position-id buffers and pretraining heads (`cls.*`) of
 * BertForPreTraining checkpoints are not the classifier's, and are skipped.
 */
export function bertName(name: string, prefixed: boolean): string | undefined {
  if (/(^|\.)(position_ids|token_type_ids)$/.test(name) || name.startsWith('cls.')) return undefined;
  return prefixed || name.startsWith('classifier.') ? name : `bert.${name}`;
}
