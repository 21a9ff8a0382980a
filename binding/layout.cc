// Channels-last (NHWC) or NCHW: the choice, its trial on the first forward, and inputs
// brought to the model's device and layout on the lane.
#include "layout.h"

#include "inference.h"
#include "job.h"
#include "surgery.h"

namespace tl {

// The strides of `format` even where contiguous() would keep the tensor as it is: with one
// input channel (a grayscale batch, a first conv's weight) or a 1x1 kernel both layouts
// describe the same memory, and LibTorch picks a convolution's layout from the strides. A
// grayscale batch left in NCHW strides made the small CNN run its whole first stage in NCHW
// (a third of its channels-last gain lost), and a 1x1 weight left in NHWC strides kept
// its convolution in NHWC after the model went back to NCHW. to() rewrites the strides
// whenever the suggested format differs.
torch::Tensor toMemoryFormat(const torch::Tensor& tensor, torch::MemoryFormat format) {
  return tensor.to(tensor.options(), /*non_blocking=*/false, /*copy=*/false, format);
}

namespace {

torch::Tensor prepareTensor(const ModelState& state, torch::Tensor tensor) {
  if (tensor.device() != state.device) {
    if (state.device.is_cuda() && tensor.is_cpu() && !tensor.is_pinned()) tensor = tensor.pin_memory();
    tensor = tensor.to(state.device, /*non_blocking=*/true);
  }
  if (state.channelsLast && tensor.dim() == 4) tensor = toMemoryFormat(tensor, torch::MemoryFormat::ChannelsLast);
  return tensor;
}

std::vector<c10::IValue> inNchw(const std::vector<c10::IValue>& inputs) {
  std::vector<c10::IValue> result(inputs);
  for (c10::IValue& input : result)
    if (input.isTensor() && input.toTensor().dim() == 4) input = toMemoryFormat(input.toTensor(), torch::MemoryFormat::Contiguous);
  return result;
}

// Whether one pass goes through in the model's current layout. The pass changes nothing:
// in eval mode no running statistics move and dropout draws nothing, and without gradients
// no graph is kept. So nothing has to be put back after a failure: not the buffers, and
// not the process-wide generator, which other lanes draw from meanwhile.
bool passes(ModelState& state, const std::vector<c10::IValue>& inputs, const MethodRun& run) {
  try {
    inEvalMode(state, [&] { return run(inputs); });
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

// The automatic choice's trial. Any failure in NHWC where NCHW passes sends the model back
// to NCHW for good (a `view()` of a convolution's output is the usual cause, but the reason
// does not matter: the model runs in the layout it was written for). When neither layout
// passes, the input is at fault: the model stays on trial, and the call fails with its own
// error. The cost is one extra inference pass (two on a bad input), on the first call only.
void settleLayout(ModelState& state, std::vector<c10::IValue>& inputs, const MethodRun& run) {
  if (passes(state, inputs, run)) {
    state.layoutOnTrial = false;
    return;
  }
  chooseChannelsLast(state, false, /*automatic=*/false);
  std::vector<c10::IValue> nchw = inNchw(inputs);
  if (passes(state, nchw, run)) {
    inputs = std::move(nchw);
    return;
  }
  chooseChannelsLast(state, true, /*automatic=*/true);
}

}  // namespace

void prepareInputs(const ModelState& state, std::vector<c10::IValue>& inputs) {
  // Every tensor, however nested: a detector's targets are a list of dicts of them.
  for (c10::IValue& input : inputs) input = mapTensors(input, [&](const torch::Tensor& t) { return prepareTensor(state, t); });
}

c10::IValue runInLayout(ModelState& state, std::vector<c10::IValue> inputs, const MethodRun& run) {
  if (state.layoutOnTrial) settleLayout(state, inputs, run);
  return run(std::move(inputs));
}

void chooseChannelsLast(ModelState& state, bool on, bool automatic) {
  bool changed = setChannelsLast(state, on);
  // Asked for by name, a model without 4-D weights still gets its 4-D inputs in NHWC;
  // chosen automatically, it stays as it is (a text model's [B, 1, 1, L] mask gains nothing).
  if (!changed && !automatic) state.channelsLast = on;
  state.layoutAutomatic = state.layoutOnTrial = changed && on && automatic;
}

bool setChannelsLast(ModelState& state, bool on) {
  std::vector<torch::Tensor> planes;
  for (const torch::Tensor& parameter : state.module.parameters())
    if (parameter.dim() == 4) planes.push_back(parameter);
  if (planes.empty()) return false;
  torch::NoGradGuard noGrad;
  // set_data keeps each parameter's identity (optimizers hold them) while changing its layout.
  for (torch::Tensor& parameter : planes) parameter.set_data(toMemoryFormat(parameter, on ? torch::MemoryFormat::ChannelsLast : torch::MemoryFormat::Contiguous));
  state.channelsLast = on;
  return true;
}

void guardNhwcBackward(ModelState& state) {
  if (!state.channelsLast || !state.device.is_cpu()) return;
  // Once per structure: replace() is the only way a layer comes or goes.
  if (state.hazardGeneration != state.generation) {
    state.nhwcHazard = nhwcBackwardHazard(state.module);
    state.hazardGeneration = state.generation;
  }
  if (state.nhwcHazard.empty()) return;
  if (state.layoutAutomatic) {
    chooseChannelsLast(state, false, /*automatic=*/false);
    return;
  }
  throw CodedError("TORCHLITE_UNSAFE_LAYOUT",
                   "training " + state.nhwcHazard +
                       " in channels-last on the CPU corrupts memory inside LibTorch's oneDNN kernels; call "
                       "model.channelsLast(false) before training on the CPU (inference in channels-last is safe), or "
                       "train on a GPU");
}

// A job: converting a ResNet's weights takes milliseconds, which the event loop should not pay.
Napi::Value ModelWrap::SetChannelsLast(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    ModelPtr state = live();
    bool on = info[0].As<Napi::Boolean>().Value();
    return Job<bool>::Start(
        env, {state->device, Priority::Training},
        [state, on] {
          std::lock_guard<std::mutex> lock(state->mutex);
          chooseChannelsLast(*state, on, /*automatic=*/false);
          return true;
        },
        [](Napi::Env env, bool&) { return env.Undefined(); });
  });
}

}  // namespace tl
