// Distributed: a process group on PyTorch's c10d (a TCPStore rendezvous, Gloo, and NCCL
// for CUDA tensors), the collectives JS calls, and the gradient averaging the fused train
// step runs. The c10d headers stay in binding/distributed/, so the rest of the addon compiles
// without them.
#pragma once
#include <memory>

#include "common.h"
#include "optimizer.h"

namespace tl {

struct GroupState;
using GroupPtr = std::shared_ptr<GroupState>;

// The gradient sync of a data-parallel update: sums the grads of every parameter the
// optimizer trains over the ranks and divides by their number, in buckets (the first of
// at most 1 MB, then up to `bucketBytes`, as DDP) taken in reverse parameter order; a parameter without a
// grad on this rank takes part as zeros, so every rank sends the same layout, and keeps no
// grad when no rank had one. Returns true when some rank met a non-finite loss since the
// last update; the grads are then dropped and every rank skips the update together. After
// armOverlap, the buckets already sent during backward are only waited for.
bool syncGradients(GroupState& group, OptimizerState& optimizer, size_t bucketBytes);

// DDP's overlap of the gradient allreduce with backward (dataParallel's `overlap`), on the
// same autograd hooks c10d::Reducer uses: called before the backward of a step that
// updates, it hooks every trained parameter's grad accumulator (once) and arms the sync;
// each bucket goes out, in order, as soon as its grads are complete, while backward goes
// on. The returned scope disarms on the way out; a step that fails after sending marks the
// group lost (the ranks are out of step).
class OverlapScope {
 public:
  explicit OverlapScope(std::shared_ptr<OverlapState> state) : state_(std::move(state)) {}
  OverlapScope(OverlapScope&&) = default;
  OverlapScope& operator=(OverlapScope&&) = delete;
  ~OverlapScope();

 private:
  std::shared_ptr<OverlapState> state_;
};
OverlapScope armOverlap(const GroupPtr& group, OptimizerState& optimizer, size_t bucketBytes);

// How a data-parallel model's training jobs sync: JS sends it with each trainStep and flush
// (`{ group, buffers, overlap, bucketBytes }` from the model's data-parallel link, or null;
// distributed.ts owns the defaults).
struct SyncOptions {
  GroupPtr group;          // none: the model is not data-parallel
  bool buffers = false;    // start each forward from rank 0's buffers, as DDP does
  bool overlap = false;    // send the grads' buckets during backward (armOverlap)
  size_t bucketBytes = 0;  // DDP's bucket_cap_mb
};
SyncOptions parseSyncOptions(const Napi::Value& value);

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
