// The pixel values of 8-bit greyscale and palette PNGs, as stored: a segmentation mask's class
// indices. Decoders (sharp included) turn a palette into its colours, which loses them.
import { promisify } from 'node:util';
import { inflate } from 'node:zlib';

const inflateAsync = promisify(inflate);
const SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/** The raw 8-bit values of a greyscale or palette PNG, row-major, with its size. */
export async function pngIndices(bytes: Buffer): Promise<{ data: Uint8Array; width: number; height: number }> {
  if (bytes.length < 8 || !bytes.subarray(0, 8).equals(SIGNATURE)) throw new RangeError('a PNG file');
  let at = 8;
  let header: { width: number; height: number; depth: number; colour: number; interlace: number } | undefined;
  const parts: Buffer[] = [];
  while (at + 8 <= bytes.length) {
    const length = bytes.readUInt32BE(at);
    const type = bytes.toString('latin1', at + 4, at + 8);
    const body = bytes.subarray(at + 8, at + 8 + length);
    if (type === 'IHDR') header = { width: body.readUInt32BE(0), height: body.readUInt32BE(4), depth: body[8], colour: body[9], interlace: body[12] };
    else if (type === 'IDAT') parts.push(body);
    else if (type === 'IEND') break;
    at += 12 + length;
  }
  if (!header) throw new RangeError('a PNG file with a header');
  const { width, height, depth, colour, interlace } = header;
  if (depth !== 8 || (colour !== 0 && colour !== 3) || interlace !== 0)
    throw new RangeError('an 8-bit greyscale or palette (indexed) PNG, not interlaced, holding class indices');
  const raw = await inflateAsync(Buffer.concat(parts));
  if (raw.length !== height * (width + 1)) throw new RangeError(`a PNG whose image data holds ${height} rows of ${width} pixels`);
  const out = new Uint8Array(width * height);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (width + 1)];
    const row = raw.subarray(y * (width + 1) + 1, (y + 1) * (width + 1));
    const here = y * width;
    const above = (y - 1) * width;
    for (let x = 0; x < width; x++) {
      const a = x > 0 ? out[here + x - 1] : 0;
      const b = y > 0 ? out[above + x] : 0;
      const c = x > 0 && y > 0 ? out[above + x - 1] : 0;
      let predicted = 0;
      if (filter === 1) predicted = a;
      else if (filter === 2) predicted = b;
      else if (filter === 3) predicted = (a + b) >> 1;
      else if (filter === 4) {
        // Paeth: the neighbour nearest to a + b − c.
        const p = a + b - c;
        const [pa, pb, pc] = [Math.abs(p - a), Math.abs(p - b), Math.abs(p - c)];
        predicted = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      } else if (filter !== 0) throw new RangeError(`a PNG with row filters 0–4, not ${filter}`);
      out[here + x] = (row[x] + predicted) & 0xff;
    }
  }
  return { data: out, width, height };
}
