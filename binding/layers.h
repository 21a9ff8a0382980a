// Native layers: real TorchScript modules built in the target model's compilation
// unit, so they save with it and Python loads them.
#pragma once
#include "common.h"

namespace tl {

// Builds the module described by a layer spec from src/nn.ts. `path` is where it will
// live in the model; shape checks name it in their errors.
torch::jit::Module buildLayer(Napi::Env env, const Napi::Object& spec, const std::string& path,
                              const std::shared_ptr<torch::jit::CompilationUnit>& unit);

// Draws a layer's initial parameters now, as PyTorch does in the constructor, so the
// seeded generator gives the same values as the same Python code.
Napi::Value InitLayerParameters(const Napi::CallbackInfo& info);

}  // namespace tl
