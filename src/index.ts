export { TorchError, type TorchErrorCode } from './errors';
export {
  loadPretrained,
  Model,
  type LoadOptions,
  type ModelInput,
  type ModelOutput,
  type ModuleInfo,
  type ParameterInfo,
  type TensorInfo,
} from './model';
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
