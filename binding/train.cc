// The fused training step: forward, loss, backward, clipping, sync and update in one job.
#include "train.h"

#include <cmath>
#include <optional>

#include "compat.h"
#include "ivalue.h"
#include "job.h"
#include "inference.h"
#include "layout.h"
#include "surgery.h"
#include "tensor.h"

namespace tl {
namespace {


std::optional<compat::AutocastScope> autocastFor(const std::string& amp, const torch::Device& device) {
  if (amp == "none") return std::nullopt;
  if (amp == "fp16" && !device.is_cuda())
    throw CodedError("TORCHLITE_AMP_UNSUPPORTED", "amp 'fp16' needs a CUDA model; on the CPU use amp 'bf16'");
  return std::optional<compat::AutocastScope>(std::in_place, device.type(), amp == "fp16" ? torch::kHalf : torch::kBFloat16);
}

// One host sync for all parameters (GradScaler's own step syncs once too).
bool gradsFinite(const OptimizerState& optimizer) {
  std::vector<torch::Tensor> finite;
  for (const torch::Tensor& param : optimizer.parameters())
    if (param.grad().defined()) finite.push_back(torch::isfinite(param.grad()).all());
  return finite.empty() || torch::stack(finite).all().item<bool>();
}

// Python's torch.nn.utils.clip_grad_norm_ (LibTorch 1.13's reads the norm back to the
// host to decide): the clamped coefficient multiplies every grad on the device, so
// clipping never waits for the GPU. `params` all have grads. Returns the total norm as a
// device scalar.
torch::Tensor clipGradNorm(const std::vector<torch::Tensor>& params, double maxNorm) {
  torch::NoGradGuard noGrad;
  if (params.empty()) return torch::zeros({});
  std::vector<torch::Tensor> norms;
  for (const torch::Tensor& param : params) norms.push_back(param.grad().norm(2));
  torch::Tensor total = torch::stack(norms).norm(2);
  torch::Tensor coefficient = torch::clamp(maxNorm / (total + 1e-6), c10::nullopt, 1.0);
  for (const torch::Tensor& param : params) param.grad().mul_(coefficient);
  return total;
}


StepOptions parseStepOptions(const Baton& baton) {
  StepOptions options;
  options.accumulate = baton.integer("accumulate");
  Napi::Value clip = baton.value("clipGradNorm");
  options.clipGradNorm = clip.IsNull() ? 0 : clip.As<Napi::Number>().DoubleValue();
  options.amp = baton.string("amp");
  options.throwOnNonFinite = baton.string("nonFinite") == "throw";
  options.readLoss = baton.boolean("readLoss");
  options.groups = parseGroupOptions(baton.value("groups"));
  options.sync = parseSyncOptions(baton.value("sync"));
  return options;
}

}  // namespace

StepResult trainStep(ModelState& model, OptimizerState& optimizer, const LossConfig& loss,
                     std::vector<c10::IValue> inputs, const torch::Tensor& target, const StepOptions& options) {
  if (optimizer.model.get() != &model)
    throw CodedError("TORCHLITE_BAD_ARGUMENT", "the optimizer was built for another model");
  optimizer.checkFresh();
  bool fp16 = options.amp == "fp16";
  // Grad and autocast modes are thread-local: they are set here, on the lane.
  torch::AutoGradMode enableGrad(true);
  torch::Tensor output, value;
  std::vector<std::pair<std::string, torch::Tensor>> named;  // a model-computed loss's parts
  const GroupPtr& group = options.sync.group;
  if (group && options.sync.buffers) {
    std::vector<torch::Tensor> buffers;
    for (const torch::Tensor& buffer : model.module.buffers()) buffers.push_back(buffer);
    if (!buffers.empty()) broadcastTensors(*group, buffers, 0);
  }
  guardNhwcBackward(model);
  prepareInputs(model, inputs);
  {
    auto autocast = autocastFor(options.amp, model.device);
    if (loss.kind == "model") {
      value = modelLoss(loss, runForward(model, std::move(inputs)), named);
    } else {
      c10::IValue out = runForward(model, std::move(inputs));
      output = firstTensor(out);
      value = outputLoss(loss, out, output, target, named, options.readLoss ? nullptr : &model.badTargets);
    }
  }
  StepResult result;
  if (options.readLoss && !named.empty()) {
    // One read back for every part.
    std::vector<torch::Tensor> parts;
    for (const auto& item : named) parts.push_back(item.second);
    torch::Tensor values = torch::stack(parts).to(torch::kCPU, torch::kDouble);
    for (size_t i = 0; i < named.size(); ++i) result.losses.emplace_back(named[i].first, values[static_cast<int64_t>(i)].item<double>());
  }
  if (!options.readLoss) {
    // No host sync: the loss joins a device-side sum read at the next readLoss step, and
    // non-finite losses and bad targets are only noticed then.
    model.lossSum = model.lossSum.defined() ? model.lossSum + value.detach() : value.detach().clone();
    model.lossCount += 1;
    result.loss = NAN;
  } else if (model.lossCount > 0) {
    if (model.badTargets.defined()) {
      int64_t bad = model.badTargets.item<int64_t>();
      model.badTargets = torch::Tensor();
      if (bad > 0) {
        model.lossSum = torch::Tensor();
        model.lossCount = 0;
        throw CodedError("TORCHLITE_BAD_TARGET", std::to_string(bad) +
                                                     " class indices were out of range in the steps since the loss was last read "
                                                     "(readLoss: false checks them on the device and ignores them); fix the labels");
      }
    }
    result.loss = ((model.lossSum + value.detach()) / static_cast<double>(model.lossCount + 1)).item<double>();
    result.lossSteps = model.lossCount + 1;
    model.lossSum = torch::Tensor();
    model.lossCount = 0;
  } else {
    result.loss = value.item<double>();
  }
  if (options.readLoss && countsCorrect(loss, target)) std::tie(result.correct, result.scored) = correctPredictions(output.detach(), target, loss.ignoreIndex);
  // Armed before the skip decision too: a skipping rank still sends its (zero) buckets.
  std::optional<OverlapScope> overlap;
  if (group && options.sync.overlap && optimizer.pending + 1 >= options.accumulate) overlap.emplace(armOverlap(group, optimizer, options.sync.bucketBytes));
  // With a single step's loss read, result.loss is this step's; after unread steps it is
  // a mean, so this step's own value decides whether to skip.
  double own = !options.readLoss ? 0 : result.lossSteps == 1 ? result.loss : value.item<double>();
  if (!std::isfinite(own)) {
    if (options.throwOnNonFinite && !group)
      throw CodedError("TORCH_NONFINITE_LOSS", "the loss is " + std::to_string(own) + "; the step was not applied");
    result.skipped = true;  // nothing of this micro-batch reaches the grads
    if (!group) return result;
    // A rank must not skip alone: the others would wait for it at the gradient sync. It
    // counts the micro-batch and tells them there.
    optimizer.poisoned = true;
  } else {
    torch::Tensor scaled = options.accumulate > 1 ? value / static_cast<double>(options.accumulate) : value;
    if (fp16) scaled = scaled * optimizer.lossScale;
    scaled.backward();
  }
  optimizer.pending += 1;
  if (optimizer.pending < options.accumulate) return result;
  // Synced before the overflow check and clipping, so every rank decides on the same grads.
  if (group && syncGradients(*group, optimizer, options.sync.bucketBytes)) {
    result.skipped = true;
    if (options.throwOnNonFinite)
      throw CodedError("TORCH_NONFINITE_LOSS", "a rank's loss was not finite since the last update; the update was skipped on every rank");
    return result;
  }

  double unscale = fp16 ? 1 / optimizer.lossScale : 1;
  if (fp16 && !gradsFinite(optimizer)) {
    // GradScaler: an overflow skips the update and backs the scale off.
    optimizer.clearGrads();
    optimizer.pending = 0;
    optimizer.lossScale *= 0.5;
    optimizer.growthTracker = 0;
    result.skipped = true;
    return result;
  }
  if (options.clipGradNorm > 0) {
    std::vector<torch::Tensor> withGrad;
    for (const torch::Tensor& param : optimizer.parameters())
      if (param.grad().defined()) withGrad.push_back(param);
    if (unscale != 1) {
      torch::NoGradGuard noGrad;
      for (torch::Tensor& param : withGrad) param.mutable_grad().mul_(unscale);
      unscale = 1;
    }
    torch::Tensor norm = clipGradNorm(withGrad, options.clipGradNorm);
    if (options.readLoss) result.gradNorm = norm.item<double>();
  }
  optimizer.step(unscale);
  result.stepped = true;
  if (fp16 && ++optimizer.growthTracker == 2000) {
    optimizer.lossScale *= 2;
    optimizer.growthTracker = 0;
  }
  return result;
}

namespace {

Napi::Object stepResultToJs(Napi::Env env, const StepResult& r) {
  Napi::Object result = Napi::Object::New(env);
  result.Set("loss", r.loss);
  if (r.lossSteps > 1) result.Set("lossSteps", static_cast<double>(r.lossSteps));
  if (r.correct >= 0) {
    result.Set("correct", static_cast<double>(r.correct));
    result.Set("scored", static_cast<double>(r.scored));
  }
  result.Set("skipped", r.skipped);
  result.Set("stepped", r.stepped);
  if (r.gradNorm >= 0) result.Set("gradNorm", r.gradNorm);
  if (!r.losses.empty()) {
    Napi::Object losses = Napi::Object::New(env);
    for (const auto& [name, value] : r.losses) losses.Set(name, value);
    result.Set("losses", losses);
  }
  return result;
}

}  // namespace

// info: [inputs, target] pairs as an array of batches, then the options. One job runs
// them all: for overhead-bound models the thread hand-off per job costs more than the
// step, so a batch of steps per hand-off is what beats Python's per-op dispatch. The
// lane lets waiting inference in between two steps.
Napi::Value ModelWrap::TrainStep(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    ModelPtr state = live();
    Napi::Array batches = info[0].As<Napi::Array>();
    Napi::Object options = info[1].As<Napi::Object>();
    Baton baton(options, "trainStep options");
    OptimizerPtr optimizer = OptimizerWrap::StateOf(env, baton.value("optimizer"));
    LossConfig loss = parseLoss(env, baton.object("loss"));
    StepOptions step = parseStepOptions(baton);
    // fit's windows: each step's group options, read off its schedule ahead of the job.
    std::vector<std::vector<GroupOptions>> perStep;
    Napi::Value windows = baton.value("groupsPerStep");
    if (!windows.IsNull()) {
      Napi::Array all = windows.As<Napi::Array>();
      for (uint32_t i = 0; i < all.Length(); ++i) perStep.push_back(parseGroupOptions(all.Get(i)));
      if (perStep.size() != batches.Length()) throw CodedError("TORCHLITE_BAD_ARGUMENT", "groupsPerStep needs one entry per batch");
    }
    std::vector<std::pair<std::vector<c10::IValue>, torch::Tensor>> work;
    for (uint32_t i = 0; i < batches.Length(); ++i) {
      Napi::Array batch = batches.Get(i).As<Napi::Array>();
      // A model that computes its own loss takes the targets among its inputs: no target here.
      Napi::Value target = batch.Get(1u);
      work.emplace_back(Inputs(env, *state, batch.Get(0u)), target.IsNull() ? torch::Tensor() : TensorWrap::From(env, target));
    }
    using Results = std::vector<StepResult>;
    return Job<Results>::StartSteps(
        env, {state->device, Priority::Training},
        [state, optimizer, loss, step, perStep, work = std::move(work)](std::optional<Results>& results) mutable {
          std::lock_guard<std::mutex> lock(state->mutex);
          if (!results) {
            // The group options as they were when trainStep was called (schedules write
            // them in JS between calls), so call order holds for them too.
            optimizer->setOptions(step.groups);
            results.emplace();
          }
          if (!perStep.empty()) optimizer->setOptions(perStep[results->size()]);
          auto& [inputs, target] = work[results->size()];
          results->push_back(trainStep(*state, *optimizer, loss, std::move(inputs), target, step));
          return results->size() < work.size();
        },
        [](Napi::Env env, Results& results) -> Napi::Value {
          Napi::Array array = Napi::Array::New(env, results.size());
          for (size_t i = 0; i < results.size(); ++i) array.Set(i, stepResultToJs(env, results[i]));
          return array;
        });
  });
}

}  // namespace tl
