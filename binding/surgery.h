// Editing loaded TorchScript models: swapping submodules, fixing traced training
// flags, and the BatchNorm train/eval policy.
#pragma once
#include "model.h"

namespace tl {

// Puts `replacement` at `path`. Refuses paths that do not exist, parents that use the
// child other than through forward, and models with no submodule calls left.
void replaceSubmodule(ModelState& state, const std::string& path, torch::jit::Module replacement);

// Rewrites the constant `training` arguments a tracer baked into normalisation and
// dropout calls to read self.training. Returns a warning per construct left unfixed.
std::vector<std::string> fixTracedTrainingFlags(torch::jit::Module& module);

// Puts BatchNorm layers whose parameters are all frozen in eval mode while the model
// trains, when the state's policy is frozen-eval; every other module follows the model.
void applyBatchNormPolicy(ModelState& state);

}  // namespace tl
