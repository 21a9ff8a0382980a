// Real text for the text demo: Debian's fortune databases (`apt-get install fortunes`), one
// file a topic. The shipped encoder was pretrained on the SOURCE topics; the demo fine-tunes
// it on the TARGET topics, which it has never seen.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { TorchError } from '..';

export const FORTUNES_DIR = '/usr/share/games/fortunes';
// Every English topic file of the `fortunes` package but the targets and the ones that are
// not prose (ascii-art, translate-me) or hardly there (pratchett: one fortune).
export const SOURCE_TOPICS = [
  'art', 'computers', 'cookie', 'debian', 'definitions', 'disclaimer', 'drugs', 'ethnic', 'fortunes', 'goedel', 'humorists', 'kids', 'knghtbrd',
  'linux', 'linuxcookie', 'literature', 'magic', 'medicine', 'men-women', 'miscellaneous', 'news', 'paradoxum', 'people', 'perl', 'pets',
  'platitudes', 'politics', 'riddles', 'science', 'songs-poems', 'startrek', 'tao', 'wisdom', 'work', 'zippy',
];
export const TARGET_TOPICS = ['food', 'sports', 'law', 'education', 'love'];

export interface LabelledText {
  text: string;
  label: string;
}

/** The fortunes of each topic, labelled by topic, in file order. */
export function readFortunes(topics: readonly string[], dir = FORTUNES_DIR): LabelledText[] {
  return topics.flatMap((topic) => {
    const file = join(dir, topic);
    if (!existsSync(file)) throw new TorchError('TORCHLITE_FILE_NOT_FOUND', `${file} does not exist: install the fortune databases (apt-get install fortunes), or pass --data-dir`);
    return readFileSync(file, 'utf8')
      .split(/\n%\n/)
      .map((text) => text.replace(/\s+/g, ' ').trim())
      .filter((text) => text.length > 0 && text !== '%')
      .map((text) => ({ text, label: topic }));
  });
}

/** Writes labelled texts as JSONL, the format `data.textDataset` reads. */
export function writeJsonl(path: string, rows: readonly LabelledText[]): void {
  writeFileSync(path, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
}
