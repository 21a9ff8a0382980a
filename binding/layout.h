// Layout: channels-last (NHWC) or NCHW for a model's 4-D weights and inputs, the automatic
// choice's trial on the first forward, and inputs brought to the model's device and layout.
#pragma once
#include <functional>

#include "model.h"

namespace tl {

// `tensor` with the strides of `format`, even where contiguous() would keep it as it is.
torch::Tensor toMemoryFormat(const torch::Tensor& tensor, torch::MemoryFormat format);

// Moves input tensors to the model's device (from pinned memory, without blocking the
// host, when that is CUDA) and into channels-last when the model uses it. Runs on the
// lane, inside a job.
void prepareInputs(const ModelState& state, std::vector<c10::IValue>& inputs);

// Puts the model's 4-D parameters in channels-last (NHWC) or back in NCHW; later inputs
// follow. Returns false, changing nothing, when the model has no 4-D parameter.
bool setChannelsLast(ModelState& state, bool on);

// The layout a model asks for: `automatic` (loadPretrained's 'auto') only takes models with
// 4-D weights, and makes their first forward a trial that can fall back to NCHW.
void chooseChannelsLast(ModelState& state, bool on, bool automatic);

// Before a backward pass on the CPU in channels-last: a model with a layer oneDNN cannot
// train in NHWC (see nhwcBackwardHazard) goes back to NCHW when the layout was chosen
// automatically, and fails with TORCHLITE_UNSAFE_LAYOUT when it was asked for by name.
void guardNhwcBackward(ModelState& state);

using MethodRun = std::function<c10::IValue(std::vector<c10::IValue>)>;

// Runs `run` (forward or another method) on prepared inputs. A model whose channels-last
// layout was chosen automatically and has not yet been through a forward first settles its
// layout: see settleLayout in layout.cc.
c10::IValue runInLayout(ModelState& state, std::vector<c10::IValue> inputs, const MethodRun& run);

}  // namespace tl
