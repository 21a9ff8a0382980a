// CUDA queries and global speed switches (see cuda.cc).
#pragma once
#include "common.h"

namespace tl {

Napi::Value CudaMemory(const Napi::CallbackInfo& info);
Napi::Value CudaEmptyCache(const Napi::CallbackInfo& info);
Napi::Value CudaSynchronize(const Napi::CallbackInfo& info);
Napi::Value SetSpeedOptions(const Napi::CallbackInfo& info);

}  // namespace tl
