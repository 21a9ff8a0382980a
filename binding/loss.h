// Loss functions with PyTorch's semantics, and the target checks that turn LibTorch's
// cryptic failures (or silent broadcasting) into coded errors.
#pragma once
#include <map>

#include "common.h"

namespace tl {

struct LossConfig {
  // Every field comes from the JS spec (loss.ts owns the defaults).
  std::string kind;  // crossEntropy, nll, bceWithLogits, mse, l1, smoothL1, huber
  bool classifies = false;  // class scores against class indices: accuracy applies
  std::string reduction;
  double labelSmoothing = 0;
  int64_t ignoreIndex = 0;
  double beta = 0;   // smoothL1
  double delta = 0;  // huber
  torch::Tensor weight;     // per-class weight (crossEntropy, nll)
  torch::Tensor posWeight;  // bceWithLogits
  // kind "model": the model's training forward computes its losses; named ones are summed
  // with these weights (a name not listed weighs 1).
  std::map<std::string, double> lossWeights;
  // Other kinds, with a model whose forward returns a dict of outputs (a segmentation model's
  // "out" and "aux"): the loss of each listed entry against the same target, weighted and
  // summed. Empty: the loss of the one output (firstTensor's).
  std::map<std::string, double> outputWeights;
};

LossConfig parseLoss(Napi::Env env, const Baton& spec);
// With `deferredBad`, class-index targets are checked without a host sync: indices out
// of range are counted into *deferredBad (a device scalar) and ignored, so no kernel
// ever sees them; the caller reports the count when it next reads from the device.
torch::Tensor computeLoss(const LossConfig& config, const torch::Tensor& output, torch::Tensor target,
                          torch::Tensor* deferredBad = nullptr);
// The loss a model computed itself (kind "model"): a scalar tensor, a dict of named losses
// (weighted and summed), or a tuple whose first item is that dict (torchvision's scripted
// detection models return (losses, detections)). `named` receives each named loss, detached.
torch::Tensor modelLoss(const LossConfig& config, const c10::IValue& output, std::vector<std::pair<std::string, torch::Tensor>>& named);
// The loss of a forward's `output` against `target`: of `main` (its first tensor), or with
// config.outputWeights, the weighted sum of the losses of the dict output's entries named
// there, each put in `named`, detached. `deferredBad` as computeLoss takes it.
torch::Tensor outputLoss(const LossConfig& config, const c10::IValue& output, const torch::Tensor& main, const torch::Tensor& target,
                         std::vector<std::pair<std::string, torch::Tensor>>& named, torch::Tensor* deferredBad = nullptr);
// Whether outputs are class scores and targets class indices, so accuracy means something.
bool countsCorrect(const LossConfig& config, const torch::Tensor& target);
// Correct top-1 predictions, and the targets scored (not ignoreIndex): samples, or pixels for dense targets.
std::pair<int64_t, int64_t> correctPredictions(const torch::Tensor& output, const torch::Tensor& target, int64_t ignoreIndex);

Napi::Value ComputeLoss(const Napi::CallbackInfo& info);

}  // namespace tl
