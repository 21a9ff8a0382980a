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
  // LoRA: the base weights as they were before lora.merge folded an adapter in, by the
  // wrapper's path, so unmerging restores them bit for bit.
  std::map<std::string, torch::Tensor> loraUnmerged;
  std::string bnPolicy = "frozen-eval";  // 'frozen-eval', 'train' or 'eval' (see applyBatchNormPolicy)
  bool channelsLast = false;          // 4-D weights and inputs in NHWC (oneDNN/cuDNN fast paths)
  bool layoutAutomatic = false;       // channels-last chosen by loadPretrained's 'auto' (CPU only)
  bool layoutOnTrial = false;         // ... and not yet through a forward
  torch::Tensor lossSum;              // train losses not yet read back (readLoss: false)
  int64_t lossCount = 0;
  torch::Tensor badTargets;           // out-of-range class indices met since then (a device count)
  uint64_t generation = 0;            // bumped by every replace(), so optimizers recheck only then
  uint64_t hazardGeneration = ~0ull;  // the generation nhwcHazard was found for
  std::string nhwcHazard;             // a layer that must not train in NHWC on the CPU, "" if none
  // Jobs hold it while they run a step. The JS thread only ever try-locks it (see
  // lockIdle): JS refuses synchronous methods while the model has jobs in flight, and a
  // method reaching a model that is busy anyway (another model copied in) must fail
  // with a code rather than block the event loop.
  std::mutex mutex;
};
using ModelPtr = std::shared_ptr<ModelState>;

// Locks a model for a synchronous method on the JS thread, or throws
// TORCHLITE_MODEL_BUSY when a job holds it.
std::unique_lock<std::mutex> lockIdle(ModelState& state, const char* what);

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
  static Napi::Value FromLayer(const Napi::CallbackInfo& info);
  Napi::Value InferenceCopy(const Napi::CallbackInfo& info);

  static std::vector<c10::IValue> Inputs(Napi::Env env, const ModelState& state, const Napi::Value& value,
                                         const std::string& method = "forward");

  Napi::Value Forward(const Napi::CallbackInfo& info);
  Napi::Value Call(const Napi::CallbackInfo& info);
  Napi::Value ProbeGradients(const Napi::CallbackInfo& info);
  // Defined in train.cc, beside the step it runs.
  Napi::Value TrainStep(const Napi::CallbackInfo& info);
  // Defined in inference.cc, with Forward, Call and InferenceCopy.
  Napi::Value EvalBatch(const Napi::CallbackInfo& info);
  Napi::Value Predict(const Napi::CallbackInfo& info);
  Napi::Value ForwardBatch(const Napi::CallbackInfo& info);
  Napi::Value To(const Napi::CallbackInfo& info);
  Napi::Value Modules(const Napi::CallbackInfo& info);
  Napi::Value Methods(const Napi::CallbackInfo& info);
  Napi::Value Parameters(const Napi::CallbackInfo& info);
  Napi::Value Buffers(const Napi::CallbackInfo& info);
  Napi::Value StateDict(const Napi::CallbackInfo& info);
  Napi::Value SetTraining(const Napi::CallbackInfo& info);
  Napi::Value Replace(const Napi::CallbackInfo& info);
  Napi::Value SetRequiresGrad(const Napi::CallbackInfo& info);
  Napi::Value SetBatchNormPolicy(const Napi::CallbackInfo& info);
  Napi::Value Save(const Napi::CallbackInfo& info);
  Napi::Value LoadStateDict(const Napi::CallbackInfo& info);
  Napi::Value ResetParameters(const Napi::CallbackInfo& info);
  Napi::Value Extras(const Napi::CallbackInfo& info);
  // Defined in layout.cc.
  Napi::Value SetChannelsLast(const Napi::CallbackInfo& info);
  // Defined in weights.cc: tensors by name from and to safetensors files, and the zoo's placeholders.
  Napi::Value LoadWeights(const Napi::CallbackInfo& info);
  Napi::Value SaveWeights(const Napi::CallbackInfo& info);
  Napi::Value Materialize(const Napi::CallbackInfo& info);
  Napi::Value Reshape(const Napi::CallbackInfo& info);
  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);

  ModelPtr live() const;
  void release(Napi::Env env);
  // Runs a synchronous method body with the model locked, refusing while a job runs.
  template <class F>
  Napi::Value Locked(const Napi::CallbackInfo& info, F&& body) {
    return guard(info.Env(), [&]() -> Napi::Value {
      ModelPtr state = live();
      auto lock = lockIdle(*state, "this model");
      return body(info.Env(), *state);
    });
  }


  ModelPtr state_;
  int64_t accountedBytes_ = 0;
};

}  // namespace tl
