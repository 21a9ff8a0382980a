// Native layers: real TorchScript modules built in the target model's compilation
// unit, so they save with it and Python loads them.
#pragma once
#include "model.h"

namespace tl {

// Builds the module described by a layer spec from src/nn.ts. `path` is where it will
// live in `target`; shape checks name it in their errors.
torch::jit::Module buildLayer(Napi::Env env, const Napi::Object& spec, const std::string& path, const ModelState& target);

// Draws a layer's initial parameters now, as PyTorch does in the constructor, so the
// seeded generator gives the same values as the same Python code.
Napi::Value InitLayerParameters(const Napi::CallbackInfo& info);

// nn.Linear / nn.ConvNd reset_parameters(): the weight of `shape` and (when `bias`) its bias,
// drawn in PyTorch's order and arithmetic; also fills the zoo's placeholders (weights.cc).
std::pair<torch::Tensor, torch::Tensor> kaimingInit(std::vector<int64_t> shape, bool bias);

}  // namespace tl
