// Real text for the text demo: Debian's fortune databases, one file a topic, in English
// (`apt-get install fortunes`) and in German, Spanish and Italian (`fortunes-de`,
// `fortunes-es`, `fortunes-it`). The shipped encoder was pretrained without labels on all four
// languages and then on the English SOURCE topics; the demo fine-tunes it to tell the
// languages apart, on fortunes the pretraining never read (`isHeldOut`).
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
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
  return topics.flatMap((topic) => readFortuneFile(join(dir, topic), topic, 'fortunes'));
}

export const LANGUAGES = ['english', 'german', 'spanish', 'italian'] as const;
export type Language = (typeof LANGUAGES)[number];
const LANGUAGE_FOLDERS: Record<Exclude<Language, 'english'>, string> = { german: 'de', spanish: 'es', italian: 'it' };
/** Files of pictures rather than prose. */
const NOT_PROSE = new Set(['asciiart', 'banner']);

/**
 * Every fortune of each language, labelled by language: English's topic files (the source
 * and target topics), and every prose file of the other packages' folders.
 */
export function readLanguages(languages: readonly Language[] = LANGUAGES, dir = FORTUNES_DIR): LabelledText[] {
  return languages.flatMap((language) => {
    if (language === 'english') return readFortunes([...SOURCE_TOPICS, ...TARGET_TOPICS], dir).map(({ text }) => ({ text, label: language }));
    const folder = join(dir, LANGUAGE_FOLDERS[language]);
    const pkg = `fortunes-${LANGUAGE_FOLDERS[language]}`;
    if (!existsSync(folder)) throw new TorchError('TORCHLITE_FILE_NOT_FOUND', `${folder} does not exist: install the ${language} fortunes (apt-get install ${pkg}), or pass --data-dir`);
    return readdirSync(folder)
      .filter((name) => !/\.(dat|u8)$/.test(name) && !NOT_PROSE.has(name) && statSync(join(folder, name)).isFile())
      .sort()
      .flatMap((name) => readFortuneFile(join(folder, name), language, pkg));
  });
}

function readFortuneFile(file: string, label: string, pkg: string): LabelledText[] {
  if (!existsSync(file)) throw new TorchError('TORCHLITE_FILE_NOT_FOUND', `${file} does not exist: install the fortune databases (apt-get install ${pkg}), or pass --data-dir`);
  return readFileSync(file, 'utf8')
    .split(/\n%\n/)
    .map((text) => text.replace(/\s+/g, ' ').trim())
    .filter((text) => text.length > 0 && text !== '%')
    .map((text) => ({ text, label }));
}

/**
 * One fortune in five, chosen by a hash of its text (FNV-1a), is held out of the pretraining
 * so that the demo tests on text the encoder has never read, labelled or not.
 */
export function isHeldOut(text: string): boolean {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) hash = Math.imul(hash ^ text.charCodeAt(i), 0x01000193) >>> 0;
  return hash % 5 === 0;
}

/** Writes labelled texts as JSONL, the format `data.textDataset` reads. */
export function writeJsonl(path: string, rows: readonly LabelledText[]): void {
  writeFileSync(path, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
}
