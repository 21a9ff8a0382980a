// A detection data set made from real pixels, since none is installable here: Fashion-MNIST
// items pasted onto textures tiled from other Fashion-MNIST images, written as PNGs and a
// COCO JSON file with each item's exact box and mask. Deterministic for a seed.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import sharp from 'sharp';

import { data } from '..';
import { FASHION_CLASSES, FASHION_DIR } from './data';

/** The Fashion-MNIST training images and labels, read once. */
export interface FashionPool {
  images: Uint8Array;
  labels: Uint8Array;
  count: number;
}

export async function readFashion(dir = FASHION_DIR): Promise<FashionPool> {
  const [images, labels] = await Promise.all([data.readIdx(join(dir, 'train-images-idx3-ubyte.gz')), data.readIdx(join(dir, 'train-labels-idx1-ubyte.gz'))]);
  return { images: Uint8Array.from(images.data), labels: Uint8Array.from(labels.data), count: labels.shape[0] };
}

/** xorshift32: floats in [0, 1) from a seed. */
function random(seed: number): () => number {
  let x = (seed ^ 0x9e3779b9) >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 4294967296;
  };
}

/** A 28 × 28 item scaled to `side` × `side`, bilinear. */
function scaled(item: Uint8Array, side: number): Float32Array {
  const out = new Float32Array(side * side);
  for (let y = 0; y < side; y++)
    for (let x = 0; x < side; x++) {
      const sx = Math.min(27, Math.max(0, ((x + 0.5) * 28) / side - 0.5));
      const sy = Math.min(27, Math.max(0, ((y + 0.5) * 28) / side - 0.5));
      const [x0, y0] = [Math.floor(sx), Math.floor(sy)];
      const [x1, y1] = [Math.min(27, x0 + 1), Math.min(27, y0 + 1)];
      const [fx, fy] = [sx - x0, sy - y0];
      const at = (xx: number, yy: number) => item[yy * 28 + xx];
      out[y * side + x] = (at(x0, y0) * (1 - fx) + at(x1, y0) * fx) * (1 - fy) + (at(x0, y1) * (1 - fx) + at(x1, y1) * fx) * fy;
    }
  return out;
}

export interface SceneOptions {
  /** Fashion-MNIST classes whose items are the objects; category ids follow this order. */
  classes: number[];
  count: number;
  seed: number;
  /** Side of the square scenes, in pixels. */
  size: number;
  /** Which pool images may be objects (the rest make textures): a split keeps test items out of training. */
  part: 'train' | 'test';
}

/**
 * Writes `count` scenes to `dir` (PNG) and `dir/annotations.json` (COCO, masks as
 * uncompressed RLE); returns the annotation file.
 */
export async function writeScenes(pool: FashionPool, dir: string, o: SceneOptions): Promise<string> {
  mkdirSync(dir, { recursive: true });
  const next = random(o.seed);
  const pick = (n: number) => Math.floor(next() * n);
  // Items from the first 50,000 images train, from the last 10,000 test; textures from anywhere.
  const [from, to] = o.part === 'train' ? [0, 50_000] : [50_000, pool.count];
  const byClass = new Map(o.classes.map((c) => [c, [] as number[]]));
  for (let i = from; i < to; i++) byClass.get(pool.labels[i])?.push(i);
  const item = (i: number) => pool.images.subarray(i * 784, (i + 1) * 784);
  const images = [];
  const annotations = [];
  const { size } = o;
  for (let s = 0; s < o.count; s++) {
    const canvas = new Float32Array(size * size * 3);
    // The texture: 3 × 3 tiles of other images, dimmed and tinted.
    const tint = [0.5 + next() * 0.5, 0.5 + next() * 0.5, 0.5 + next() * 0.5];
    const tile = Math.ceil(size / 3);
    for (let ty = 0; ty < 3; ty++)
      for (let tx = 0; tx < 3; tx++) {
        const source = scaled(item(pick(pool.count)), tile);
        for (let y = 0; y < tile && ty * tile + y < size; y++)
          for (let x = 0; x < tile && tx * tile + x < size; x++)
            for (let c = 0; c < 3; c++) canvas[((ty * tile + y) * size + tx * tile + x) * 3 + c] = source[y * tile + x] * 0.35 * tint[c];
      }
    const placed: number[][] = [];
    const objects = 1 + pick(3);
    for (let k = 0; k < objects; k++) {
      const category = pick(o.classes.length);
      const members = byClass.get(o.classes[category])!;
      const side = Math.round(size * (0.3 + next() * 0.2));
      const pixels = scaled(item(members[pick(members.length)]), side);
      // Up to 20 tries at a place that overlaps no earlier item.
      let spot: number[] | undefined;
      for (let attempt = 0; attempt < 20 && !spot; attempt++) {
        const [x, y] = [pick(size - side + 1), pick(size - side + 1)];
        if (placed.every(([px, py, pw]) => x + side <= px || px + pw <= x || y + side <= py || py + pw <= y)) spot = [x, y, side];
      }
      if (!spot) continue;
      placed.push(spot);
      const [left, top] = spot;
      const colour = [0.7 + next() * 0.3, 0.7 + next() * 0.3, 0.7 + next() * 0.3];
      const mask = new Uint8Array(size * size);
      let [x1, y1, x2, y2] = [size, size, 0, 0];
      for (let y = 0; y < side; y++)
        for (let x = 0; x < side; x++) {
          const v = pixels[y * side + x];
          if (v < 40) continue; // the item's own background stays the texture
          const [cx, cy] = [left + x, top + y];
          mask[cy * size + cx] = 1;
          for (let c = 0; c < 3; c++) canvas[(cy * size + cx) * 3 + c] = v * colour[c];
          [x1, y1, x2, y2] = [Math.min(x1, cx), Math.min(y1, cy), Math.max(x2, cx + 1), Math.max(y2, cy + 1)];
        }
      if (x2 <= x1) continue;
      annotations.push({ id: annotations.length + 1, image_id: s, category_id: category + 1, bbox: [x1, y1, x2 - x1, y2 - y1], area: mask.reduce((a, b) => a + b, 0), iscrowd: 0, segmentation: { size: [size, size], counts: rle(mask, size) } });
    }
    const file = `${s}.png`;
    await sharp(Buffer.from(Uint8Array.from(canvas, (v) => Math.min(255, Math.round(v)))), { raw: { width: size, height: size, channels: 3 } }).png().toFile(join(dir, file));
    images.push({ id: s, file_name: file, width: size, height: size });
  }
  const categories = o.classes.map((c, i) => ({ id: i + 1, name: FASHION_CLASSES[c] }));
  const file = join(dir, 'annotations.json');
  writeFileSync(file, JSON.stringify({ info: { description: 'Fashion-MNIST items on textures of other Fashion-MNIST images (torchlite demo detect)' }, images, annotations, categories }));
  return file;
}

/** COCO's uncompressed RLE of a square bitmap: column-major runs, starting with background. */
function rle(mask: Uint8Array, size: number): number[] {
  const counts: number[] = [];
  let value = 0;
  let run = 0;
  for (let x = 0; x < size; x++)
    for (let y = 0; y < size; y++) {
      const v = mask[y * size + x];
      if (v !== value) {
        counts.push(run);
        value = v;
        run = 0;
      }
      run++;
    }
  counts.push(run);
  return counts;
}
