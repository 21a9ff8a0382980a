// The fused training step and the evaluation passes, run on a lane under the model's
// mutex.
#pragma once
#include "distributed.h"
#include "loss.h"
#include "optimizer.h"

namespace tl {

struct StepOptions {
  int64_t accumulate = 1;
  double clipGradNorm = 0;  // 0: no clipping
  std::string amp = "none"; // none, bf16, fp16
  bool throwOnNonFinite = false;
  // Reading the loss waits for the device; without it the step is fully asynchronous and
  // the next read returns the mean of the losses since the last one.
  bool readLoss = true;
  std::vector<GroupOptions> groups;  // the optimizer's group options when the step was called
  SyncOptions sync;          // data-parallel: average grads over its group before updating
};

struct StepResult {
  double loss = 0;  // NaN when not read (readLoss: false)
  std::vector<std::pair<std::string, double>> losses;  // a model-computed loss's named parts, when read
  int64_t lossSteps = 1;  // how many steps `loss` averages
  int64_t correct = -1;  // -1 when the loss is not a classification loss
  int64_t scored = 0;    // the targets `correct` is out of
  bool skipped = false;
  bool stepped = false;
  double gradNorm = -1;  // -1 when not clipped
};

StepResult trainStep(ModelState& model, OptimizerState& optimizer, const LossConfig& loss,
                     std::vector<c10::IValue> inputs, const torch::Tensor& target, const StepOptions& options);

}  // namespace tl
