// Inference: a model's forward and exported methods without gradients, predict and the
// evaluation batches, with the hints that explain the failures new users meet most.
#pragma once
#include "model.h"
#include "surgery.h"

namespace tl {

// The model's forward. The failures new users meet most (a float64 input, a missing batch
// dimension, the wrong number of channels) are rethrown with what to change: LibTorch's
// own message names an inner layer ("running_mean should contain 32 elements not 16").
c10::IValue runForward(ModelState& state, std::vector<c10::IValue> inputs);

// A method of the model by name, or TORCHLITE_NO_SUCH_METHOD listing the ones it has.
torch::jit::Method methodOf(const ModelState& state, const std::string& name);

// Models that return a tuple (logits, extras) train and predict on their first tensor, as
// torchvision's Inception does with its aux logits; a dict output, on its "out" entry.
torch::Tensor firstTensor(const c10::IValue& value);

// Runs `body` with the model in eval mode and without gradients, and restores the mode (and
// BatchNorm policy) after, however `body` ends.
template <class F>
auto inEvalMode(ModelState& model, F&& body) -> decltype(body()) {
  bool wasTraining = model.module.is_training();
  model.module.eval();
  struct Restore {
    ModelState& model;
    bool training;
    ~Restore() {
      model.module.train(training);
      applyBatchNormPolicy(model);
    }
  } restore{model, wasTraining};
  torch::NoGradGuard noGrad;  // not InferenceMode: see ModelWrap::Forward
  return body();
}

}  // namespace tl
