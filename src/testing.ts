// Test hooks, kept out of the package's public surface (index.ts does not export them).
import { callNativeAsync } from './errors';
import { Model, type ModelInput } from './model';
import { unwrapInput } from './model/io';
import { native } from './native';

/**
 * Runs forward and backward on the sum of the outputs, and reports which parameters
 * received a non-zero gradient; grads are cleared afterwards.
 */
export function probeGradients(model: Model, ...inputs: ModelInput[]): Promise<Record<string, boolean>> {
  return callNativeAsync(async () => {
    const args = inputs.map((input, i) => unwrapInput(input, `inputs[${i}]`));
    return Model.enqueue(model, (handle) => handle.probeGradients(args));
  });
}

/** Bytes the addon has reported to V8 as external memory (V8's own statistics do not show them). */
export function externalMemory(): number {
  return native.externalMemory();
}
