// Optimizer: SGD, Adam and AdamW written out as PyTorch's multi-tensor (`foreach`) code
// does them, so results match Python step for step, frozen parameters are skipped exactly
// as there (undefined grad), and state is keyed by parameter name across LibTorch versions.
#pragma once
#include "model.h"

namespace tl {

struct OverlapState;  // distributed/gradsync.cc

// Every field comes from JS, which owns the defaults (optim.ts's DEFAULTS).
struct GroupOptions {
  double lr = 0;
  double momentum = 0;
  double dampening = 0;
  double weightDecay = 0;
  double beta1 = 0;
  double beta2 = 0;
  double eps = 0;
  bool nesterov = false;
  bool amsgrad = false;
};

struct ParamSlot {
  std::string name;
  torch::Tensor param;
  int64_t step = 0;
  torch::Tensor momentum;    // SGD momentum_buffer
  torch::Tensor expAvg;      // Adam(W) exp_avg
  torch::Tensor expAvgSq;    // Adam(W) exp_avg_sq
  torch::Tensor maxExpAvgSq; // Adam(W) max_exp_avg_sq (amsgrad)
};

struct ParamGroup {
  GroupOptions options;
  std::vector<ParamSlot> slots;
};

// Lives in the model's mutex domain: touched only while its model's mutex is held.
struct OptimizerState {
  enum class Kind { SGD, Adam, AdamW };
  Kind kind = Kind::SGD;
  ModelPtr model;
  std::vector<ParamGroup> groups;
  int64_t pending = 0;  // micro-batches accumulated since the last update
  // Data-parallel: a micro-batch since the last update had a non-finite loss and was left
  // out here; the ranks learn of it at the gradient sync and skip the update together.
  bool poisoned = false;
  uint64_t checkedGeneration = UINT64_MAX;  // the model generation last found fresh
  // fp16 GradScaler state, with PyTorch's defaults (init 2^16, growth 2 every 2000 steps, backoff 0.5).
  double lossScale = 65536;
  int64_t growthTracker = 0;
  // Data-parallel with overlap: the hooks on this optimizer's parameters and the sync armed
  // for the current step (see armOverlap).
  std::shared_ptr<OverlapState> overlap;

  void addGroup(const std::vector<std::string>& names, const GroupOptions& options);
  // Takes the options JS holds for each group (sent with every job); empty keeps them.
  void setOptions(const std::vector<GroupOptions>& options);
  // Throws when replace() removed a parameter this optimizer trains.
  void checkFresh();
  std::vector<torch::Tensor> parameters() const;
  // Applies one update to every parameter with a grad (grads multiplied by gradScale
  // first), then resets all grads to undefined.
  void step(double gradScale = 1);
  void clearGrads();
};
using OptimizerPtr = std::shared_ptr<OptimizerState>;

// Group options as JS sends them with a job: an array of option objects.
std::vector<GroupOptions> parseGroupOptions(const Napi::Value& value);

class OptimizerWrap : public Napi::ObjectWrap<OptimizerWrap> {
 public:
  static Napi::Function Define(Napi::Env env);
  static OptimizerPtr StateOf(Napi::Env env, const Napi::Value& value);

  explicit OptimizerWrap(const Napi::CallbackInfo& info);

 private:
  static Napi::Value Create(const Napi::CallbackInfo& info);

  Napi::Value AddGroup(const Napi::CallbackInfo& info);
  Napi::Value Groups(const Napi::CallbackInfo& info);
  Napi::Value StateDict(const Napi::CallbackInfo& info);
  Napi::Value LoadStateDict(const Napi::CallbackInfo& info);
  Napi::Value Flush(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);

  OptimizerPtr live() const;
  // Runs a synchronous method body with the optimizer's model locked, refusing while it
  // runs a job.
  template <class F>
  Napi::Value Locked(const Napi::CallbackInfo& info, F&& body) {
    return guard(info.Env(), [&]() -> Napi::Value {
      OptimizerPtr state = live();
      auto lock = lockIdle(*state->model, "the optimizer's model");
      return body(info.Env(), *state);
    });
  }

  OptimizerPtr state_;
};

}  // namespace tl
