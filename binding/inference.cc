// Inference: forward and exported methods without gradients, predict, the evaluation
// batches and the inference copy, all as jobs on the model's lane.
#include "inference.h"

#include <algorithm>
#include <optional>

#include "compat.h"
#include "ivalue.h"
#include "job.h"
#include "layout.h"
#include "lora.h"
#include "loss.h"
#include "tensor.h"

namespace tl {

torch::Tensor firstTensor(const c10::IValue& value) {
  if (value.isTensor()) return value.toTensor();
  if (value.isTuple() && !value.toTupleRef().elements().empty()) return firstTensor(value.toTupleRef().elements()[0]);
  if (value.isList() && value.toListRef().size() > 0) return firstTensor(value.toListRef()[0]);
  // torchvision's segmentation models return {"out": scores, "aux": auxiliary scores}.
  if (value.isGenericDict()) {
    const c10::Dict<c10::IValue, c10::IValue> dict = value.toGenericDict();
    auto out = dict.find("out");
    if (out != dict.end()) return firstTensor(out->value());
  }
  throw CodedError("TORCHLITE_UNSUPPORTED_OUTPUT",
                   "training and predict need a model whose forward returns a tensor, a tuple starting with one, or a dict with an "
                   "\"out\" tensor (as torchvision's segmentation models return)");
}

namespace {

// What a hint may need from the inputs, read before they move into the call.
struct InputFacts {
  std::vector<c10::ScalarType> floatTypes;  // of the floating-point tensor inputs
  std::vector<int64_t> firstShape;          // of the first tensor input; empty when there is none
};

// view() needs strides it can reuse; a convolution's channels-last output fails it where the
// NCHW one passes (models written as `x.view(x.size(0), -1)` before a Linear).
bool isLayoutFailure(const ErrorInfo& failure) {
  return contains(firstLine(failure.message), "view size is not compatible with input tensor's size and stride");
}

std::string hintFor(const ModelState& state, const InputFacts& inputs, const ErrorInfo& failure, std::string& code) {
  // Only after the automatic choice has passed its trial, or when channels-last was asked for.
  if (state.channelsLast && isLayoutFailure(failure))
    return "The model runs in channels-last layout (NHWC), in which this graph's view() cannot run: load it with "
           "`{ channelsLast: false }` or call `model.channelsLast(false)`";
  torch::Tensor firstConv;  // the first 4-D weight: a Conv2d's [out, in / groups, kh, kw]
  c10::ScalarType weights = c10::kFloat;
  bool sawFloat = false;
  for (const torch::Tensor& parameter : state.module.parameters()) {
    if (!sawFloat && parameter.is_floating_point()) {
      weights = parameter.scalar_type();
      sawFloat = true;
    }
    if (!firstConv.defined() && parameter.dim() == 4) firstConv = parameter;
  }
  auto shape = [](const std::vector<int64_t>& s) { return c10::str(c10::IntArrayRef(s)); };
  // Any floating input whose dtype is not the weights' (float64 from a plain JS array, float16
  // from a file), whichever layer's check noticed it (weight, bias, running_mean, matmul).
  auto other = std::find_if(inputs.floatTypes.begin(), inputs.floatTypes.end(), [&](c10::ScalarType t) { return t != weights; });
  if (failure.code == "TORCH_DTYPE" && other != inputs.floatTypes.end()) {
    std::string from = *other == c10::kDouble ? "build the input from a Float32Array, or " : "";
    return "The input is " + dtypeName(*other) + " but the model's weights are " + dtypeName(weights) + ": " + from +
           "convert it with `input.to('" + dtypeName(weights) + "')`";
  }
  const std::vector<int64_t>& in = inputs.firstShape;
  if (!firstConv.defined() || in.empty()) return "";
  if (in.size() == 3) {
    code = "TORCH_SHAPE";
    std::vector<int64_t> batched = in;
    batched.insert(batched.begin(), 1);
    return "The input has shape " + shape(in) + ", without a batch dimension: the model takes [N, C, H, W]; for one sample use shape " + shape(batched);
  }
  if (in.size() == 4 && contains(firstLine(failure.message), "channels")) {
    code = "TORCH_SHAPE";
    int64_t channels = firstConv.size(1);
    return "The model's first convolution takes " + std::to_string(channels) + "-channel input but the input has " +
           std::to_string(in[1]) + " channels (shape " + shape(in) + "); load images with `channels: " + std::to_string(channels) + "`";
  }
  return "";
}

}  // namespace

c10::IValue runForward(ModelState& state, std::vector<c10::IValue> inputs) {
  InputFacts facts;
  for (const c10::IValue& input : inputs) {
    if (!input.isTensor()) continue;
    const torch::Tensor& tensor = input.toTensor();
    if (facts.firstShape.empty()) facts.firstShape = tensor.sizes().vec();
    if (tensor.is_floating_point()) facts.floatTypes.push_back(tensor.scalar_type());
  }
  try {
    return runInLayout(state, std::move(inputs), [&](std::vector<c10::IValue> args) { return state.module.forward(std::move(args)); });
  } catch (const std::exception&) {
    ErrorInfo failure = describe(std::current_exception());
    std::string code = failure.code;
    std::string hint = hintFor(state, facts, failure, code);
    if (hint.empty()) throw;
    throw CodedError(code, failure.message + ". " + hint, failure.backtrace);
  }
}

namespace {

// Whether the copy gives the model's output for `input`, without a LibTorch warning: the
// inference passes have bugs for some models (MobileNetV3 in 1.13: wrong outputs, and an
// "output ... was resized" warning), so a copy is trusted only once checked.
bool agrees(ModelState& model, ModelState& copy, const torch::Tensor& input) {
  std::vector<c10::IValue> mine{input}, theirs{input};
  prepareInputs(model, mine);
  c10::IValue expected = runForward(model, std::move(mine));
  compat::WarningCollector warnings;
  try {
    prepareInputs(copy, theirs);
    c10::IValue got = runForward(copy, std::move(theirs));
    if (!expected.isTensor() || !got.isTensor() || !got.toTensor().sizes().equals(expected.toTensor().sizes())) return false;
    torch::Tensor want = expected.toTensor().to(torch::kFloat), have = got.toTensor().to(torch::kFloat);
    bool close = ((have - want).abs() / want.abs().clamp_min(1)).max().item<double>() < 1e-4;
    return close && warnings.messages.empty();
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace

// A frozen copy in eval mode, optimised for inference as torch.jit.optimize_for_inference
// does (BatchNorm folded into the convolutions, oneDNN's prepacked weights on the CPU):
// fineTune's feature cache runs the frozen body through it. It shares no tensor with the
// model. Checked against the model on the probe batch and on its first sample (a batch size
// of its own); null when freezing fails or the copy disagrees (within 1e-4) or warns.
Napi::Value ModelWrap::InferenceCopy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    ModelPtr state = live();
    torch::Tensor probe = TensorWrap::From(env, info[0]);
    return Job<ModelPtr>::Start(
        env, {state->device, Priority::Inference},
        [state, probe]() -> ModelPtr {
          std::lock_guard<std::mutex> lock(state->mutex);
          torch::NoGradGuard noGrad;
          ModelPtr copy;
          try {
            torch::jit::Module module = state->module.clone();
            module.eval();
            GraphOptimizing optimizing;
            copy = std::make_shared<ModelState>(torch::jit::optimize_for_inference(module), state->device);
          } catch (const std::exception&) {
            return nullptr;  // a module freezing cannot take (attributes set in forward, ...)
          }
          bool good = agrees(*state, *copy, probe) && (probe.size(0) == 1 || agrees(*state, *copy, probe.narrow(0, 0, 1)));
          return good ? copy : nullptr;
        },
        [](Napi::Env env, ModelPtr& copy) -> Napi::Value { return copy ? Wrap(env, copy) : env.Null(); });
  });
}
// A method of the model by name; a model may export others beside forward, or no forward.
torch::jit::Method methodOf(const ModelState& state, const std::string& name) {
  if (auto method = state.module.find_method(name)) return *method;
  throw CodedError("TORCHLITE_NO_SUCH_METHOD", "the model has no method '" + name + "'; it exports " + methodNames(*state.module.type()) +
                                                   (name == "forward" ? ": call one with model.call(name, ...inputs)" : ""));
}
Napi::Value ModelWrap::Forward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    ModelPtr state = live();
    return Job<c10::IValue>::Start(
        env, {state->device, Priority::Inference, parseAdmission(info[1])},
        [state, adapter = requestAdapter(info[1]), inputs = Inputs(env, *state, info[0])]() mutable {
          std::lock_guard<std::mutex> lock(state->mutex);
          // Grad mode is thread-local, so it has to be set on the lane itself. Not
          // c10::InferenceMode: once the profiling executor has built autodiff subgraphs
          // for training, they save their inputs even with grad mode off, and an inference
          // tensor (the frozen body's output) cannot be saved (measured: "Inference tensors
          // cannot be saved for backward" in eval after a head-only step).
          torch::NoGradGuard noGrad;
          prepareInputs(*state, inputs);
          return withAdapter(*state, adapter, [&] { return runForward(*state, std::move(inputs)); });
        },
        [state](Napi::Env env, c10::IValue& output) { return fromIValue(env, output, state); });
  });
}

// Any exported method, without gradients, in the model's current mode (as forward).
Napi::Value ModelWrap::Call(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    ModelPtr state = live();
    std::string name = info[0].As<Napi::String>().Utf8Value();
    return Job<c10::IValue>::Start(
        env, {state->device, Priority::Inference, parseAdmission(info[2])},
        [state, name, adapter = requestAdapter(info[2]), inputs = Inputs(env, *state, info[1], name)]() mutable {
          std::lock_guard<std::mutex> lock(state->mutex);
          torch::NoGradGuard noGrad;  // not InferenceMode: see Forward
          prepareInputs(*state, inputs);
          torch::jit::Method method = methodOf(*state, name);
          return withAdapter(*state, adapter, [&] {
            return runInLayout(*state, std::move(inputs), [&](std::vector<c10::IValue> args) { return method(std::move(args)); });
          });
        },
        [state](Napi::Env env, c10::IValue& output) { return fromIValue(env, output, state); });
  });
}

namespace {

// Per-element class scores [N, C, ...] against class indices [N, ...]: the C × C confusion
// matrix (rows: targets) of the argmax, targets outside [0, C) (ignoreIndex 255) left out.
torch::Tensor confusionOf(const torch::Tensor& scores, const torch::Tensor& target) {
  int64_t classes = scores.size(1);
  if (target.is_floating_point() || target.dim() != scores.dim() - 1)
    throw CodedError("TORCHLITE_BAD_TARGET", "per-pixel metrics need class-index targets with the scores' shape less dimension 1 (scores " +
                                             c10::str(scores.sizes()) + ") but received " + (target.is_floating_point() ? "float " : "") +
                                             "targets " + c10::str(target.sizes()));
  torch::Tensor truth = target.to(scores.device(), torch::kLong).flatten();
  torch::Tensor predicted = scores.argmax(1).flatten();
  torch::Tensor valid = truth.ge(0).logical_and(truth.lt(classes));
  torch::Tensor cells = truth.masked_select(valid) * classes + predicted.masked_select(valid);
  return torch::bincount(cells, {}, classes * classes).view({classes, classes});
}

}  // namespace

// One evaluation batch in eval mode, as `mode` asks: "scores" (the output's rows, for metrics
// over samples), "confusion" (per-pixel class scores counted into a confusion matrix on the
// lane: a segmentation batch's scores are megabytes) or "outputs" (the whole output, for a
// detector's boxes). What comes back is copied to the host on the lane, so the metrics in JS
// never run LibTorch (or wait for a GPU) on the event loop.
Napi::Value ModelWrap::EvalBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    ModelPtr state = live();
    std::optional<LossConfig> loss;
    if (info[2].IsObject()) loss = parseLoss(env, Baton(info[2].As<Napi::Object>(), "loss"));
    torch::Tensor target = info[1].IsObject() ? TensorWrap::From(env, info[1]) : torch::Tensor();
    // Rows past `keep` repeat earlier samples (a distributed shard's padding) and are not scored.
    int64_t keep = info[3].IsNumber() ? info[3].As<Napi::Number>().Int64Value() : -1;
    std::string mode = info[4].As<Napi::String>().Utf8Value();
    struct Result {
      torch::Tensor scores;     // float32, contiguous, on the CPU ("scores")
      torch::Tensor targets;    // float64, on the CPU ("scores")
      torch::Tensor confusion;  // float64 [C, C], on the CPU ("confusion")
      c10::IValue outputs;      // on the CPU ("outputs")
      int64_t samples = 0;
      // Empty without a loss to compute; a diverged model's NaN is kept, not taken for "none".
      std::optional<double> loss;
    };
    return Job<Result>::Start(
        env, {state->device, Priority::Inference},
        [state, loss, target, keep, mode, inputs = Inputs(env, *state, info[0])]() mutable {
          std::lock_guard<std::mutex> lock(state->mutex);
          return inEvalMode(*state, [&] {
            prepareInputs(*state, inputs);
            c10::IValue out = runForward(*state, std::move(inputs));
            Result result;
            if (mode == "outputs") {
              // A detector's boxes, read in JS.
              result.outputs = mapTensors(out, [](const torch::Tensor& t) { return t.cpu(); });
              return result;
            }
            if (keep >= 0) {
              out = mapTensors(out, [keep](const torch::Tensor& t) { return t.dim() == 0 ? t : t.narrow(0, 0, std::min(keep, t.size(0))); });
              if (target.defined()) target = target.narrow(0, 0, std::min(keep, target.size(0)));
            }
            torch::Tensor output = firstTensor(out);
            result.samples = output.dim() == 0 ? 1 : output.size(0);
            // A batch of padding only has no rows left, and no loss (the mean of none is NaN).
            if (loss && target.defined() && result.samples > 0) {
              std::vector<std::pair<std::string, torch::Tensor>> named;
              result.loss = outputLoss(*loss, out, output, target, named).item<double>();
            }
            if (mode == "confusion") {
              if (target.defined()) result.confusion = confusionOf(output, target).to(torch::kCPU, torch::kDouble).contiguous();
              return result;
            }
            result.scores = output.to(torch::kCPU, torch::kFloat).contiguous();
            if (target.defined()) result.targets = target.to(torch::kCPU, torch::kDouble).contiguous();
            return result;
          });
        },
        [state](Napi::Env env, Result& r) -> Napi::Value {
          Napi::Object result = Napi::Object::New(env);
          if (!r.outputs.isNone()) {
            result.Set("outputs", fromIValue(env, r.outputs, state));
            return result;
          }
          result.Set("samples", static_cast<double>(r.samples));
          if (r.scores.defined()) {
            result.Set("scores", hostArray(env, r.scores));
            result.Set("shape", fromShape(env, r.scores.sizes()));
          }
          if (r.targets.defined()) result.Set("targets", hostArray(env, r.targets));
          if (r.confusion.defined()) result.Set("confusion", hostArray(env, r.confusion));
          if (r.loss) result.Set("loss", *r.loss);
          return result;
        });
  });
}

namespace {

// predict's answer from a forward's output: softmax over dimension 1 of its first tensor, and
// the argmax.
std::pair<torch::Tensor, torch::Tensor> classScores(const c10::IValue& output) {
  torch::Tensor scores = firstTensor(output).to(torch::kFloat);
  if (scores.dim() < 2)
    throw CodedError("TORCHLITE_UNSUPPORTED_OUTPUT", "predict needs class scores of shape [N, C, ...] but the model returned " + c10::str(scores.sizes()));
  return {torch::softmax(scores, 1), scores.argmax(1)};
}

}  // namespace

Napi::Value ModelWrap::Predict(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    ModelPtr state = live();
    using Result = std::pair<torch::Tensor, torch::Tensor>;
    return Job<Result>::Start(
        env, {state->device, Priority::Inference, parseAdmission(info[1])},
        [state, adapter = requestAdapter(info[1]), inputs = Inputs(env, *state, info[0])]() mutable {
          std::lock_guard<std::mutex> lock(state->mutex);
          return inEvalMode(*state, [&] {
            prepareInputs(*state, inputs);
            return withAdapter(*state, adapter, [&] { return classScores(runForward(*state, std::move(inputs))); });
          });
        },
        [](Napi::Env env, Result& r) -> Napi::Value {
          Napi::Object result = Napi::Object::New(env);
          result.Set("probabilities", TensorWrap::Wrap(env, r.first));
          result.Set("argmax", TensorWrap::Wrap(env, r.second));
          return result;
        });
  });
}

namespace {

// Cuts every tensor of `value` along dimension 0 into pieces of `sizes` rows, as copies (a
// view would keep the whole batch's output alive for each request); other values are shared.
std::vector<c10::IValue> splitRows(const c10::IValue& value, const std::vector<int64_t>& sizes) {
  std::vector<c10::IValue> parts(sizes.size());
  if (value.isTensor()) {
    const torch::Tensor& whole = value.toTensor();
    if (whole.dim() == 0 || whole.size(0) != c10::sum_integers(sizes))
      throw CodedError("TORCHLITE_UNSUPPORTED_OUTPUT", "dynamic batching needs outputs with one row per input row, but the model returned " +
                                                           c10::str(whole.sizes()) + " for " + std::to_string(c10::sum_integers(sizes)) +
                                                           " rows; turn batching off for this model");
    std::vector<torch::Tensor> pieces = whole.split_with_sizes(sizes, 0);
    for (size_t i = 0; i < sizes.size(); ++i) parts[i] = pieces[i].clone();
  } else if (value.isTuple()) {
    std::vector<std::vector<c10::IValue>> items(sizes.size());
    for (const c10::IValue& element : value.toTupleRef().elements()) {
      std::vector<c10::IValue> cut = splitRows(element, sizes);
      for (size_t i = 0; i < sizes.size(); ++i) items[i].push_back(cut[i]);
    }
    for (size_t i = 0; i < sizes.size(); ++i) parts[i] = c10::ivalue::Tuple::create(std::move(items[i]));
  } else if (value.isTensorList()) {
    std::vector<c10::List<torch::Tensor>> lists(sizes.size());
    for (const torch::Tensor& element : value.toTensorVector()) {
      std::vector<c10::IValue> cut = splitRows(element, sizes);
      for (size_t i = 0; i < sizes.size(); ++i) lists[i].push_back(cut[i].toTensor());
    }
    for (size_t i = 0; i < sizes.size(); ++i) parts[i] = lists[i];
  } else if (value.isGenericDict()) {
    c10::Dict<c10::IValue, c10::IValue> dict = value.toGenericDict();
    std::vector<c10::impl::GenericDict> dicts;
    for (size_t i = 0; i < sizes.size(); ++i) dicts.emplace_back(dict.keyType(), dict.valueType());
    for (const auto& entry : dict) {
      std::vector<c10::IValue> cut = splitRows(entry.value(), sizes);
      for (size_t i = 0; i < sizes.size(); ++i) dicts[i].insert(entry.key(), cut[i]);
    }
    for (size_t i = 0; i < sizes.size(); ++i) parts[i] = dicts[i];
  } else {
    std::fill(parts.begin(), parts.end(), value);
  }
  return parts;
}

}  // namespace

// Dynamic batching (model.batching): the requests' single tensor inputs concatenated along
// dimension 0, one forward (or predict) for all, and each request's rows cut back out. One
// job, so the batch is one read in the model's queue and one slot on its lane.
Napi::Value ModelWrap::ForwardBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    ModelPtr state = live();
    Napi::Array array = info[0].As<Napi::Array>();
    bool predict = info[1].As<Napi::String>().Utf8Value() == "predict";
    std::vector<torch::Tensor> inputs;
    std::vector<int64_t> sizes;
    for (uint32_t i = 0; i < array.Length(); ++i) {
      inputs.push_back(TensorWrap::From(env, array.Get(i)));
      sizes.push_back(inputs.back().dim() == 0 ? 1 : inputs.back().size(0));
    }
    using Result = std::vector<c10::IValue>;
    return Job<Result>::Start(
        env, {state->device, Priority::Inference, Admission{}},  // a serving request: see Executor::noteServing
        [state, inputs, sizes, predict]() -> Result {
          std::lock_guard<std::mutex> lock(state->mutex);
          std::vector<c10::IValue> batch{torch::cat(inputs, 0)};
          auto run = [&] {
            prepareInputs(*state, batch);
            return runForward(*state, std::move(batch));
          };
          if (!predict) {
            torch::NoGradGuard noGrad;  // not InferenceMode: see Forward
            return splitRows(run(), sizes);
          }
          return inEvalMode(*state, [&] {
            auto [probabilities, argmax] = classScores(run());
            return splitRows(c10::ivalue::Tuple::create({probabilities, argmax}), sizes);
          });
        },
        [state](Napi::Env env, Result& parts) -> Napi::Value {
          Napi::Array result = Napi::Array::New(env, parts.size());
          for (size_t i = 0; i < parts.size(); ++i) result.Set(i, fromIValue(env, parts[i], state));
          return result;
        });
  });
}

}  // namespace tl
