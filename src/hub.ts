// Files from the Hugging Face Hub and torchvision's server, in the caches Python uses: the Hub's
// `models--owner--name/{refs,blobs,snapshots}` under HF_HUB_CACHE (huggingface_hub's layout), and
// torch.hub's `$TORCH_HOME/hub/checkpoints`, so a file either side downloaded is not fetched
// again. @huggingface/hub resolves each file (size, ETag, URL, commit); its own cache helper
// differs from Python's layout (it files a snapshot under the file's last commit rather than the
// revision's, writes no refs/, neither resumes nor locks nor verifies), so the cache is kept here.
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync, readFileSync } from 'node:fs';
import { mkdir, open, readFile, readlink, rename, rm, stat, symlink, unlink, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';

import { SingleBar } from 'cli-progress';

import { TorchError } from './errors';

/** Hub settings from the environment variables huggingface_hub reads. */
export function hubSettings(): { cache: string; endpoint: string; token?: string; offline: boolean } {
  const home = process.env.HF_HOME ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'huggingface');
  const yes = (value: string | undefined) => value !== undefined && ['1', 'ON', 'YES', 'TRUE'].includes(value.toUpperCase());
  let token = process.env.HF_TOKEN ?? process.env.HUGGING_FACE_HUB_TOKEN;
  if (!token) {
    try {
      token = readFileSync(process.env.HF_TOKEN_PATH ?? join(home, 'token'), 'utf8').trim() || undefined;
    } catch {
      token = undefined;
    }
  }
  return { cache: process.env.HF_HUB_CACHE ?? process.env.HUGGINGFACE_HUB_CACHE ?? join(home, 'hub'), endpoint: (process.env.HF_ENDPOINT ?? 'https://huggingface.co').replace(/\/$/, ''), token, offline: yes(process.env.HF_HUB_OFFLINE) };
}

/** `owner/name` and a revision, from `hf:owner/name` or `hf:owner/name@revision`. */
export function parseHubName(spec: string): { repo: string; revision: string } | undefined {
  const match = /^hf:([\w.-]+\/[\w.-]+)(?:@(.+))?$/.exec(spec);
  return match ? { repo: match[1], revision: match[2] ?? 'main' } : undefined;
}

const COMMIT = /^[0-9a-f]{40}$/;

/** Options of {@link hubFile}. */
export interface HubFileOptions {
  /** A branch, tag or commit. Defaults to `'main'`. */
  revision?: string;
  /** Resolves to undefined instead of failing when the repository has no such file. Defaults to `false`. */
  optional?: boolean;
}

/**
 * A file of a Hub repository, from the cache or downloaded into it (resuming a download that
 * was cut off, verified against its sha256 where the Hub gives one, one process at a time per
 * file); returns its path in the snapshot. Offline (`HF_HUB_OFFLINE=1`), only the cache is read.
 */
export async function hubFile(repo: string, path: string, options: HubFileOptions = {}): Promise<string | undefined> {
  const { cache, endpoint, token, offline } = hubSettings();
  const revision = options.revision ?? 'main';
  const folder = join(cache, `models--${repo.replace('/', '--')}`);
  const pointer = (commit: string) => join(folder, 'snapshots', commit, path);
  if (offline) {
    const commit = COMMIT.test(revision) ? revision : await readFile(join(folder, 'refs', revision), 'utf8').catch(() => undefined);
    if (commit && existsSync(pointer(commit.trim()))) return pointer(commit.trim());
    if (options.optional && commit && existsSync(join(folder, 'snapshots', commit.trim()))) return undefined;
    throw new TorchError('TORCHLITE_NOT_CACHED', `HF_HUB_OFFLINE is set and ${repo}@${revision}'s ${path} is not in the cache (${folder}); run \`torchlite pull hf:${repo}\` where there is a network, or unset HF_HUB_OFFLINE`);
  }
  const { fileDownloadInfo, downloadFile } = await import('@huggingface/hub');
  let commit: string | undefined;
  // The commit the revision resolves to comes in a header that the library does not return.
  const watching: typeof fetch = async (url, init) => {
    const response = await fetch(url, init);
    commit ??= response.headers.get('x-repo-commit') ?? undefined;
    if (!response.ok && response.status !== 404) throw new TorchError('TORCHLITE_DOWNLOAD_FAILED', `${typeof url === 'string' ? url : String(url)} answered ${response.status} ${response.statusText}`);
    return response;
  };
  let info;
  try {
    info = await fileDownloadInfo({ repo, path, revision, hubUrl: endpoint, fetch: watching, ...(token && { accessToken: token }) });
  } catch (error) {
    if (error instanceof TorchError) throw error;
    throw new TorchError('TORCHLITE_DOWNLOAD_FAILED', `cannot reach ${endpoint} for ${repo}@${revision}/${path}: ${(error as Error).message}; set HF_HUB_OFFLINE=1 to use the cache alone`, { cause: error });
  }
  if (!info) {
    if (options.optional) return undefined;
    throw new TorchError('TORCHLITE_FILE_NOT_FOUND', `${repo}@${revision} has no file ${path}`);
  }
  const etag = info.etag.replace(/^W\//, '').replace(/"/g, '');
  const snapshot = COMMIT.test(revision) ? revision : (commit ?? etag);
  if (!COMMIT.test(revision) && commit) {
    await mkdir(join(folder, 'refs'), { recursive: true });
    await writeFile(join(folder, 'refs', revision), commit);
  }
  const target = pointer(snapshot);
  if (existsSync(target)) return target;
  const blob = join(folder, 'blobs', etag);
  await mkdir(dirname(blob), { recursive: true });
  await withLock(join(cache, '.locks', `models--${repo.replace('/', '--')}`, `${etag}.torchlite.lock`), async () => {
    if (existsSync(blob)) return; // another process finished it while this one waited
    const source = await downloadFile({ repo, path, revision, hubUrl: endpoint, fetch: watching, downloadInfo: info, xet: false, ...(token && { accessToken: token }) });
    await fetchResumable(`${repo}/${path}`, blob, info.size, (from) => (source as Blob).slice(from, info.size).stream(), /^[0-9a-f]{64}$/.test(etag) ? etag : undefined);
  });
  await mkdir(dirname(target), { recursive: true });
  // A relative link, as huggingface_hub makes, so the cache can move.
  await symlink(relative(dirname(target), blob), target).catch(async (error: NodeJS.ErrnoException) => {
    if (error.code !== 'EEXIST' || (await readlink(target)) !== relative(dirname(target), blob)) throw error;
  });
  return target;
}

/**
 * A torch.hub checkpoint (`$TORCH_HOME/hub/checkpoints/<file>`): the cached file, or downloaded
 * as torch.hub does, checking the sha256 prefix its name carries (`resnet18-f37072fd.pth`).
 */
export async function torchHubFile(url: string, folder: string): Promise<string> {
  const name = new URL(url).pathname.split('/').pop()!;
  const file = join(folder, name);
  if (existsSync(file)) return file;
  if (hubSettings().offline || process.env.TORCHLITE_OFFLINE === '1')
    throw new TorchError('TORCHLITE_NOT_CACHED', `offline (HF_HUB_OFFLINE or TORCHLITE_OFFLINE is set) and ${name} is not in ${folder}: fetch ${url} into it, or run \`torchlite pull\` where there is a network`);
  await mkdir(folder, { recursive: true });
  const prefix = /-([0-9a-f]{8,})\.\w+$/.exec(name)?.[1];
  await withLock(`${file}.torchlite.lock`, async () => {
    if (existsSync(file)) return;
    const head = await fetch(url, { method: 'HEAD' }).catch((error: Error) => {
      throw new TorchError('TORCHLITE_DOWNLOAD_FAILED', `cannot reach ${url}: ${error.message}`, { cause: error });
    });
    if (!head.ok) throw new TorchError('TORCHLITE_DOWNLOAD_FAILED', `${url} answered ${head.status} ${head.statusText}`);
    const size = Number(head.headers.get('content-length'));
    await fetchResumable(name, file, size, (from) => {
      const stream = new TransformStream();
      void fetch(url, { headers: { Range: `bytes=${from}-` } })
        .then((response) => {
          if (!response.ok || !response.body) throw new TorchError('TORCHLITE_DOWNLOAD_FAILED', `${url} answered ${response.status} ${response.statusText}`);
          return response.body.pipeTo(stream.writable);
        })
        .catch((error: Error) => stream.writable.abort(error).catch(() => undefined));
      return stream.readable;
    }, prefix, true);
  });
  return file;
}

/**
 * Downloads into `path` through `path.incomplete`, going on from its bytes where an earlier
 * attempt was cut off; checks the size and the sha256 (all of it, or a prefix of its hex) before
 * renaming into place, and removes a file that fails the check.
 */
async function fetchResumable(label: string, path: string, size: number, from: (offset: number) => ReadableStream<Uint8Array>, sha256?: string, prefixOnly = false): Promise<void> {
  const partial = `${path}.incomplete`;
  const have = existsSync(partial) ? (await stat(partial)).size : 0;
  const offset = have <= size ? have : 0;
  const hash = createHash('sha256');
  if (offset > 0) await pipeline(createReadStream(partial, { end: offset - 1 }), hash, { end: false }).catch(() => undefined);
  const bar = process.stderr.isTTY && size > 1 << 20 ? new SingleBar({ format: `${label} [{bar}] {percentage}% {value}/{total} MB`, stream: process.stderr, hideCursor: true }) : undefined;
  bar?.start(Math.round(size / 2 ** 20), Math.round(offset / 2 ** 20));
  let written = offset;
  const meter = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      hash.update(chunk);
      written += chunk.length;
      bar?.update(Math.round(written / 2 ** 20));
      done(null, chunk);
    },
  });
  try {
    await pipeline(Readable.fromWeb(from(offset) as Parameters<typeof Readable.fromWeb>[0]), meter, createWriteStream(partial, { flags: offset > 0 ? 'a' : 'w' }));
  } catch (error) {
    throw error instanceof TorchError ? error : new TorchError('TORCHLITE_DOWNLOAD_FAILED', `downloading ${label} stopped at ${written} of ${size} bytes (${(error as Error).message}); run it again to resume`, { cause: error });
  } finally {
    bar?.stop();
  }
  const digest = hash.digest('hex');
  if (written !== size || (sha256 && (prefixOnly ? !digest.startsWith(sha256) : digest !== sha256))) {
    await rm(partial, { force: true });
    throw new TorchError('TORCHLITE_CORRUPT_FILE', `downloaded ${label} is ${written !== size ? `${written} bytes, not ${size}` : `corrupt: its sha256 is ${digest}, not ${sha256}${prefixOnly ? '…' : ''}`}; it was removed, run it again`);
  }
  await rename(partial, path);
}

/**
 * Runs `work` while holding a lock file that names this process, so that two processes loading
 * the same model download it once; a lock left by a process that died is taken over.
 */
async function withLock(lock: string, work: () => Promise<void>): Promise<void> {
  await mkdir(dirname(lock), { recursive: true });
  for (;;) {
    try {
      const handle = await open(lock, 'wx');
      await handle.writeFile(String(process.pid));
      await handle.close();
      break;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      const holder = Number(await readFile(lock, 'utf8').catch(() => ''));
      if (holder > 0 && !alive(holder)) await unlink(lock).catch(() => undefined);
      else await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  try {
    await work();
  } finally {
    await unlink(lock).catch(() => undefined);
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}
