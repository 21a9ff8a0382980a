// Stored (uncompressed) records of zip files: torch.save's and TorchScript archives both are.
import { open } from 'node:fs/promises';

import { readError, TorchError } from './errors';

export interface ZipRecord {
  /** Where the record's bytes start in the file. */
  offset: number;
  size: number;
}

export type Handle = Awaited<ReturnType<typeof open>>;

export async function readAt(handle: Handle, position: number, length: number): Promise<Buffer> {
  const buffer = Buffer.alloc(length);
  const { bytesRead } = await handle.read(buffer, 0, length, position);
  return buffer.subarray(0, bytesRead);
}

/** A zip's stored records by name (torch.save stores, never compresses), from its central directory. */
export async function zipRecords(path: string, handle: Handle, size: number): Promise<Map<string, ZipRecord>> {
  const tail = await readAt(handle, Math.max(0, size - 65_557), Math.min(size, 65_557));
  const end = tail.lastIndexOf(Buffer.from([0x50, 0x4b, 0x05, 0x06]));
  if (end < 0) throw new TorchError('TORCHLITE_CORRUPT_FILE', `${path} is a zip without its central directory; it is truncated`);
  let count = tail.readUInt16LE(end + 10);
  let directory = tail.readUInt32LE(end + 16);
  if (directory === 0xffffffff || count === 0xffff) {
    // Zip64: the real numbers sit in the zip64 end record, found through its locator.
    const locator = tail.lastIndexOf(Buffer.from([0x50, 0x4b, 0x06, 0x07]), end);
    const record = await readAt(handle, Number(tail.readBigUInt64LE(locator + 8)), 56);
    count = Number(record.readBigUInt64LE(32));
    directory = Number(record.readBigUInt64LE(48));
  }
  const entries = new Map<string, ZipRecord>();
  const central = await readAt(handle, directory, size - directory);
  let at = 0;
  for (let i = 0; i < count; i++) {
    if (central.readUInt32LE(at) !== 0x02014b50) throw new TorchError('TORCHLITE_CORRUPT_FILE', `${path}: the zip's central directory is damaged`);
    const method = central.readUInt16LE(at + 10);
    let compressed = central.readUInt32LE(at + 20);
    const nameLength = central.readUInt16LE(at + 28);
    const extraLength = central.readUInt16LE(at + 30);
    const commentLength = central.readUInt16LE(at + 32);
    let local = central.readUInt32LE(at + 42);
    const name = central.toString('utf8', at + 46, at + 46 + nameLength);
    // Zip64 sizes and offsets live in the extra field (id 1), in this order, where the 32-bit ones are saturated.
    for (let e = at + 46 + nameLength; e < at + 46 + nameLength + extraLength; ) {
      const id = central.readUInt16LE(e);
      const length = central.readUInt16LE(e + 2);
      if (id === 1) {
        let field = e + 4;
        if (central.readUInt32LE(at + 24) === 0xffffffff) field += 8;
        if (compressed === 0xffffffff) (compressed = Number(central.readBigUInt64LE(field))), (field += 8);
        if (local === 0xffffffff) local = Number(central.readBigUInt64LE(field));
      }
      e += 4 + length;
    }
    if (method !== 0) throw new TorchError('TORCHLITE_UNSUPPORTED_FORMAT', `${path}: record ${name} is compressed, which torch.save never does; this is not a torch.save file`);
    const header = await readAt(handle, local, 30);
    const offset = local + 30 + header.readUInt16LE(26) + header.readUInt16LE(28);
    entries.set(name, { offset, size: compressed });
    at += 46 + nameLength + extraLength + commentLength;
  }
  return entries;
}

/** Runs `use` on the file opened for reading (a coded error where it cannot be), and closes it. */
export async function withFile<T>(path: string, use: (handle: Handle, size: number) => Promise<T>): Promise<T> {
  let handle: Handle;
  try {
    handle = await open(path, 'r');
  } catch (error) {
    throw readError(error, `cannot read ${path}`);
  }
  try {
    return await use(handle, (await handle.stat()).size);
  } finally {
    await handle.close();
  }
}

/** The text of the record whose name ends with `suffix` (an archive's `extra/torchlite.json`), or undefined. */
export function readZipText(path: string, suffix: string): Promise<string | undefined> {
  return withFile(path, async (handle, size) => {
    const records = await zipRecords(path, handle, size);
    const name = [...records.keys()].find((n) => n.endsWith(suffix));
    if (!name) return undefined;
    const record = records.get(name)!;
    return (await readAt(handle, record.offset, record.size)).toString('utf8');
  });
}
