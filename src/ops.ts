// Custom-op libraries: torchvision's, found and loaded by torchlite itself where one is
// installed for this LibTorch, and any other through ops.load, as Python's
// torch.ops.load_library does.
import { existsSync, readdirSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { callNativeAsync, readError, TorchError } from './errors';
import { native } from './native';
import { checkString } from './validate';

const loadedLibraries = new Set<string>();

/** The libtorch_cpu soname a library was linked against (`libtorch_cpu.so.1.13`), if it names one. */
async function neededTorch(path: string): Promise<string | undefined> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (error) {
    throw readError(error, `cannot read the op library ${path}`);
  }
  return /libtorch_cpu\.so(?:\.\d+)*(?=\0)/.exec(bytes.toString('latin1'))?.[0];
}

/** Whether a library that needs `needed` would use this process's libtorch_cpu, not load a second one. */
function sameTorch(needed: string | undefined, ours: string): boolean {
  const own = basename(ours);
  return needed === undefined || needed === 'libtorch_cpu.so' || own === needed || own.startsWith(`${needed}.`);
}

/**
 * Loads a custom-op library (a `.so` whose operators TorchScript models call, such as
 * torchvision's `_C.so`), as Python's `torch.ops.load_library` does, off the event loop.
 * Models loaded afterwards can use its ops. It must be built for this LibTorch: a library
 * linked against another LibTorch version is refused with `TORCHLITE_OPS_LOAD` before it is
 * loaded. Loading the same file twice does nothing.
 */
export function load(path: string): Promise<void> {
  return callNativeAsync(async () => {
    checkString(path, 'path');
    await loadLibrary(resolve(path), 'refuse');
  });
}

/**
 * Loads `file` unless it is loaded already; one built for another LibTorch is refused with
 * `TORCHLITE_OPS_LOAD`, or skipped (resolving false) when the lookup only tries candidates.
 */
async function loadLibrary(file: string, otherTorch: 'refuse' | 'skip'): Promise<boolean> {
  if (loadedLibraries.has(file)) return true;
  if (!existsSync(file)) throw new TorchError('TORCHLITE_FILE_NOT_FOUND', `no such file: ${file}`);
  const ours = native.torchLibraryPath();
  const needed = await neededTorch(file);
  if (ours !== null && !sameTorch(needed, ours)) {
    if (otherTorch === 'skip') return false;
    throw new TorchError('TORCHLITE_OPS_LOAD', `${file} is built for ${needed}, but torchlite runs on ${basename(ours)} (LibTorch ${native.torchVersion}); install the build of that library that matches LibTorch ${native.torchVersion}`);
  }
  await native.loadOpsLibrary(file);
  loadedLibraries.add(file);
  return true;
}

/** The op libraries loaded so far, by `ops.load` or the automatic torchvision lookup. */
export function loaded(): string[] {
  return [...loadedLibraries];
}

/**
 * @internal Where torchvision's ops library would be for the LibTorch torchlite runs on: beside
 * a pip torch (`site-packages/torchvision/_C*.so`), or Debian's `python3-torchvision` when the
 * LibTorch is the system's.
 */
export function torchvisionCandidates(torchLibrary: string): string[] {
  const libDir = dirname(torchLibrary);
  const dirs = [join(libDir, '..', '..', 'torchvision')];
  if (/^\/(usr\/)?lib\//.test(libDir)) dirs.push('/usr/lib/python3/dist-packages/torchvision');
  return dirs.flatMap((dir) => {
    try {
      return readdirSync(dir)
        .filter((name) => /^_C(\..*)?\.so$/.test(name))
        .map((name) => join(dir, name));
    } catch {
      return [];
    }
  });
}

let torchvisionLookup: Promise<boolean> | undefined;

/**
 * @internal torchvision's ops, once per process, when a model first needs them:
 * `TORCHLITE_TORCHVISION_OPS` names the library, or turns the lookup off (`0`); else the first
 * candidate built for this LibTorch is loaded. Resolves whether they are loaded; a failure is
 * a warning, and the model's load then fails with what to install.
 */
export function ensureTorchvisionOps(): Promise<boolean> {
  torchvisionLookup ??= (async () => {
    const setting = process.env.TORCHLITE_TORCHVISION_OPS;
    if (setting === '0' || setting === 'off' || setting === 'false') return false;
    const ours = native.torchLibraryPath();
    const candidates = setting ? [setting] : ours === null ? [] : torchvisionCandidates(ours);
    for (const candidate of candidates) {
      try {
        if (await loadLibrary(resolve(candidate), setting ? 'refuse' : 'skip')) return true;
      } catch (error) {
        process.emitWarning(`torchvision's ops were not loaded from ${candidate}: ${(error as Error).message}`, { code: 'TORCHLITE_OPS' });
      }
    }
    return false;
  })();
  return torchvisionLookup;
}
