// Model: a loaded TorchScript module and the JS handle on it.
#pragma once
#include <memory>
#include <map>
#include <mutex>

#include "common.h"

namespace tl {

struct ModelState {
  ModelState(torch::jit::Module module, torch::Device device) : module(std::move(module)), device(device) {}

  torch::jit::Module module;
  torch::Device device;
  bool traced = false;
  std::string metadata;  // JSON text stored by torchlite's save, "" when absent
  std::vector<std::string> warnings;  // traced constructs that load could not fix
  std::map<std::string, std::string> extras;  // other extra files asked for at load (checkpoint state)
  bool bnFrozenEval = true;           // BatchNorm policy 'frozen-eval' (else 'train')
  bool channelsLast = false;          // 4-D weights and inputs in NHWC (oneDNN/cuDNN fast paths)
  torch::Tensor lossSum;              // train losses not yet read back (readLoss: false)
  int64_t lossCount = 0;
  uint64_t generation = 0;            // bumped by every replace(), so optimizers recheck only then
  // Workers and JS-thread mutations (train/eval) take it, so a mode switch never
  // lands in the middle of a forward running on another thread.
  std::mutex mutex;
};
using ModelPtr = std::shared_ptr<ModelState>;

// Moves input tensors to the model's device (from pinned memory, without blocking the
// host, when that is CUDA) and into channels-last when the model uses it. Runs on the
// torch thread, inside a job.
void prepareInputs(const ModelState& state, std::vector<c10::IValue>& inputs);

class ModelWrap : public Napi::ObjectWrap<ModelWrap> {
 public:
  static Napi::Function Define(Napi::Env env);
  static Napi::Object Wrap(Napi::Env env, ModelPtr state);
  // The state behind a JS Model handle, or a coded error when it is not a live one.
  static ModelPtr StateOf(Napi::Env env, const Napi::Value& value);

  explicit ModelWrap(const Napi::CallbackInfo& info);
  void Finalize(Napi::Env env) override;

 private:
  static Napi::Value Load(const Napi::CallbackInfo& info);

  static std::vector<c10::IValue> Inputs(Napi::Env env, const ModelState& state, const Napi::Value& value);

  Napi::Value Forward(const Napi::CallbackInfo& info);
  Napi::Value ProbeGradients(const Napi::CallbackInfo& info);
  // Defined in train.cc, beside the step they run.
  Napi::Value TrainStep(const Napi::CallbackInfo& info);
  Napi::Value EvalBatch(const Napi::CallbackInfo& info);
  Napi::Value Predict(const Napi::CallbackInfo& info);
  Napi::Value To(const Napi::CallbackInfo& info);
  Napi::Value Modules(const Napi::CallbackInfo& info);
  Napi::Value Parameters(const Napi::CallbackInfo& info);
  Napi::Value Buffers(const Napi::CallbackInfo& info);
  Napi::Value StateDict(const Napi::CallbackInfo& info);
  Napi::Value SetTraining(const Napi::CallbackInfo& info);
  Napi::Value Replace(const Napi::CallbackInfo& info);
  Napi::Value SetRequiresGrad(const Napi::CallbackInfo& info);
  Napi::Value SetBatchNormPolicy(const Napi::CallbackInfo& info);
  Napi::Value Save(const Napi::CallbackInfo& info);
  Napi::Value LoadStateDict(const Napi::CallbackInfo& info);
  Napi::Value Extras(const Napi::CallbackInfo& info);
  Napi::Value SetChannelsLast(const Napi::CallbackInfo& info);
  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);

  ModelPtr live() const;
  void release(Napi::Env env);
  // Runs a synchronous method body with the model locked against its running jobs.
  template <class F>
  Napi::Value Locked(const Napi::CallbackInfo& info, F&& body) {
    return guard(info.Env(), [&]() -> Napi::Value {
      ModelPtr state = live();
      std::lock_guard<std::mutex> lock(state->mutex);
      return body(info.Env(), *state);
    });
  }


  ModelPtr state_;
  int64_t accountedBytes_ = 0;
};

}  // namespace tl
