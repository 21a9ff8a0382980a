// Object masks from COCO's encodings (polygons, run-length), the random crops and flips that
// detection and segmentation data share, and the nearest-neighbour placement that keeps masks
// and boxes on their image's pixels. Bitmaps are row-major H × W bytes.
import { checkFiniteNumber, rangeError, typeError } from '../validate';

/** COCO's run-length encoding: column-major runs, starting with background, as numbers or pycocotools' compressed string. */
export interface Rle {
  counts: number[] | string;
  size: [number, number];
}

/** Decodes pycocotools' compressed counts (6 bits a character, with continuation and sign bits, each run after the second relative to the one two back). */
function countsOf(text: string): number[] {
  const counts: number[] = [];
  let p = 0;
  while (p < text.length) {
    let x = 0;
    let k = 0;
    let more = true;
    while (more) {
      const c = p < text.length ? text.charCodeAt(p) - 48 : -1;
      if (c < 0 || c > 63) throw new RangeError('a malformed compressed RLE string');
      x |= (c & 0x1f) << (5 * k);
      more = (c & 0x20) !== 0;
      p++;
      k++;
      if (!more && (c & 0x10) !== 0) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

/** A COCO RLE mask as a row-major bitmap of its `size` (`[height, width]`). */
export function decodeRle(rle: Rle): Uint8Array {
  const [height, width] = rle.size;
  const counts = typeof rle.counts === 'string' ? countsOf(rle.counts) : rle.counts;
  const total = height * width;
  const out = new Uint8Array(total);
  let at = 0;
  counts.forEach((run, i) => {
    if (!Number.isInteger(run) || run < 0 || at + run > total) throw new RangeError(`run-length counts that cover ${height}×${width} pixels`);
    if (i % 2 === 1)
      for (let k = at; k < at + run; k++) {
        // Column-major position k: row k % height, column ⌊k / height⌋.
        out[(k % height) * width + Math.floor(k / height)] = 1;
      }
    at += run;
  });
  if (at !== total) throw new RangeError(`run-length counts that cover ${height}×${width} pixels, not ${at}`);
  return out;
}

/**
 * Polygons (`[x1, y1, x2, y2, …]` in pixels, as COCO stores them) filled into a bitmap: a
 * pixel is inside when its centre is, by the even-odd rule across all the polygons.
 * pycocotools rasterises at 5× and may differ on edge pixels.
 */
export function polygonMask(polygons: number[][], height: number, width: number): Uint8Array {
  const out = new Uint8Array(height * width);
  for (let y = 0; y < height; y++) {
    const cy = y + 0.5;
    const crossings: number[] = [];
    for (const poly of polygons) {
      const n = poly.length / 2;
      for (let i = 0; i < n; i++) {
        const [x0, y0] = [poly[2 * i], poly[2 * i + 1]];
        const [x1, y1] = [poly[2 * ((i + 1) % n)], poly[2 * ((i + 1) % n) + 1]];
        if (y0 <= cy !== y1 <= cy) crossings.push(x0 + ((cy - y0) / (y1 - y0)) * (x1 - x0));
      }
    }
    crossings.sort((a, b) => a - b);
    for (let k = 0; k + 1 < crossings.length; k += 2) {
      const from = Math.max(0, Math.ceil(crossings[k] - 0.5));
      const to = Math.min(width - 1, Math.ceil(crossings[k + 1] - 0.5) - 1);
      for (let x = from; x <= to; x++) out[y * width + x] = 1;
    }
  }
  return out;
}

/** Where a geometric augmentation takes an image: a crop rectangle, then a resize to `width` × `height`, then an optional mirror. */
export interface Placement {
  crop: { left: number; top: number; width: number; height: number };
  width: number;
  height: number;
  flip: boolean;
}

/** `flip` and `crop` of an augmentation's options, checked; `crop` defaults to `defaultCrop`, `flip` to `true`. */
export function checkCropFlip(options: { flip?: unknown; crop?: unknown }, defaultCrop: number): { flip: boolean; crop: number } {
  if (options.flip !== undefined && typeof options.flip !== 'boolean') throw typeError('a boolean', 'options.augment.flip', options.flip);
  const crop = options.crop === undefined ? defaultCrop : checkFiniteNumber(options.crop, 'options.augment.crop');
  if (crop <= 0 || crop > 1) throw rangeError('a share in (0, 1]', 'options.augment.crop', crop);
  return { flip: options.flip ?? true, crop };
}

/** A random rectangle of a `width` × `height` image whose sides are each a random share in [`minShare`, 1] of the image's. */
export function randomCrop(width: number, height: number, minShare: number, random: () => number): Placement['crop'] {
  const share = (n: number) => Math.max(1, Math.round(n * (minShare + random() * (1 - minShare))));
  const cw = share(width);
  const ch = share(height);
  return { left: Math.floor(random() * (width - cw + 1)), top: Math.floor(random() * (height - ch + 1)), width: cw, height: ch };
}

/** A bitmap of `width` × `height` through `placement`, nearest-neighbour (labels must not blend). */
export function placeMask(mask: Uint8Array, width: number, { crop, width: w, height: h, flip }: Placement): Uint8Array {
  const out = new Uint8Array(w * h);
  for (let y = 0; y < h; y++) {
    const sy = crop.top + Math.min(crop.height - 1, Math.floor(((y + 0.5) * crop.height) / h));
    for (let x = 0; x < w; x++) {
      const sx = crop.left + Math.min(crop.width - 1, Math.floor(((x + 0.5) * crop.width) / w));
      out[y * w + (flip ? w - 1 - x : x)] = mask[sy * width + sx];
    }
  }
  return out;
}

/** Boxes `[x1, y1, x2, y2]` through `placement`, clipped to the crop; returns the boxes and which survive with a positive area. */
export function placeBoxes(boxes: ArrayLike<number>, { crop, width: w, height: h, flip }: Placement): { boxes: number[]; kept: number[] } {
  const sx = w / crop.width;
  const sy = h / crop.height;
  const out: number[] = [];
  const kept: number[] = [];
  for (let i = 0; i < boxes.length / 4; i++) {
    const clip = (v: number, lo: number, size: number) => Math.min(Math.max(v - lo, 0), size);
    let x1 = clip(boxes[4 * i], crop.left, crop.width) * sx;
    let x2 = clip(boxes[4 * i + 2], crop.left, crop.width) * sx;
    const y1 = clip(boxes[4 * i + 1], crop.top, crop.height) * sy;
    const y2 = clip(boxes[4 * i + 3], crop.top, crop.height) * sy;
    if (flip) [x1, x2] = [w - x2, w - x1];
    if (x2 - x1 <= 0 || y2 - y1 <= 0) continue;
    out.push(x1, y1, x2, y2);
    kept.push(i);
  }
  return { boxes: out, kept };
}
