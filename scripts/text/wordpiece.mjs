// Trains a BERT-style WordPiece tokenizer with Hugging Face's tokenizers (the native
// binding, a dev dependency: torchlite itself only reads tokenizer.json files).
import { writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';

/**
 * Trains on `texts` and writes `dir/tokenizer.json`, the vocabulary cut to the `size` most
 * frequent pieces with [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4. Returns the file's path.
 */
export function trainWordPiece(texts, size, dir) {
  const tk = createRequire(import.meta.url)('tokenizers');
  const corpus = join(dir, 'corpus.txt');
  writeFileSync(corpus, texts.join('\n'));
  const bert = (tokenizer) => {
    tokenizer.setNormalizer(tk.bertNormalizer({ lowercase: true }));
    tokenizer.setPreTokenizer(tk.bertPreTokenizer());
    return tokenizer;
  };
  const full = bert(new tk.Tokenizer(tk.WordPiece.empty()));
  full.train([corpus]);
  // The trainer numbers the alphabet first, then each merge in the order it made them (the
  // most frequent first), so the first ids form a vocabulary every word still splits into.
  const trained = Object.entries(full.getVocab()).sort((a, b) => a[1] - b[1]);
  const vocab = { '[PAD]': 0, '[UNK]': 1, '[CLS]': 2, '[SEP]': 3, '[MASK]': 4 };
  for (const [piece] of trained) if (Object.keys(vocab).length < size && !(piece in vocab)) vocab[piece] = Object.keys(vocab).length;
  const cut = bert(new tk.Tokenizer(tk.WordPiece.init(vocab, { unkToken: '[UNK]' })));
  cut.setDecoder(tk.wordPieceDecoder());
  cut.setPostProcessor(tk.bertProcessing(['[SEP]', 3], ['[CLS]', 2]));
  cut.addSpecialTokens(['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']);
  const path = join(dir, 'tokenizer.json');
  cut.save(path);
  return path;
}
