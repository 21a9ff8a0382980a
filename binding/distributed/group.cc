// The process group as JS sees it (GroupWrap) and its collectives, each a job on the lane of
// its tensor's device.
#include "distributed/group.h"

#include <sstream>

#include "tensor.h"

namespace tl {

std::string messageOf(const std::exception& e) {
  if (const auto* c10 = dynamic_cast<const c10::Error*>(&e)) return c10->what_without_backtrace();
  return e.what();
}

std::string seconds(std::chrono::milliseconds ms) {
  std::ostringstream out;
  out << static_cast<double>(ms.count()) / 1000 << " s";
  return out.str();
}

// Gloo and the store report a lost peer or a timeout only in their message text, which has
// been stable from 1.13 to 2.x.
CodedError explain(const GroupState& group, const std::string& message, const char* what) {
  std::string cause = firstLine(message);  // classified by its first line only
  std::string peer = group.size == 2 ? "rank " + std::to_string(1 - group.rank) : "a peer";
  std::string me = "rank " + std::to_string(group.rank);
  if (contains(cause, "Connection closed by peer") || contains(cause, "Connection reset") || contains(cause, "Broken pipe") ||
      contains(cause, "Socket closed") || contains(cause, "Connection refused"))
    return CodedError("TORCHLITE_DIST_PEER_LOST", me + " lost its connection to " + peer + " during " + what +
                                                      ": that process exited or crashed, and the group cannot go on. Exit this process too "
                                                      "(`torchlite run` stops the other ranks and reports the first failure). (" + message + ")");
  if (contains(cause, "imed out") || contains(cause, "imeout"))
    return CodedError("TORCHLITE_DIST_TIMEOUT", me + ": " + what + " waited " + seconds(group.timeout) + " for " + peer +
                                                    " without an answer: a rank is stuck, far behind, or calling collectives in another order. "
                                                    "Raise `timeoutMs` if a rank legitimately needs longer. (" + message + ")");
  return CodedError("TORCHLITE_DIST_ERROR", me + ": " + what + " failed: " + message);
}

// Throws when the group cannot be used: destroyed, or failed before.
void usable(GroupState& group) {
  std::lock_guard<std::mutex> lock(group.mutex);
  if (group.destroyed) throw CodedError("TORCHLITE_DISPOSED", "the process group has been destroyed");
  if (group.failure) throw *group.failure;
}

Place placeOf(const torch::Tensor& tensor) { return {tensor.device(), Priority::Training}; }

[[noreturn]] void unavailable() {
  throw CodedError("TORCHLITE_DIST_UNAVAILABLE",
                   "this build of torchlite has no Gloo: install libgloo-dev (scripts/bootstrap.sh does) and rebuild with "
                   "`npm run build:native`");
}

#ifdef TORCHLITE_C10D
void run(const c10::intrusive_ptr<c10d::Work>& work) { work->wait(); }

// As PyTorch's default group does: NCCL for CUDA tensors where the group has it, Gloo for
// the rest (the JS side refuses CUDA tensors in a Gloo-only group's own collectives).
compat::CommBackend& commFor(GroupState& group, const torch::Device& device) {
  return device.is_cuda() && group.nccl ? *group.nccl : *group.gloo;
}

// Where a small message about tensors on `device` (flags, hashes) must live: NCCL reduces
// device memory only, Gloo is cheapest on the host.
torch::Device scratchFor(const GroupState& group, const torch::Device& device) {
  return device.is_cuda() && group.nccl ? device : torch::Device(torch::kCPU);
}

namespace {
c10d::ReduceOp parseOp(const std::string& op) {
  if (op == "sum" || op == "avg") return c10d::ReduceOp::SUM;  // Gloo has no AVG: divided after
  if (op == "max") return c10d::ReduceOp::MAX;
  if (op == "min") return c10d::ReduceOp::MIN;
  if (op == "product") return c10d::ReduceOp::PRODUCT;
  throw CodedError("TORCHLITE_BAD_ARGUMENT", "unknown reduce op '" + op + "'");
}
}  // namespace
#endif  // TORCHLITE_C10D

Napi::Function GroupWrap::Define(Napi::Env env) {
  return DefineClass(env, "ProcessGroup",
                     {
                         StaticMethod<&GroupWrap::Init>("init"),
                         InstanceMethod<&GroupWrap::AllReduce>("allReduce"),
                         InstanceMethod<&GroupWrap::Broadcast>("broadcast"),
                         InstanceMethod<&GroupWrap::AllGather>("allGather"),
                         InstanceMethod<&GroupWrap::Barrier>("barrier"),
                         InstanceMethod<&GroupWrap::BroadcastModel>("broadcastModel"),
                         InstanceMethod<&GroupWrap::Destroy>("destroy"),
                     });
}

GroupPtr GroupWrap::StateOf(Napi::Env env, const Napi::Value& value) {
  return unwrapInstance<GroupWrap>(env, value, addonData(env).groupClass, "a ProcessGroup")->live();
}

GroupWrap::GroupWrap(const Napi::CallbackInfo& info)
    : Napi::ObjectWrap<GroupWrap>(info), state_(takeExternal<GroupPtr>(info, "ProcessGroup cannot be constructed directly; use distributed.init()")) {}

GroupPtr GroupWrap::live() const {
  if (!state_ || state_->destroyed) throw CodedError("TORCHLITE_DISPOSED", "the process group has been destroyed");
  return state_;
}

namespace {

// A collective as a job that settles to undefined. Only a group from Init can reach here,
// so a build without Gloo never does.
template <class F>
Napi::Value collective(Napi::Env env, GroupPtr group, Place place, const char* what, F body) {
  return Job<bool>::Start(
      env, place,
      [group, what, body = std::move(body)] {
        communicate(*group, what, [&] { body(*group); });
        return true;
      },
      [](Napi::Env env, bool&) -> Napi::Value { return env.Undefined(); });
}

}  // namespace

Napi::Value GroupWrap::AllReduce(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    GroupPtr group = live();
    torch::Tensor tensor = TensorWrap::From(env, info[0]);
    std::string op = info[1].As<Napi::String>().Utf8Value();
#ifdef TORCHLITE_C10D
    c10d::AllreduceOptions options;
    options.reduceOp = parseOp(op);
    return collective(env, group, placeOf(tensor), "allReduce", [tensor, options, op](GroupState& g) {
      std::vector<at::Tensor> tensors{tensor};
      run(commFor(g, tensor.device()).allreduce(tensors, options));
      if (op == "avg") tensor.div_(g.size);
    });
#else
    unavailable();
#endif
  });
}

Napi::Value GroupWrap::Broadcast(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    GroupPtr group = live();
    torch::Tensor tensor = TensorWrap::From(env, info[0]);
    int root = info[1].As<Napi::Number>().Int32Value();
    return collective(env, group, placeOf(tensor), "broadcast", [tensor, root](GroupState& g) { broadcastTensors(g, {tensor}, root); });
  });
}

Napi::Value GroupWrap::AllGather(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    GroupPtr group = live();
    torch::Tensor tensor = TensorWrap::From(env, info[0]);
#ifdef TORCHLITE_C10D
    using Parts = std::vector<torch::Tensor>;
    return Job<Parts>::Start(
        env, placeOf(tensor),
        [group, tensor] {
          return communicate(*group, "allGather", [&] {
            std::vector<std::vector<at::Tensor>> outputs(1);
            for (int r = 0; r < group->size; ++r) outputs[0].push_back(torch::empty_like(tensor));
            std::vector<at::Tensor> inputs{tensor};
            run(commFor(*group, tensor.device()).allgather(outputs, inputs));
            return outputs[0];
          });
        },
        [](Napi::Env env, Parts& parts) -> Napi::Value {
          Napi::Array array = Napi::Array::New(env, parts.size());
          for (size_t i = 0; i < parts.size(); ++i) array.Set(i, TensorWrap::Wrap(env, parts[i]));
          return array;
        });
#else
    unavailable();
#endif
  });
}

Napi::Value GroupWrap::Barrier(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
#ifdef TORCHLITE_C10D
    return collective(env, live(), {torch::Device(torch::kCPU), Priority::Training}, "barrier", [](GroupState& g) { run(g.gloo->barrier()); });
#else
    unavailable();
#endif
  });
}

Napi::Value GroupWrap::BroadcastModel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    ModelPtr model = ModelWrap::StateOf(env, info[0]);
    return collective(env, live(), {model->device, Priority::Training}, "the model broadcast", [model](GroupState& g) {
      std::lock_guard<std::mutex> lock(model->mutex);
      broadcastModel(g, model->module);
    });
  });
}

// Drops this process's end of the group. Gloo's destructor joins its threads, which do not
// wait for peers, so this is quick; later calls get TORCHLITE_DISPOSED.
Napi::Value GroupWrap::Destroy(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    if (state_) {
      std::lock_guard<std::mutex> lock(state_->mutex);
      state_->destroyed = true;
    }
    state_.reset();
    return info.Env().Undefined();
  });
}
}  // namespace tl
