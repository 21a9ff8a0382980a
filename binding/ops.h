// Custom-op libraries: loading one into the process, and where this addon's LibTorch lives.
#pragma once
#include "common.h"

namespace tl {

Napi::Value LoadOpsLibrary(const Napi::CallbackInfo& info);
Napi::Value TorchLibraryPath(const Napi::CallbackInfo& info);

}  // namespace tl
