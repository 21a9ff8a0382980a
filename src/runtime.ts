import { native } from './native';
import { checkPositiveInteger } from './validate';

/** Sets LibTorch's intra-op thread count. Defaults to the cores available to Node (or `TORCHLITE_NUM_THREADS`). */
export function setNumThreads(n: number): void {
  native.setNumThreads(checkPositiveInteger(n, 'n'));
}

export function getNumThreads(): number {
  return native.getNumThreads();
}

/** The LibTorch version the addon was built against, e.g. `'1.13.0'`. */
export const torchVersion: string = native.torchVersion;

/** CUDA queries. */
export const cuda = {
  /** Whether this LibTorch build has CUDA and a GPU is visible. */
  isAvailable(): boolean {
    return native.cudaInfo().available;
  },
  /** Number of visible CUDA devices; 0 without CUDA. */
  deviceCount(): number {
    return native.cudaInfo().deviceCount;
  },
};
