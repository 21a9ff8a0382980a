import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { data, type Tensor } from '../src';

/** A black RGB PNG with white rectangles `[x1, y1, x2, y2]`. */
async function picture(file: string, width: number, height: number, rects: number[][]): Promise<void> {
  const pixels = Buffer.alloc(width * height * 3);
  for (const [x1, y1, x2, y2] of rects) for (let y = y1; y < y2; y++) for (let x = x1; x < x2; x++) pixels.fill(255, (y * width + x) * 3, (y * width + x) * 3 + 3);
  await sharp(pixels, { raw: { width, height, channels: 3 } }).png().toFile(file);
}

const read = (t: Tensor) => Array.from(t.toTypedArray() as ArrayLike<number | bigint>, Number);

/** A COCO file over one 40×30 image with a box at x 10–30, y 5–15 drawn in it. */
async function cocoFolder(overrides: { annotations?: object[]; images?: object[]; categories?: object[] } = {}): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'torchlite-coco-'));
  await picture(join(dir, 'a.png'), 40, 30, [[10, 5, 30, 15]]);
  await picture(join(dir, 'b.png'), 20, 20, []);
  const json = {
    images: [
      { id: 1, file_name: 'a.png', width: 40, height: 30 },
      { id: 2, file_name: 'b.png', width: 20, height: 20 },
    ],
    categories: [
      { id: 7, name: 'box' },
      { id: 3, name: 'ring' },
    ],
    annotations: [
      { id: 11, image_id: 1, category_id: 7, bbox: [10, 5, 20, 10], segmentation: [[10, 5, 30, 5, 30, 15, 10, 15]], area: 200, iscrowd: 0 },
      { id: 12, image_id: 1, category_id: 3, bbox: [0, 0, 4, 3], segmentation: { size: [30, 40], counts: [0, 3, 27, 3, 27, 3, 27, 3, 1107] }, area: 12, iscrowd: 1 },
    ],
    ...overrides,
  };
  writeFileSync(join(dir, 'ann.json'), JSON.stringify(json));
  return dir;
}

describe('data.coco', () => {
  it('reads images, boxes, labels, crowds and masks, and batches them as lists', async () => {
    const dir = await cocoFolder();
    const ds = await data.coco(join(dir, 'ann.json'), { masks: true });
    // Categories by id: ring (3) is label 1, box (7) label 2.
    expect(ds.classes).toEqual(['__background__', 'ring', 'box']);
    expect(ds.metrics).toEqual(['map', 'maskMap']);
    const loader = data.loader(ds, { batchSize: 2 });
    const batches = [];
    for await (const batch of loader) batches.push(batch);
    const [batch] = batches;
    const [images] = batch.input;
    expect(images.tensors.map((t) => t.shape)).toEqual([
      [3, 30, 40],
      [3, 20, 20],
    ]);
    // The white box's pixels are 1, the rest 0 ([0, 1] floats: the detector normalises).
    const pixels = images.tensors[0].toTypedArray() as Float32Array;
    expect(pixels[5 * 40 + 10]).toBe(1);
    expect(pixels[4 * 40 + 10]).toBe(0);
    const [a, b] = batch.target;
    expect(read(a.boxes)).toEqual([10, 5, 30, 15, 0, 0, 4, 3]);
    expect(a.boxes.shape).toEqual([2, 4]);
    expect(a.labels.dtype).toBe('int64');
    expect(read(a.labels)).toEqual([2, 1]);
    expect(read(a.iscrowd)).toEqual([0, 1]);
    expect(read(a.area)).toEqual([200, 12]);
    expect(a.masks!.shape).toEqual([2, 30, 40]);
    expect(a.masks!.dtype).toBe('uint8');
    const masks = read(a.masks!);
    // The polygon covers exactly the rectangle's pixels; the RLE (column-major) the top-left 3×4.
    const inside = (m: number, x: number, y: number) => masks[m * 1200 + y * 40 + x];
    expect(masks.slice(0, 1200).reduce((s, v) => s + v, 0)).toBe(200);
    expect([inside(0, 10, 5), inside(0, 29, 14), inside(0, 30, 14), inside(0, 9, 5)]).toEqual([1, 1, 0, 0]);
    expect(masks.slice(1200).reduce((s, v) => s + v, 0)).toBe(12);
    expect([inside(1, 3, 2), inside(1, 4, 2), inside(1, 3, 3)]).toEqual([1, 0, 0]);
    // An image without objects has empty targets of the right shapes.
    expect(b.boxes.shape).toEqual([0, 4]);
    expect(b.masks!.shape).toEqual([0, 20, 20]);
  });

  it('moves boxes and masks with the pixels through flips, crops and rescaling', async () => {
    const dir = await cocoFolder();
    const ds = await data.coco(join(dir, 'ann.json'), { masks: true, augment: { flip: true, crop: 0.6, scale: [0.5, 1.5] } });
    let flipped = 0;
    for (let epoch = 0; epoch < 12; epoch++) {
      const sample = await ds.get(0, epoch);
      const [, height, width] = sample.shape!;
      const input = sample.input as Float32Array;
      const target = sample.target as data.TargetParts;
      const labels = Array.from(target.labels.data as BigInt64Array, Number);
      const k = labels.indexOf(2);
      if (k < 0) continue; // cropped away
      const [x1, y1, x2, y2] = Array.from(target.boxes.data as Float32Array).slice(4 * k, 4 * k + 4);
      // The box bounds the bright pixels (resampling blurs its edge by up to a pixel or two).
      let [minX, minY, maxX, maxY] = [Infinity, Infinity, -1, -1];
      for (let y = 0; y < height; y++)
        for (let x = 0; x < width; x++)
          if (input[y * width + x] > 0.5) [minX, minY, maxX, maxY] = [Math.min(minX, x), Math.min(minY, y), Math.max(maxX, x + 1), Math.max(maxY, y + 1)];
      for (const [box, seen] of [
        [x1, minX],
        [y1, minY],
        [x2, maxX],
        [y2, maxY],
      ])
        expect(Math.abs(box - seen)).toBeLessThanOrEqual(2);
      // The mask is the box's pixels, placed the same way.
      const mask = (target.masks.data as Uint8Array).subarray(k * width * height, (k + 1) * width * height);
      let agree = 0;
      for (let p = 0; p < width * height; p++) agree += Number(mask[p] === (input[p] > 0.5 ? 1 : 0));
      expect(agree / (width * height)).toBeGreaterThan(0.95);
      if (x1 > width / 2 - 5) flipped++;
    }
    expect(flipped).toBeGreaterThan(0);
    // The same epoch gives the same sample; validation data is not augmented.
    expect((await ds.get(0, 3)).target).toEqual((await ds.get(0, 3)).target);
    expect((await ds.withoutAugmentation!().get(0, 3)).shape).toEqual([3, 30, 40]);
  });

  it('refuses augmentation options it cannot apply', async () => {
    const file = join(await cocoFolder(), 'ann.json');
    await expect(data.coco(file, { augment: { crop: 0 } })).rejects.toThrow(new RangeError('Expected a share in (0, 1] for `options.augment.crop` but received 0'));
    await expect(data.coco(file, { augment: { flip: 'yes' as never } })).rejects.toThrow(new TypeError("Expected a boolean for `options.augment.flip` but received 'yes'"));
    await expect(data.coco(file, { augment: { scale: [2, 1] } })).rejects.toThrow(TypeError);
    await expect(data.coco(file, { augment: 'strong' as never })).rejects.toThrow(TypeError);
  });

  it('names the annotation that is wrong', async () => {
    const read = async (overrides: Parameters<typeof cocoFolder>[0], options?: data.DetectionDataOptions) => {
      const dir = await cocoFolder(overrides);
      return data.coco(join(dir, 'ann.json'), options).then(
        () => 'read',
        (error: { code: string; message: string }) => `${error.code}: ${error.message.replaceAll(dir, '<dir>')}`,
      );
    };
    expect(await read({ annotations: [{ id: 5, image_id: 1, category_id: 7, bbox: [30, 5, 20, 10] }] })).toBe(
      'TORCHLITE_BAD_ANNOTATION: annotation 5 in <dir>/ann.json (image <dir>/a.png): the box [30, 5, 50, 15] lies outside the 40×30 image; fix the annotation, or the image\'s width and height',
    );
    expect(await read({ annotations: [{ id: 5, image_id: 1, category_id: 9, bbox: [0, 0, 1, 1] }] })).toBe(
      'TORCHLITE_BAD_ANNOTATION: annotation 5 in <dir>/ann.json has category 9, which `categories` does not list',
    );
    expect(await read({ annotations: [{ id: 5, image_id: 4, category_id: 7, bbox: [0, 0, 1, 1] }] })).toBe(
      'TORCHLITE_BAD_ANNOTATION: annotation 5 in <dir>/ann.json refers to image 4, which `images` does not list',
    );
    expect(await read({}, { classes: ['__background__', 'box'] })).toBe(
      "TORCHLITE_BAD_ANNOTATION: annotation 12 in <dir>/ann.json has category 'ring', which `options.classes` does not list",
    );
    expect(await read({ annotations: [{ id: 5, image_id: 1, category_id: 7, bbox: [0, 0, 1, 1] }] }, { masks: true })).toBe(
      'TORCHLITE_BAD_ANNOTATION: annotation 5 in <dir>/ann.json has no segmentation (polygons or RLE); read without masks: true, or add one',
    );
    // Within a pixel of the edge, a box is clipped; without area, dropped (as torchvision's reference does).
    const dir = await cocoFolder({ annotations: [{ id: 5, image_id: 1, category_id: 7, bbox: [30, 20, 10.5, 10.5] }, { id: 6, image_id: 1, category_id: 7, bbox: [3, 3, 0, 4] }] });
    const target = (await (await data.coco(join(dir, 'ann.json'))).get(0, 0)).target as data.TargetParts;
    expect(Array.from(target.boxes.data as Float32Array)).toEqual([30, 20, 40, 30]);
    const empty = mkdtempSync(join(tmpdir(), 'torchlite-coco-'));
    writeFileSync(join(empty, 'ann.json'), '  \n');
    await expect(data.coco(join(empty, 'ann.json'))).rejects.toMatchObject({ code: 'TORCHLITE_BAD_DATA', message: `COCO annotation file ${join(empty, 'ann.json')} is empty` });
    writeFileSync(join(empty, 'ann.json'), '{"images": []}');
    await expect(data.coco(join(empty, 'ann.json'))).rejects.toMatchObject({ code: 'TORCHLITE_BAD_DATA', message: `COCO annotation file ${join(empty, 'ann.json')} has no \`annotations\` array` });
    await expect(data.coco(join(empty, 'missing.json'))).rejects.toMatchObject({ code: 'TORCHLITE_FILE_NOT_FOUND' });
  });
});

describe('data.voc', () => {
  const xml = (objects: string, file = 'a.png') =>
    `<annotation><filename>${file}</filename><size><width>40</width><height>30</height><depth>3</depth></size>${objects}</annotation>`;
  const object = (name: string, box: number[], difficult = 0) =>
    `<object><name>${name}</name><difficult>${difficult}</difficult><bndbox><xmin>${box[0]}</xmin><ymin>${box[1]}</ymin><xmax>${box[2]}</xmax><ymax>${box[3]}</ymax></bndbox></object>`;
  async function vocFolder(files: Record<string, string>): Promise<string> {
    const dir = mkdtempSync(join(tmpdir(), 'torchlite-voc-'));
    mkdirSync(join(dir, 'Annotations'));
    mkdirSync(join(dir, 'JPEGImages'));
    await picture(join(dir, 'JPEGImages', 'a.png'), 40, 30, [[10, 5, 30, 15]]);
    for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, 'Annotations', name), text);
    return dir;
  }

  it('reads 1-based boxes as 0-based edges, and difficult objects as crowds', async () => {
    const dir = await vocFolder({ 'a.xml': xml(object('dog', [11, 6, 30, 15]) + object('cat', [1, 1, 4, 3], 1)) });
    const ds = await data.voc(dir);
    expect(ds.classes).toEqual(['__background__', 'cat', 'dog']);
    const target = (await ds.get(0, 0)).target as data.TargetParts;
    expect(Array.from(target.boxes.data as Float32Array)).toEqual([10, 5, 30, 15, 0, 0, 4, 3]);
    expect(Array.from(target.labels.data as BigInt64Array, Number)).toEqual([2, 1]);
    expect(Array.from(target.iscrowd.data as BigInt64Array, Number)).toEqual([0, 1]);
  });

  it('names the file and object that are wrong', async () => {
    let dir = await vocFolder({ 'a.xml': xml(object('dog', [11, 6, 45, 15])) });
    await expect(data.voc(dir)).rejects.toMatchObject({
      code: 'TORCHLITE_BAD_ANNOTATION',
      message: `object 0 ('dog') in ${join(dir, 'Annotations', 'a.xml')}: the box [10, 5, 45, 15] lies outside the 40×30 image; fix the annotation, or the image's width and height`,
    });
    dir = await vocFolder({ 'a.xml': xml(object('dog', [11, 6, 30, 15])) });
    await expect(data.voc(dir, { classes: ['__background__', 'cat'] })).rejects.toMatchObject({
      code: 'TORCHLITE_BAD_ANNOTATION',
      message: `object 0 ('dog') in ${join(dir, 'Annotations', 'a.xml')} has class 'dog', which \`options.classes\` does not list`,
    });
    dir = await vocFolder({ 'a.xml': '' });
    await expect(data.voc(dir)).rejects.toMatchObject({ code: 'TORCHLITE_BAD_DATA', message: `VOC annotation ${join(dir, 'Annotations', 'a.xml')} is empty` });
    dir = await vocFolder({});
    await expect(data.voc(dir)).rejects.toMatchObject({ code: 'TORCHLITE_BAD_DATA', message: `${join(dir, 'Annotations')} has no .xml annotations` });
  });
});

describe('masks', () => {
  it("decodes COCO's RLE, compressed or not, column-major", () => {
    // 3 background, 2 object, 4 background, then 1 object (stored as 1 − 2: "O" is −1).
    const plain = data.decodeRle({ counts: [3, 2, 4, 1], size: [5, 2] });
    expect(data.decodeRle({ counts: '324O', size: [5, 2] })).toEqual(plain);
    // Column 0 is pixels 0–4 top to bottom: rows 3 and 4 are set; column 1's last row.
    expect(Array.from(plain)).toEqual([0, 0, 0, 0, 0, 0, 1, 0, 1, 1]);
    expect(() => data.decodeRle({ counts: [3, 2], size: [5, 2] })).toThrow('run-length counts that cover 5×2 pixels, not 5');
  });

  it('fills polygons by pixel centres, holes by the even-odd rule', () => {
    const square = [0, 0, 4, 0, 4, 4, 0, 4];
    const hole = [1, 1, 3, 1, 3, 3, 1, 3];
    const mask = data.polygonMask([square, hole], 4, 5);
    expect(Array.from(mask)).toEqual([1, 1, 1, 1, 0, 1, 0, 0, 1, 0, 1, 0, 0, 1, 0, 1, 1, 1, 1, 0]);
  });
});
