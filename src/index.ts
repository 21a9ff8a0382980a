export { TorchError, type TorchErrorCode } from './errors';
export {
  loadPretrained,
  Model,
  type BatchNormPolicy,
  type FreezeResult,
  type LoadOptions,
  type ResetClassifierOptions,
  type SaveOptions,
  type ModelInput,
  type ModelOutput,
  type ModuleInfo,
  type ParameterInfo,
  type TensorInfo,
} from './model';
export * as nn from './nn';
export type { Layer } from './nn';
export type { Pattern } from './patterns';
export { cuda, getNumThreads, setNumThreads, torchVersion } from './runtime';
export {
  arange,
  type Device,
  type Dtype,
  manualSeed,
  ones,
  randn,
  Tensor,
  type TensorArray,
  type TensorData,
  tensor,
  type TensorOptions,
  zeros,
} from './tensor';
