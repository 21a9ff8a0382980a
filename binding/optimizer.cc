// SGD, Adam and AdamW as PyTorch's foreach code runs them, with state keyed by parameter name.
#include "optimizer.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "addon.h"
#include "compat.h"
#include "distributed.h"
#include "job.h"
#include "tensor.h"

namespace tl {
namespace {

using Kind = OptimizerState::Kind;

Kind parseKind(const std::string& name) {
  if (name == "sgd") return Kind::SGD;
  if (name == "adam") return Kind::Adam;
  if (name == "adamw") return Kind::AdamW;
  throw CodedError("TORCHLITE_BAD_ARGUMENT", "unknown optimizer '" + name + "'");
}

// Every field comes from JS (optim.ts owns the defaults of each optimizer).
GroupOptions parseOptions(const Baton& baton) {
  GroupOptions options;
  options.lr = baton.number("lr");
  options.momentum = baton.number("momentum");
  options.dampening = baton.number("dampening");
  options.weightDecay = baton.number("weightDecay");
  options.beta1 = baton.number("beta1");
  options.beta2 = baton.number("beta2");
  options.eps = baton.number("eps");
  options.nesterov = baton.boolean("nesterov");
  options.amsgrad = baton.boolean("amsgrad");
  return options;
}

Napi::Object optionsToJs(Napi::Env env, const GroupOptions& o) {
  Napi::Object object = Napi::Object::New(env);
  object.Set("lr", o.lr);
  object.Set("momentum", o.momentum);
  object.Set("dampening", o.dampening);
  object.Set("weightDecay", o.weightDecay);
  object.Set("beta1", o.beta1);
  object.Set("beta2", o.beta2);
  object.Set("eps", o.eps);
  object.Set("nesterov", o.nesterov);
  object.Set("amsgrad", o.amsgrad);
  return object;
}

std::vector<std::string> toNames(const Napi::Value& value) {
  Napi::Array array = value.As<Napi::Array>();
  std::vector<std::string> names;
  for (uint32_t i = 0; i < array.Length(); ++i) names.push_back(array.Get(i).As<Napi::String>().Utf8Value());
  return names;
}

// The updates work on a group's slots that have grads, all at once, as PyTorch's
// multi-tensor (`foreach`) optimizers do: on a GPU each line is a few fused kernels for the
// whole list instead of one per parameter (ResNet-50 has 161), and on the CPU LibTorch
// runs the same per-tensor ops as the single-tensor code, so results are bit for bit those.
using Slots = std::vector<ParamSlot*>;

template <class F>
std::vector<torch::Tensor> each(const Slots& slots, F&& field) {
  std::vector<torch::Tensor> out;
  out.reserve(slots.size());
  for (ParamSlot* slot : slots) out.push_back(field(*slot));
  return out;
}

std::vector<torch::Tensor> paramsOf(const Slots& slots) {
  return each(slots, [](ParamSlot& s) { return s.param; });
}

void sgdUpdate(const Slots& slots, const GroupOptions& o, std::vector<torch::Tensor> grads) {
  std::vector<torch::Tensor> params = paramsOf(slots);
  if (o.weightDecay != 0) grads = at::_foreach_add(grads, params, o.weightDecay);
  if (o.momentum != 0) {
    bool started = std::all_of(slots.begin(), slots.end(), [](const ParamSlot* s) { return s->momentum.defined(); });
    if (started) {
      std::vector<torch::Tensor> buffers = each(slots, [](ParamSlot& s) { return s.momentum; });
      at::_foreach_mul_(buffers, o.momentum);
      at::_foreach_add_(buffers, grads, 1 - o.dampening);
    } else {
      // The first step of some: their buffer starts as a copy of the grad (PyTorch's rule).
      for (size_t i = 0; i < slots.size(); ++i) {
        ParamSlot& slot = *slots[i];
        if (!slot.momentum.defined())
          slot.momentum = grads[i].clone().detach();
        else
          slot.momentum.mul_(o.momentum).add_(grads[i], 1 - o.dampening);
      }
    }
    std::vector<torch::Tensor> buffers = each(slots, [](ParamSlot& s) { return s.momentum; });
    if (o.nesterov)
      grads = at::_foreach_add(grads, buffers, o.momentum);
    else
      grads = std::move(buffers);
  }
  at::_foreach_add_(params, grads, -o.lr);
}

void adamUpdate(const Slots& slots, const GroupOptions& o, std::vector<torch::Tensor> grads, bool decoupled) {
  for (ParamSlot* slot : slots) {
    if (!slot->expAvg.defined()) {
      slot->expAvg = torch::zeros_like(slot->param, torch::MemoryFormat::Preserve);
      slot->expAvgSq = torch::zeros_like(slot->param, torch::MemoryFormat::Preserve);
    }
    if (o.amsgrad && !slot->maxExpAvgSq.defined()) slot->maxExpAvgSq = torch::zeros_like(slot->param, torch::MemoryFormat::Preserve);
    slot->step += 1;
  }
  std::vector<torch::Tensor> params = paramsOf(slots);
  if (decoupled)
    at::_foreach_mul_(params, 1 - o.lr * o.weightDecay);
  else if (o.weightDecay != 0)
    grads = at::_foreach_add(grads, params, o.weightDecay);
  std::vector<torch::Tensor> expAvg = each(slots, [](ParamSlot& s) { return s.expAvg; });
  std::vector<torch::Tensor> expAvgSq = each(slots, [](ParamSlot& s) { return s.expAvgSq; });
  compat::decayFirstMoment(expAvg, grads, o.beta1);
  at::_foreach_mul_(expAvgSq, o.beta2);
  at::_foreach_addcmul_(expAvgSq, grads, grads, 1 - o.beta2);
  // Parameters that joined later have taken fewer steps: bias corrections are per slot.
  std::vector<at::Scalar> stepSizes, biasCorrection2Sqrt;
  for (ParamSlot* slot : slots) {
    double step = static_cast<double>(slot->step);
    stepSizes.emplace_back(-o.lr / (1 - std::pow(o.beta1, step)));
    biasCorrection2Sqrt.emplace_back(std::sqrt(1 - std::pow(o.beta2, step)));
  }
  std::vector<torch::Tensor> denom;
  if (o.amsgrad) {
    for (ParamSlot* slot : slots) torch::maximum_out(slot->maxExpAvgSq, slot->maxExpAvgSq, slot->expAvgSq);
    denom = at::_foreach_sqrt(each(slots, [](ParamSlot& s) { return s.maxExpAvgSq; }));
  } else {
    denom = at::_foreach_sqrt(expAvgSq);
  }
  at::_foreach_div_(denom, biasCorrection2Sqrt);
  at::_foreach_add_(denom, o.eps);
  at::_foreach_addcdiv_(params, expAvg, denom, stepSizes);
}

}  // namespace

std::vector<GroupOptions> parseGroupOptions(const Napi::Value& value) {
  std::vector<GroupOptions> result;
  if (!value.IsArray()) return result;
  Napi::Array array = value.As<Napi::Array>();
  for (uint32_t i = 0; i < array.Length(); ++i) result.push_back(parseOptions(Baton(array.Get(i).As<Napi::Object>(), "group options")));
  return result;
}

void OptimizerState::setOptions(const std::vector<GroupOptions>& options) {
  if (options.empty()) return;
  if (options.size() != groups.size())
    throw CodedError("TORCHLITE_BAD_STATE", "the optimizer has " + std::to_string(groups.size()) + " param groups but " +
                                                std::to_string(options.size()) + " sets of options were sent");
  for (size_t i = 0; i < options.size(); ++i) groups[i].options = options[i];
}

void OptimizerState::addGroup(const std::vector<std::string>& names, const GroupOptions& options) {
  std::set<std::string> taken;
  for (const ParamGroup& group : groups)
    for (const ParamSlot& slot : group.slots) taken.insert(slot.name);
  std::map<std::string, torch::Tensor> byName;
  for (const auto& item : model->module.named_parameters()) byName.emplace(item.name, item.value);
  ParamGroup group{options, {}};
  for (const std::string& name : names) {
    auto found = byName.find(name);
    if (found == byName.end()) throw CodedError("TORCHLITE_NO_MATCH", "the model has no parameter '" + name + "'");
    if (!taken.insert(name).second)
      throw CodedError("TORCHLITE_BAD_ARGUMENT", "parameter '" + name + "' is already in another param group");
    group.slots.push_back(ParamSlot{name, found->second});
  }
  groups.push_back(std::move(group));
}

void OptimizerState::checkFresh() {
  if (checkedGeneration == model->generation) return;
  std::map<std::string, const c10::TensorImpl*> current;
  for (const auto& item : model->module.named_parameters()) current.emplace(item.name, item.value.unsafeGetTensorImpl());
  for (const ParamGroup& group : groups) {
    for (const ParamSlot& slot : group.slots) {
      auto found = current.find(slot.name);
      if (found == current.end() || found->second != slot.param.unsafeGetTensorImpl())
        throw CodedError("TORCHLITE_STALE_OPTIMIZER",
                         "the optimizer trains '" + slot.name +
                             "', which replace() removed from the model; create the optimizer after replacing modules");
    }
  }
  checkedGeneration = model->generation;
}

std::vector<torch::Tensor> OptimizerState::parameters() const {
  std::vector<torch::Tensor> params;
  for (const ParamGroup& group : groups)
    for (const ParamSlot& slot : group.slots) params.push_back(slot.param);
  return params;
}

void OptimizerState::step(double gradScale) {
  torch::NoGradGuard noGrad;
  for (ParamGroup& group : groups) {
    // No grad means frozen or unused in this step: PyTorch skips those entirely, so
    // momentum and weight decay never move them.
    Slots slots;
    for (ParamSlot& slot : group.slots)
      if (slot.param.grad().defined()) slots.push_back(&slot);
    if (slots.empty()) continue;
    std::vector<torch::Tensor> grads = each(slots, [](ParamSlot& s) { return s.param.grad(); });
    if (gradScale != 1) grads = at::_foreach_mul(grads, gradScale);
    if (kind == Kind::SGD)
      sgdUpdate(slots, group.options, std::move(grads));
    else
      adamUpdate(slots, group.options, std::move(grads), kind == Kind::AdamW);
  }
  clearGrads();
  pending = 0;
}

void OptimizerState::clearGrads() {
  // Undefined, not zero-filled (LibTorch 1.13's zero_grad() fills zeros): a zero grad
  // would still move a parameter through momentum and weight decay.
  for (const ParamGroup& group : groups)
    for (const ParamSlot& slot : group.slots) {
      torch::Tensor param = slot.param;
      param.mutable_grad() = torch::Tensor();
    }
}

Napi::Function OptimizerWrap::Define(Napi::Env env) {
  return DefineClass(env, "NativeOptimizer",
                     {
                         StaticMethod<&OptimizerWrap::Create>("create"),
                         InstanceMethod<&OptimizerWrap::AddGroup>("addGroup"),
                         InstanceMethod<&OptimizerWrap::Groups>("groups"),
                         InstanceMethod<&OptimizerWrap::StateDict>("stateDict"),
                         InstanceMethod<&OptimizerWrap::LoadStateDict>("loadStateDict"),
                         InstanceMethod<&OptimizerWrap::Flush>("flush"),
                         InstanceMethod<&OptimizerWrap::Dispose>("dispose"),
                     });
}

OptimizerPtr OptimizerWrap::StateOf(Napi::Env env, const Napi::Value& value) {
  return unwrapInstance<OptimizerWrap>(env, value, addonData(env).optimizerClass, "an Optimizer")->live();
}

OptimizerWrap::OptimizerWrap(const Napi::CallbackInfo& info)
    : Napi::ObjectWrap<OptimizerWrap>(info),
      state_(takeExternal<OptimizerPtr>(info, "Optimizer cannot be constructed directly; use optim.sgd/adam/adamw")) {}

OptimizerPtr OptimizerWrap::live() const {
  if (!state_) throw CodedError("TORCHLITE_DISPOSED", "Optimizer has been disposed");
  return state_;
}

Napi::Value OptimizerWrap::Create(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    auto state = std::make_shared<OptimizerState>();
    state->model = ModelWrap::StateOf(env, info[0]);
    state->kind = parseKind(info[1].As<Napi::String>().Utf8Value());
    Napi::Array groups = info[2].As<Napi::Array>();
    // No lock: jobs never change which parameters a model has (only replace() does, on
    // this same JS thread), so an optimizer can be made while a job (a data-parallel
    // broadcast, a forward) runs.
    for (uint32_t i = 0; i < groups.Length(); ++i) {
      Napi::Object group = groups.Get(i).As<Napi::Object>();
      state->addGroup(toNames(group.Get("names")), parseOptions(Baton(group.Get("options").As<Napi::Object>(), "group options")));
    }
    return addonData(env).optimizerClass.New({Napi::External<OptimizerPtr>::New(env, &state)});
  });
}

Napi::Value OptimizerWrap::AddGroup(const Napi::CallbackInfo& info) {
  return Locked(info, [&](Napi::Env env, OptimizerState& state) {
    state.addGroup(toNames(info[0]), parseOptions(Baton(info[1].As<Napi::Object>(), "group options")));
    return env.Undefined();
  });
}

// Unlocked: JS reads the groups only when it made them (at creation, in addParamGroup),
// before any step of this optimizer can be in flight; another job on the model (a
// broadcast, a forward) does not touch them.
Napi::Value OptimizerWrap::Groups(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Napi::Env env = info.Env();
    OptimizerState& state = *live();
    Napi::Array result = Napi::Array::New(env, state.groups.size());
    for (size_t i = 0; i < state.groups.size(); ++i) {
      Napi::Object group = optionsToJs(env, state.groups[i].options);
      Napi::Array names = Napi::Array::New(env, state.groups[i].slots.size());
      for (size_t j = 0; j < state.groups[i].slots.size(); ++j) names.Set(j, state.groups[i].slots[j].name);
      group.Set("params", names);
      result.Set(i, group);
    }
    return result;
  });
}

Napi::Value OptimizerWrap::StateDict(const Napi::CallbackInfo& info) {
  return Locked(info, [&](Napi::Env env, OptimizerState& state) {
    Napi::Object result = Napi::Object::New(env);
    Napi::Object perParam = Napi::Object::New(env);
    for (const ParamGroup& group : state.groups) {
      for (const ParamSlot& slot : group.slots) {
        Napi::Object entry = Napi::Object::New(env);
        entry.Set("step", static_cast<double>(slot.step));
        // Copies: a checkpoint must not change when training goes on.
        auto put = [&](const char* key, const torch::Tensor& tensor) {
          if (tensor.defined()) entry.Set(key, TensorWrap::Wrap(env, tensor.detach().clone()));
        };
        put("momentum_buffer", slot.momentum);
        put("exp_avg", slot.expAvg);
        put("exp_avg_sq", slot.expAvgSq);
        put("max_exp_avg_sq", slot.maxExpAvgSq);
        perParam.Set(slot.name, entry);
      }
    }
    result.Set("state", perParam);
    result.Set("pending", static_cast<double>(state.pending));
    return result;
  });
}

Napi::Value OptimizerWrap::LoadStateDict(const Napi::CallbackInfo& info) {
  return Locked(info, [&](Napi::Env env, OptimizerState& state) {
    Napi::Object perParam = info[0].As<Napi::Object>();
    torch::NoGradGuard noGrad;
    // Every slot is built and checked before any is replaced, so a bad dict leaves the
    // optimizer as it was.
    std::vector<std::vector<ParamSlot>> loaded;
    for (const ParamGroup& group : state.groups) {
      std::vector<ParamSlot>& slots = loaded.emplace_back();
      for (const ParamSlot& current : group.slots) {
        ParamSlot& slot = slots.emplace_back(ParamSlot{current.name, current.param});
        Napi::Value value = perParam.Get(slot.name);
        if (!value.IsObject()) continue;
        Napi::Object entry = value.As<Napi::Object>();
        if (!entry.Get("step").IsNumber())
          throw CodedError("TORCHLITE_BAD_STATE", "optimizer state of '" + slot.name + "' has no numeric `step`");
        slot.step = entry.Get("step").As<Napi::Number>().Int64Value();
        auto take = [&](const char* key, torch::Tensor& out) {
          if (!entry.Get(key).IsObject()) return;
          torch::Tensor tensor = TensorWrap::From(env, entry.Get(key));
          if (tensor.sizes() != slot.param.sizes())
            throw CodedError("TORCHLITE_BAD_STATE", "optimizer state '" + std::string(key) + "' of '" + slot.name +
                                                        "' has shape " + c10::str(tensor.sizes()) + " but the parameter has " +
                                                        c10::str(slot.param.sizes()));
          out = tensor.to(slot.param.device(), slot.param.scalar_type()).clone();
        };
        take("momentum_buffer", slot.momentum);
        take("exp_avg", slot.expAvg);
        take("exp_avg_sq", slot.expAvgSq);
        take("max_exp_avg_sq", slot.maxExpAvgSq);
      }
    }
    for (size_t i = 0; i < loaded.size(); ++i) state.groups[i].slots = std::move(loaded[i]);
    state.pending = info[1].As<Napi::Number>().Int64Value();
    return env.Undefined();
  });
}

Napi::Value OptimizerWrap::Flush(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    OptimizerPtr state = live();
    int64_t window = info[0].As<Napi::Number>().Int64Value();
    std::vector<GroupOptions> groups = parseGroupOptions(info[1]);
    SyncOptions sync = parseSyncOptions(info[2]);
    return Job<bool>::Start(
        env, {state->model->device, Priority::Training},
        [state, window, groups, sync] {
          std::lock_guard<std::mutex> lock(state->model->mutex);
          state->setOptions(groups);
          // Every rank has run as many micro-batches (the distributed loader gives each the
          // same number), so all of them sync here or none does.
          if (state->pending == 0) return false;
          state->checkFresh();
          if (sync.group && syncGradients(*sync.group, *state, sync.bucketBytes)) return false;
          // Each micro-batch loss was divided by the full window; a partial window of k
          // must be averaged over k instead.
          state->step(static_cast<double>(window) / static_cast<double>(state->pending));
          return true;
        },
        [](Napi::Env env, bool& stepped) -> Napi::Value { return Napi::Boolean::New(env, stepped); });
  });
}

Napi::Value OptimizerWrap::Dispose(const Napi::CallbackInfo& info) {
  state_.reset();
  return info.Env().Undefined();
}

}  // namespace tl
