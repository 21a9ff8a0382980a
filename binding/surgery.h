// Editing loaded TorchScript models: swapping submodules, fixing traced training
// flags, and the BatchNorm train/eval policy.
#pragma once
#include "model.h"

namespace tl {

// The submodule at a dotted `path`, or TORCHLITE_NO_SUCH_MODULE naming the part missing.
torch::jit::Module submoduleAt(const torch::jit::Module& root, const std::string& path);

// Puts `replacement` at `path`. Refuses paths that do not exist, parents that use the
// child other than through forward, and models with no submodule calls left.
void replaceSubmodule(ModelState& state, const std::string& path, torch::jit::Module replacement);

// Rewrites the constant `training` arguments a tracer baked into normalisation and
// dropout calls to read self.training. Returns a warning per construct left unfixed.
// Which input of an op node is its `training` flag (batch_norm's 5, dropout's 2), or 0 for an
// op without one: tracing freezes that input into a constant.
size_t trainingFlagInput(const std::string& kind);

std::vector<std::string> fixTracedTrainingFlags(torch::jit::Module& module);

// Puts BatchNorm layers in eval mode while the model trains: those whose parameters are
// all frozen under policy frozen-eval, every one under eval. Other modules follow the model.
void applyBatchNormPolicy(ModelState& state);

// oneDNN's AVX-512 kernel for the weight gradient of a 1x1 convolution with a stride
// above 1 writes past its buffers when the input is channels-last and has few channels:
// measured on LibTorch 1.13 (oneDNN 2.6) at 3, 5, 9 and 16 threads with 1 to 15 input
// channels (24, 40 and 72 never crashed; Python 1.13 crashes alike), and on 2.11 at 16 threads.
// Any count that is not a multiple of 16 (one AVX-512 register of floats) counts, to be
// safe. Names the first such layer (its path and channel count), or "".
std::string nhwcBackwardHazard(const torch::jit::Module& module);

}  // namespace tl
