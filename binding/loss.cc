// Loss functions with PyTorch semantics, and the target checks before them.
#include "loss.h"

#include "job.h"
#include "tensor.h"

namespace tl {
namespace {

namespace F = torch::nn::functional;

std::string shapeText(c10::IntArrayRef shape) { return c10::str(shape); }

[[noreturn]] void badTarget(const std::string& message) { throw CodedError("TORCHLITE_BAD_TARGET", message); }

// PyTorch's reduction options differ per functional; they all take one of these.
template <class Options>
Options withReduction(Options options, const std::string& reduction) {
  if (reduction == "sum") return options.reduction(torch::kSum);
  if (reduction == "none") return options.reduction(torch::kNone);
  return options.reduction(torch::kMean);
}

torch::Tensor classTargets(const LossConfig& config, const torch::Tensor& output, const torch::Tensor& target,
                           torch::Tensor* deferredBad) {
  if (output.dim() < 2) badTarget(config.kind + " expects outputs of shape [N, C, ...] but received " + shapeText(output.sizes()));
  std::vector<int64_t> expected = output.sizes().vec();
  expected.erase(expected.begin() + 1);
  if (target.sizes().vec() != expected)
    badTarget(config.kind + " expects class-index targets of shape " + shapeText(expected) + " for outputs " +
              shapeText(output.sizes()) + " but received " + shapeText(target.sizes()));
  torch::Tensor indices = target.to(torch::kLong);
  int64_t classes = output.size(1);
  if (indices.numel() == 0) return indices;
  if (deferredBad != nullptr) {
    torch::Tensor bad = indices.ne(config.ignoreIndex).logical_and(indices.lt(0).logical_or(indices.ge(classes)));
    torch::Tensor count = bad.sum();
    *deferredBad = deferredBad->defined() ? *deferredBad + count : count;
    return torch::where(bad, torch::full({}, config.ignoreIndex, indices.options()), indices);
  }
  // One reduction on the common path; the masks below only run when something is off.
  auto [low, high] = torch::aminmax(indices);
  if (low.item<int64_t>() >= 0 && high.item<int64_t>() < classes) return indices;
  torch::Tensor valid = indices.ne(config.ignoreIndex);
  torch::Tensor bad = valid.logical_and(indices.lt(0).logical_or(indices.ge(classes)));
  if (bad.any().item<bool>()) {
    int64_t at = bad.flatten().nonzero()[0][0].item<int64_t>();
    badTarget("class index " + std::to_string(indices.flatten()[at].item<int64_t>()) + " at target position " +
              std::to_string(at) + " is out of range for " + std::to_string(classes) + " classes");
  }
  return indices;
}

// Labels made with tensor([0, 1, 2]) are float32, its default; class indices must be int64.
std::string int64Hint(const LossConfig& config, const torch::Tensor& output, const torch::Tensor& target) {
  return config.kind + " expects class indices of dtype int64 but received " + dtypeName(target.scalar_type()) + " targets of shape " +
         shapeText(target.sizes()) + " for outputs " + shapeText(output.sizes()) +
         "; make them with tensor(BigInt64Array.from(labels, BigInt)) or tensor(labels, undefined, { dtype: 'int64' })";
}

void sameShape(const LossConfig& config, const torch::Tensor& output, const torch::Tensor& target) {
  // PyTorch would broadcast [N] against [N, 1] with only a warning: a classic silent bug.
  if (output.sizes() != target.sizes())
    badTarget(config.kind + " expects a target of the output's shape " + shapeText(output.sizes()) +
              " but received " + shapeText(target.sizes()));
}

torch::Tensor floatTarget(const LossConfig& config, const torch::Tensor& output, const torch::Tensor& target) {
  sameShape(config, output, target);
  return target.to(output.scalar_type());
}

// A record of names to numbers (null: none).
std::map<std::string, double> weightsOf(const Napi::Value& value) {
  std::map<std::string, double> weights;
  if (value.IsNull()) return weights;
  Napi::Object record = value.As<Napi::Object>();
  Napi::Array names = record.GetPropertyNames();
  for (uint32_t i = 0; i < names.Length(); ++i) {
    std::string name = names.Get(i).As<Napi::String>().Utf8Value();
    weights[name] = record.Get(name).As<Napi::Number>().DoubleValue();
  }
  return weights;
}

}  // namespace

LossConfig parseLoss(Napi::Env env, const Baton& spec) {
  LossConfig config;
  config.kind = spec.string("kind");
  config.classifies = spec.boolean("classifies");
  config.reduction = spec.string("reduction");
  config.labelSmoothing = spec.number("labelSmoothing");
  config.ignoreIndex = spec.integer("ignoreIndex");
  config.beta = spec.number("beta");
  config.delta = spec.number("delta");
  config.lossWeights = weightsOf(spec.value("lossWeights"));
  config.outputWeights = weightsOf(spec.value("outputWeights"));
  Napi::Value weight = spec.value("weight"), posWeight = spec.value("posWeight");
  if (!weight.IsNull()) config.weight = TensorWrap::From(env, weight);
  if (!posWeight.IsNull()) config.posWeight = TensorWrap::From(env, posWeight);
  return config;
}

torch::Tensor computeLoss(const LossConfig& config, const torch::Tensor& rawOutput, torch::Tensor target,
                          torch::Tensor* deferredBad) {
  // Losses run in float32 even under autocast, as PyTorch's autocast policy does.
  torch::Tensor output = rawOutput.is_floating_point() && rawOutput.scalar_type() != torch::kDouble
                             ? rawOutput.to(torch::kFloat)
                             : rawOutput;
  target = target.to(output.device());
  torch::Tensor weight = config.weight.defined() ? config.weight.to(output.device(), output.scalar_type()) : torch::Tensor();
  if (weight.defined() && output.dim() >= 2 && weight.numel() != output.size(1))
    badTarget(config.kind + " has a class weight of " + std::to_string(weight.numel()) + " entries for " +
              std::to_string(output.size(1)) + " classes");
  if (config.kind == "crossEntropy") {
    auto options = withReduction(F::CrossEntropyFuncOptions(), config.reduction)
                       .ignore_index(config.ignoreIndex)
                       .label_smoothing(config.labelSmoothing);
    if (weight.defined()) options = options.weight(weight);
    // Floating targets of the output's shape are class probabilities (soft labels).
    if (target.is_floating_point() && output.dim() >= 2 && target.dim() == output.dim() - 1) badTarget(int64Hint(config, output, target));
    torch::Tensor t = target.is_floating_point() ? floatTarget(config, output, target) : classTargets(config, output, target, deferredBad);
    return F::cross_entropy(output, t, options);
  }
  if (config.kind == "nll") {
    if (target.is_floating_point()) badTarget(int64Hint(config, output, target));
    auto options = withReduction(F::NLLLossFuncOptions(), config.reduction).ignore_index(config.ignoreIndex);
    if (weight.defined()) options = options.weight(weight);
    return F::nll_loss(output, classTargets(config, output, target, deferredBad), options);
  }
  torch::Tensor t = floatTarget(config, output, target);
  if (config.kind == "bceWithLogits") {
    auto options = withReduction(F::BinaryCrossEntropyWithLogitsFuncOptions(), config.reduction);
    if (config.posWeight.defined()) options = options.pos_weight(config.posWeight.to(output.device(), output.scalar_type()));
    return F::binary_cross_entropy_with_logits(output, t, options);
  }
  // The ATen ops, not the functional wrappers: those moved `beta` between 1.13 and 2.x.
  int64_t reduction = config.reduction == "sum"    ? at::Reduction::Sum
                      : config.reduction == "none" ? at::Reduction::None
                                                   : at::Reduction::Mean;
  if (config.kind == "mse") return torch::mse_loss(output, t, reduction);
  if (config.kind == "l1") return torch::l1_loss(output, t, reduction);
  if (config.kind == "smoothL1") return torch::smooth_l1_loss(output, t, reduction, config.beta);
  if (config.kind == "huber") return torch::huber_loss(output, t, reduction, config.delta);
  throw CodedError("TORCHLITE_BAD_ARGUMENT", "unknown loss '" + config.kind + "'");
}

torch::Tensor modelLoss(const LossConfig& config, const c10::IValue& output, std::vector<std::pair<std::string, torch::Tensor>>& named) {
  const c10::IValue& losses = output.isTuple() && !output.toTupleRef().elements().empty() ? output.toTupleRef().elements()[0] : output;
  if (losses.isTensor()) {
    torch::Tensor value = losses.toTensor();
    if (value.numel() != 1)
      throw CodedError("TORCHLITE_UNSUPPORTED_OUTPUT", "with loss.fromModel(), a loss tensor must hold one value but the model returned " + c10::str(value.sizes()));
    return value.reshape({}).to(torch::kFloat);
  }
  if (losses.isGenericDict()) {
    // Hugging Face's models return {"loss": …, "logits": …} when given labels: the loss alone trains.
    const c10::Dict<c10::IValue, c10::IValue> dict = losses.toGenericDict();
    auto hf = dict.find("loss");
    if (hf != dict.end() && hf->value().isTensor() && hf->value().toTensor().numel() == 1)
      return hf->value().toTensor().reshape({}).to(torch::kFloat);
    torch::Tensor total;
    for (const auto& entry : dict) {
      if (!entry.key().isString() || !entry.value().isTensor() || entry.value().toTensor().numel() != 1)
        throw CodedError("TORCHLITE_UNSUPPORTED_OUTPUT", "with loss.fromModel(), a dict of losses must map names to one-value tensors");
      std::string name = entry.key().toStringRef();
      torch::Tensor value = entry.value().toTensor().reshape({}).to(torch::kFloat);
      named.emplace_back(name, value.detach());
      auto weight = config.lossWeights.find(name);
      torch::Tensor weighted = weight == config.lossWeights.end() ? value : value * weight->second;
      total = total.defined() ? total + weighted : weighted;
    }
    if (!total.defined()) throw CodedError("TORCHLITE_UNSUPPORTED_OUTPUT", "with loss.fromModel(), the model returned an empty dict of losses");
    return total;
  }
  throw CodedError("TORCHLITE_UNSUPPORTED_OUTPUT",
                   "with loss.fromModel(), the model's training forward must return a loss tensor, a dict of named losses, or a tuple "
                   "starting with that dict (as torchvision's scripted detection models do), but it returned " + losses.tagKind() +
                   "; is the model in train() mode, and does its forward take the targets?");
}

torch::Tensor outputLoss(const LossConfig& config, const c10::IValue& output, const torch::Tensor& main, const torch::Tensor& target,
                         std::vector<std::pair<std::string, torch::Tensor>>& named, torch::Tensor* deferredBad) {
  if (config.outputWeights.empty()) return computeLoss(config, main, target, deferredBad);
  if (!output.isGenericDict())
    throw CodedError("TORCHLITE_UNSUPPORTED_OUTPUT", "the loss weighs the entries of a dict output (`outputs`), but the model returned " +
                                                         output.tagKind() + "; leave `outputs` out for a model with one output");
  const c10::Dict<c10::IValue, c10::IValue> dict = output.toGenericDict();
  torch::Tensor total;
  for (const auto& [name, weight] : config.outputWeights) {
    auto entry = dict.find(name);
    if (entry == dict.end() || !entry->value().isTensor()) {
      std::string keys;
      for (const auto& e : dict) keys += (keys.empty() ? "'" : ", '") + (e.key().isString() ? e.key().toStringRef() : "?") + "'";
      throw CodedError("TORCHLITE_UNSUPPORTED_OUTPUT", "the loss weighs the output '" + name + "', but the model's dict output has " +
                                                           (keys.empty() ? "no entries" : keys) + "; name those in `outputs`");
    }
    torch::Tensor value = computeLoss(config, entry->value().toTensor(), target, deferredBad);
    named.emplace_back(name, value.detach());
    torch::Tensor weighted = value * weight;
    total = total.defined() ? total + weighted : weighted;
  }
  return total;
}

bool countsCorrect(const LossConfig& config, const torch::Tensor& target) {
  return config.classifies && !target.is_floating_point();
}

std::pair<int64_t, int64_t> correctPredictions(const torch::Tensor& output, const torch::Tensor& target, int64_t ignoreIndex) {
  torch::Tensor indices = target.to(output.device(), torch::kLong);
  torch::Tensor scored = indices.ne(ignoreIndex);
  torch::Tensor hits = output.argmax(1).eq(indices).logical_and(scored);
  // One read back for both counts.
  torch::Tensor counts = torch::stack({hits.sum(), scored.sum()}).cpu();
  return {counts[0].item<int64_t>(), counts[1].item<int64_t>()};
}

// A job on the output's device lane: the target checks read values back (.item()), which on
// the JS thread would wait for the device.
Napi::Value ComputeLoss(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    LossConfig config = parseLoss(env, Baton(info[0].As<Napi::Object>(), "loss"));
    torch::Tensor output = TensorWrap::From(env, info[1]), target = TensorWrap::From(env, info[2]);
    return Job<torch::Tensor>::Start(
        env, {output.device(), Priority::Inference},
        [config, output, target] {
          torch::NoGradGuard noGrad;
          return computeLoss(config, output, target);
        },
        [](Napi::Env env, torch::Tensor& value) -> Napi::Value { return TensorWrap::Wrap(env, value); });
  });
}

}  // namespace tl
