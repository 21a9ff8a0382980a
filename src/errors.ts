/**
 * Stable codes carried by {@link TorchError}. Codes starting with `TORCHLITE_` come from
 * torchlite's own checks; `TORCH_` codes classify failures raised inside LibTorch.
 */
export type TorchErrorCode =
  | 'TORCHLITE_FILE_NOT_FOUND'
  | 'TORCHLITE_IS_DIRECTORY'
  | 'TORCHLITE_FILE_UNREADABLE'
  | 'TORCHLITE_NOT_TORCHSCRIPT'
  | 'TORCHLITE_CORRUPT_FILE'
  | 'TORCHLITE_WEIGHTS_MISMATCH'
  | 'TORCHLITE_UNSUPPORTED_FORMAT'
  | 'TORCHLITE_NOT_CACHED'
  | 'TORCHLITE_DOWNLOAD_FAILED'
  | 'TORCHLITE_UNSUPPORTED_ARCHITECTURE'
  | 'TORCHLITE_UNKNOWN_MODEL'
  | 'TORCHLITE_NO_MATCH'
  | 'TORCHLITE_DISPOSED'
  | 'TORCHLITE_CUDA_UNAVAILABLE'
  | 'TORCHLITE_BAD_DEVICE'
  | 'TORCHLITE_BAD_DTYPE'
  | 'TORCHLITE_BAD_ARGUMENT'
  | 'TORCHLITE_UNSUPPORTED_OUTPUT'
  | 'TORCHLITE_ADDON_LOAD'
  | 'TORCHLITE_NO_SUCH_MODULE'
  | 'TORCHLITE_NO_SUCH_METHOD'
  | 'TORCHLITE_UNSUPPORTED_SURGERY'
  | 'TORCHLITE_FROZEN_MODEL'
  | 'TORCHLITE_INCOMPATIBLE_MODULE'
  | 'TORCHLITE_WRITE_FAILED'
  | 'TORCHLITE_BAD_TARGET'
  | 'TORCHLITE_BAD_STATE'
  | 'TORCHLITE_STALE_OPTIMIZER'
  | 'TORCHLITE_AMP_UNSUPPORTED'
  | 'TORCHLITE_UNSAFE_LAYOUT'
  | 'TORCH_NONFINITE_LOSS'
  | 'TORCHLITE_BAD_DATA'
  | 'TORCHLITE_BAD_ANNOTATION'
  | 'TORCHLITE_BAD_ARRAY'
  | 'TORCHLITE_BAD_SHAPE'
  | 'TORCHLITE_MODEL_BUSY'
  | 'TORCHLITE_DEVICE_SYNC'
  | 'TORCHLITE_NO_INPUT_SPEC'
  | 'TORCHLITE_UNKNOWN_CLASSES'
  | 'TORCHLITE_DIST_UNAVAILABLE'
  | 'TORCHLITE_DIST_TIMEOUT'
  | 'TORCHLITE_DIST_PEER_LOST'
  | 'TORCHLITE_DIST_PORT_IN_USE'
  | 'TORCHLITE_DIST_WORLD_MISMATCH'
  | 'TORCHLITE_DIST_BAD_RANK'
  | 'TORCHLITE_DIST_MODEL_MISMATCH'
  | 'TORCHLITE_DIST_ERROR'
  | 'TORCH_SHAPE'
  | 'TORCH_DTYPE'
  | 'TORCH_ARGUMENT'
  | 'TORCH_INDEX'
  | 'TORCH_VALUE'
  | 'TORCH_OOM'
  | 'TORCH_NOT_IMPLEMENTED'
  | 'TORCH_UNKNOWN_OP'
  | 'TORCHLITE_INTERNAL'
  | 'TORCHLITE_OVERLOADED'
  | 'TORCHLITE_TIMEOUT'
  | 'TORCHLITE_ABORTED'
  | 'TORCHLITE_OPS_LOAD'
  | 'TORCH_ERROR';

/** A failure inside LibTorch or while reading and writing files. Misuse throws `TypeError`/`RangeError` instead (see {@link MisuseError}). */
export class TorchError extends Error {
  /** A stable code to branch on; the message may change between versions. */
  readonly code: TorchErrorCode;
  /** LibTorch's C++ backtrace or TorchScript traceback, when there is one. */
  readonly backtrace?: string;

  constructor(code: TorchErrorCode, message: string, options: { backtrace?: string; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'TorchError';
    this.code = code;
    if (options.backtrace) this.backtrace = options.backtrace;
  }
}

/**
 * Misuse of the API, as better-sqlite3 reports it: a `TypeError` that also carries a stable
 * `code` (a busy model, a model put inside itself, an optimizer used with another model).
 */
export type MisuseError = TypeError & { readonly code: TorchErrorCode };

/** The codes that mean misuse: the native side raises them too, and they reach JS as `TypeError`s. */
const MISUSE_CODES: ReadonlySet<string> = new Set<TorchErrorCode>(['TORCHLITE_MODEL_BUSY', 'TORCHLITE_BAD_ARGUMENT']);

/** A {@link MisuseError}. */
export function misuse(code: TorchErrorCode, message: string): MisuseError {
  return Object.assign(new TypeError(message), { code });
}

/** `TORCHLITE_MODEL_BUSY`: a synchronous method that would overtake the model's pending operations. */
export function busyError(message: string): MisuseError {
  return misuse('TORCHLITE_MODEL_BUSY', message);
}

interface NativeFailure {
  message: string;
  code: string;
  backtrace?: string;
  torchlite: true;
}

// Only the addon's errors carry the marker: a Node or user error with a `code` (thrown
// by a batch iterator inside evaluate) passes through unchanged.
function isNativeFailure(error: unknown): error is NativeFailure & Error {
  const candidate = error as Partial<NativeFailure> | null;
  return error instanceof Error && candidate?.torchlite === true && typeof candidate.code === 'string';
}

function convert(error: unknown, stack: string | undefined): unknown {
  if (error instanceof TorchError || !isNativeFailure(error)) return error;
  const converted = MISUSE_CODES.has(error.code)
    ? misuse(error.code as TorchErrorCode, error.message)
    : new TorchError(error.code as TorchErrorCode, error.message, { backtrace: error.backtrace });
  if (stack !== undefined) converted.stack = `${converted.name}: ${error.message}${stack.slice(stack.indexOf('\n'))}`;
  return converted;
}

/** Runs a synchronous native call, turning native failures into {@link TorchError}. */
export function callNative<T>(body: () => T): T {
  try {
    return body();
  } catch (error) {
    throw convert(error, undefined);
  }
}

/**
 * Runs an asynchronous native call. The stack is captured before the call is queued, so
 * a rejection points at the user's code rather than at the completion callback.
 */
export async function callNativeAsync<T>(body: () => Promise<T>): Promise<T> {
  const site: { stack?: string } = {};
  Error.captureStackTrace(site, callNativeAsync);
  try {
    return await body();
  } catch (error) {
    throw convert(error, site.stack);
  }
}

export function disposedError(what: string): TorchError {
  return new TorchError('TORCHLITE_DISPOSED', `${what} has been disposed`);
}

/** A failed read of a file or folder as a coded error: missing, a directory, or otherwise unreadable. */
export function readError(error: unknown, message: string): TorchError {
  const code = (error as NodeJS.ErrnoException).code;
  const coded = code === 'ENOENT' ? 'TORCHLITE_FILE_NOT_FOUND' : code === 'EISDIR' ? 'TORCHLITE_IS_DIRECTORY' : 'TORCHLITE_FILE_UNREADABLE';
  return new TorchError(coded, `${message}: ${(error as Error).message}`, { cause: error });
}
