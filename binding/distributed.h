// Distributed: a process group on PyTorch's c10d (a TCPStore rendezvous and Gloo), the
// collectives JS calls, and the gradient averaging the fused train step runs. The c10d
// headers stay in distributed.cc, so the rest of the addon compiles without them.
#pragma once
#include <memory>

#include "common.h"
#include "optimizer.h"

namespace tl {

struct GroupState;
using GroupPtr = std::shared_ptr<GroupState>;

// Sums the grads of `params` over the group's ranks and divides by its size, in buckets of
// at most 25 MB taken in reverse parameter order (as DDP does); a parameter without a grad
// on this rank takes part as zeros, so every rank sends the same layout. `flag` travels
// with them: the result is the sum of every rank's flag (a rank that skipped its backward
// sends 1, so all ranks skip the update together).
double averageGradients(GroupState& group, const std::vector<torch::Tensor>& params, double flag);

// The gradient sync of a data-parallel update: averages the grads of every parameter the
// optimizer trains. Returns true when some rank met a non-finite loss since the last
// update; the grads are then dropped and every rank skips the update together.
bool syncGradients(GroupState& group, OptimizerState& optimizer);

// Overwrites `tensors` on every rank with rank `root`'s values, one flat message per dtype.
void broadcastTensors(GroupState& group, const std::vector<torch::Tensor>& tensors, int root);

// Every parameter and buffer of the model from rank 0, after checking that all ranks hold
// the same names and shapes.
void broadcastModel(GroupState& group, torch::jit::Module& module);

class GroupWrap : public Napi::ObjectWrap<GroupWrap> {
 public:
  static Napi::Function Define(Napi::Env env);
  static GroupPtr StateOf(Napi::Env env, const Napi::Value& value);

  explicit GroupWrap(const Napi::CallbackInfo& info);

 private:
  static Napi::Value Init(const Napi::CallbackInfo& info);

  Napi::Value AllReduce(const Napi::CallbackInfo& info);
  Napi::Value Broadcast(const Napi::CallbackInfo& info);
  Napi::Value AllGather(const Napi::CallbackInfo& info);
  Napi::Value Barrier(const Napi::CallbackInfo& info);
  Napi::Value BroadcastModel(const Napi::CallbackInfo& info);
  Napi::Value Destroy(const Napi::CallbackInfo& info);

  GroupPtr live() const;

  GroupPtr state_;
};

}  // namespace tl
