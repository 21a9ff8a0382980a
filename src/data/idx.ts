// The IDX format (MNIST, Fashion-MNIST), gzipped or not.
import { readFile } from 'node:fs/promises';
import { gunzip } from 'node:zlib';
import { promisify } from 'node:util';

import { TorchError } from '../errors';

/** A decoded IDX file: the format of MNIST and Fashion-MNIST. */
export interface IdxArray {
  shape: number[];
  data: Uint8Array;
}

const gunzipAsync = promisify(gunzip);
const UBYTE = 0x08;

/** Reads an IDX file of unsigned bytes, gzipped (`.gz`, detected by content) or raw. */
export async function readIdx(path: string): Promise<IdxArray> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new TorchError('TORCHLITE_FILE_NOT_FOUND', `no such file: ${path}`);
    if (code === 'EISDIR') throw new TorchError('TORCHLITE_IS_DIRECTORY', `${path} is a directory, not an IDX file`);
    throw new TorchError('TORCHLITE_FILE_UNREADABLE', `cannot read ${path}: ${(error as Error).message}`);
  }
  if (bytes[0] === 0x1f && bytes[1] === 0x8b) {
    try {
      bytes = await gunzipAsync(bytes);
    } catch {
      throw new TorchError('TORCHLITE_CORRUPT_FILE', `${path} is a truncated or damaged gzip file`);
    }
  }
  if (bytes.length < 4 || bytes[0] !== 0 || bytes[1] !== 0 || bytes[2] !== UBYTE)
    throw new TorchError('TORCHLITE_BAD_DATA', `${path} is not an IDX file of unsigned bytes`);
  const dims = bytes[3];
  const shape = Array.from({ length: dims }, (_, i) => bytes.readUInt32BE(4 + 4 * i));
  const offset = 4 + 4 * dims;
  const numel = shape.reduce((a, b) => a * b, 1);
  if (bytes.length !== offset + numel)
    throw new TorchError('TORCHLITE_CORRUPT_FILE', `${path} holds ${bytes.length - offset} bytes of data but its header promises ${numel}`);
  return { shape, data: new Uint8Array(bytes.buffer, bytes.byteOffset + offset, numel) };
}
