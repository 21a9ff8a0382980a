// LoRA adapters (Hu et al. 2021) built as Hugging Face PEFT builds them: a wrapper in place
// of a Linear or Conv2d that keeps it as `base_layer` and holds each named adapter's
// `lora_A.<name>` and `lora_B.<name>`, so parameter names match PEFT's.
#pragma once
#include "model.h"

namespace tl {

// Whether `module` is a wrapper buildLora made.
bool isLoraLayer(const torch::jit::Module& module);

// The wrapper for a "lora" layer spec around the module now at `path`: a Linear or Conv2d, or
// a wrapper already, whose base and adapters the new one keeps beside the adapter added. With
// `remove`, the wrapper without that adapter, or the base module once none is left.
torch::jit::Module buildLora(Napi::Env env, const Napi::Object& spec, const std::string& path, const ModelState& target);

// Jobs on a model's lane, under its lock: which adapter the wrappers run (`""`: none);
// folding one into the base weights; restoring the base weights exactly.
Napi::Value LoraUse(const Napi::CallbackInfo& info);
Napi::Value LoraMerge(const Napi::CallbackInfo& info);
Napi::Value LoraUnmerge(const Napi::CallbackInfo& info);

// The model's wrappers, by path.
std::vector<std::pair<std::string, torch::jit::Module>> loraWrappers(const torch::jit::Module& root);

// Throws TORCHLITE_NO_MATCH unless some wrapper holds adapter `name`, listing those there are.
void requireAdapter(const ModelState& state, const std::string& name);

// The adapter a request names in its options (`""`: the active one).
std::string requestAdapter(const Napi::Value& options);

// Runs `body` with every wrapper set to run `adapter` (unless it is empty), restoring what
// they ran after, however `body` ends: a request that names its adapter sees that one from
// start to end (the caller holds the model's lock).
template <class F>
auto withAdapter(ModelState& state, const std::string& adapter, F&& body) -> decltype(body()) {
  if (adapter.empty()) return body();
  requireAdapter(state, adapter);
  std::vector<std::pair<torch::jit::Module, c10::IValue>> previous;
  for (auto& [path, wrapper] : loraWrappers(state.module)) {
    previous.emplace_back(wrapper, wrapper.attr("active"));
    wrapper.setattr("active", adapter);
  }
  struct Restore {
    std::vector<std::pair<torch::jit::Module, c10::IValue>>& previous;
    ~Restore() {
      for (auto& [wrapper, value] : previous) wrapper.setattr("active", value);
    }
  } restore{previous};
  return body();
}

}  // namespace tl
