// Gradient and parameter sync: DDP's bucketed gradient allreduce (after backward, or
// overlapped with it through autograd hooks) and the broadcasts of rank 0's model.
#include "distributed/group.h"

#include <unordered_map>
#include <unordered_set>

#include "model.h"
#include "optimizer.h"
#include "tensor.h"

namespace tl {

#ifdef TORCHLITE_C10D
namespace {

constexpr size_t kFirstBucketBytes = 1u << 20;  // DDP's first bucket (the others: bucketCapMb)

// Runs of same-dtype, same-device tensors in the given order, as index lists: the first of
// at most `firstCap` bytes, the others of at most `cap` (DDP starts with a small bucket so
// the sync begins early in backward).
std::vector<std::vector<size_t>> buckets(const std::vector<torch::Tensor>& tensors, size_t firstCap, size_t cap) {
  std::vector<std::vector<size_t>> out;
  size_t bytes = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const torch::Tensor& t = tensors[i];
    const torch::Tensor* head = out.empty() ? nullptr : &tensors[out.back().front()];
    size_t size = static_cast<size_t>(t.numel()) * t.element_size();
    if (!head || bytes + size > (out.size() == 1 ? firstCap : cap) || head->scalar_type() != t.scalar_type() || head->device() != t.device()) {
      out.emplace_back();
      bytes = 0;
    }
    out.back().push_back(i);
    bytes += size;
  }
  return out;
}

std::vector<torch::Tensor> pick(const std::vector<torch::Tensor>& tensors, const std::vector<size_t>& indices) {
  std::vector<torch::Tensor> picked;
  picked.reserve(indices.size());
  for (size_t i : indices) picked.push_back(tensors[i]);
  return picked;
}

torch::Tensor flatten(const std::vector<torch::Tensor>& tensors) {
  std::vector<torch::Tensor> pieces;
  pieces.reserve(tensors.size());
  for (const torch::Tensor& t : tensors) pieces.push_back(t.reshape(-1));
  return torch::cat(pieces);
}

// Copies `flat`'s pieces back into `tensors`, divided by `divisor` on the way (one pass
// over the grads instead of a division of the flat tensor, then a copy).
void unflattenInto(const torch::Tensor& flat, const std::vector<torch::Tensor>& tensors, int64_t divisor = 1) {
  int64_t offset = 0;
  for (torch::Tensor t : tensors) {
    torch::Tensor piece = flat.narrow(0, offset, t.numel()).view_as(t);
    if (divisor == 1)
      t.copy_(piece);
    else
      at::div_out(t, piece, divisor);
    offset += t.numel();
  }
}

}  // namespace
#endif  // TORCHLITE_C10D

#ifdef TORCHLITE_C10D
namespace {

// One gradient sync: the trained parameters in reverse order (about the order in which
// backward finishes their grads), in buckets that each go out as one flat allreduce once
// all their grads are in, strictly in bucket order, so every rank issues the same
// collectives in the same order whatever order its grads arrive in.
struct GradientSync {
  GradientSync(const std::vector<torch::Tensor>& trained, size_t bucketBytes) : params(trained.rbegin(), trained.rend()) {
    groups = buckets(params, std::min(kFirstBucketBytes, bucketBytes), bucketBytes);
    bucketOf.resize(params.size());
    for (size_t b = 0; b < groups.size(); ++b) {
      waiting.push_back(groups[b].size());
      for (size_t i : groups[b]) bucketOf[i] = b;
    }
    ready.assign(params.size(), 0);
    hadGrad.assign(params.size(), 0);
    flats.resize(groups.size());
    works.resize(groups.size());
  }

  // Sends bucket `next`. A parameter without a grad on this rank takes part as zeros, so
  // every rank sends the same layout.
  void launchNext(GroupState& group) {
    torch::NoGradGuard noGrad;
    for (size_t i : groups[next]) {
      torch::Tensor param = params[i];
      hadGrad[i] = param.grad().defined();
      if (!hadGrad[i]) param.mutable_grad() = torch::zeros_like(param);
    }
    std::vector<torch::Tensor> grads = gradsOf(next);
    flats[next] = {flatten(grads)};
    works[next] = commFor(group, grads.front().device()).allreduce(flats[next]);
    ++next;
  }

  // A parameter's grad is complete (the overlap's hook): sends the buckets now complete.
  void markReady(GroupState& group, size_t i) {
    if (ready[i]) return;
    ready[i] = 1;
    --waiting[bucketOf[i]];
    while (next < groups.size() && waiting[next] == 0) launchNext(group);
  }

  // Sends what is left, then one small message: the flag, then which parameters had a grad
  // on each rank (one unused everywhere keeps an undefined grad, so the optimizer skips it
  // as a single process would: a zero grad would still move it through weight decay).
  // Waits, averages, and returns the sum of the ranks' flags.
  double finish(GroupState& group, double flag) {
    torch::NoGradGuard noGrad;
    while (next < groups.size()) launchNext(group);
    torch::Device device = params.empty() ? torch::Device(torch::kCPU) : params.front().device();
    torch::Tensor local = torch::zeros({static_cast<int64_t>(params.size()) + 1}, torch::kDouble);
    auto* mine = local.data_ptr<double>();
    mine[0] = flag;
    for (size_t i = 0; i < params.size(); ++i) mine[i + 1] = hadGrad[i];
    std::vector<at::Tensor> flags{local.to(scratchFor(group, device))};
    auto flagWork = commFor(group, device).allreduce(flags);
    for (size_t b = 0; b < groups.size(); ++b) {
      run(works[b]);
      unflattenInto(flats[b][0], gradsOf(b), group.size);
    }
    run(flagWork);
    torch::Tensor summed = flags[0].to(torch::kCPU);  // from NCCL: the one host sync of the update
    const auto* sums = summed.data_ptr<double>();
    for (size_t i = 0; i < params.size(); ++i)
      if (sums[i + 1] == 0) {
        torch::Tensor param = params[i];
        param.mutable_grad() = torch::Tensor();
      }
    return sums[0];
  }

  std::vector<torch::Tensor> gradsOf(size_t bucket) const {
    std::vector<torch::Tensor> grads;
    for (size_t i : groups[bucket]) grads.push_back(params[i].grad());
    return grads;
  }

  std::vector<torch::Tensor> params;
  std::vector<std::vector<size_t>> groups;
  std::vector<size_t> bucketOf, waiting;
  std::vector<char> ready, hadGrad;
  size_t next = 0;  // the next bucket to send
  std::vector<std::vector<at::Tensor>> flats;
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
};

std::vector<torch::Tensor> trainedParameters(const OptimizerState& optimizer) {
  std::vector<torch::Tensor> trained;
  for (const torch::Tensor& param : optimizer.parameters())
    if (param.requires_grad()) trained.push_back(param);
  return trained;
}

}  // namespace

// The overlap's state, one per optimizer: the hooks it put on grad accumulators, and the
// sync armed for the current step. Hooks run on autograd's threads, hence the mutex.
struct OverlapState {
  std::mutex mutex;
  std::unordered_set<const c10::TensorImpl*> hooked;
  // Autograd keeps a parameter's grad accumulator only weakly; the hooks live on it, so
  // the accumulators are kept here (as c10d::Reducer does).
  std::vector<compat::GradAccumulator> accumulators;
  GroupPtr group;
  std::optional<GradientSync> sync;  // armed while set
  std::unordered_map<const c10::TensorImpl*, size_t> indexOf;
  std::exception_ptr error;  // a send that failed inside backward, rethrown at the sync

  void ready(const c10::TensorImpl* param) {
    std::lock_guard<std::mutex> lock(mutex);
    if (!sync || error) return;
    auto it = indexOf.find(param);
    if (it == indexOf.end()) return;
    try {
      sync->markReady(*group, it->second);
    } catch (...) {
      error = std::current_exception();
    }
  }
};

namespace {

class ReadyHook final : public torch::autograd::FunctionPostHook {
 public:
  ReadyHook(std::weak_ptr<OverlapState> state, const c10::TensorImpl* param) : state_(std::move(state)), param_(param) {}

  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list& /*inputs*/) override {
    if (auto state = state_.lock()) state->ready(param_);
    return outputs;
  }

 private:
  std::weak_ptr<OverlapState> state_;
  const c10::TensorImpl* param_;
};

}  // namespace
#else
struct OverlapState {};
#endif  // TORCHLITE_C10D

OverlapScope armOverlap(const GroupPtr& group, OptimizerState& optimizer, size_t bucketBytes) {
#ifdef TORCHLITE_C10D
  usable(*group);
  if (!optimizer.overlap) optimizer.overlap = std::make_shared<OverlapState>();
  std::shared_ptr<OverlapState> state = optimizer.overlap;
  std::vector<torch::Tensor> trained = trainedParameters(optimizer);
  std::lock_guard<std::mutex> lock(state->mutex);
  state->indexOf.clear();
  for (size_t i = 0; i < trained.size(); ++i) {
    const c10::TensorImpl* impl = trained[i].unsafeGetTensorImpl();
    state->indexOf.emplace(impl, trained.size() - 1 - i);  // GradientSync holds them reversed
    if (!state->hooked.insert(impl).second) continue;
    compat::GradAccumulator accumulator = torch::autograd::impl::grad_accumulator(trained[i]);
    accumulator->add_post_hook(std::make_unique<ReadyHook>(state, impl));
    state->accumulators.push_back(std::move(accumulator));
  }
  state->group = group;
  state->sync.emplace(trained, bucketBytes);
  state->error = nullptr;
  return OverlapScope(state);
#else
  (void)group, (void)optimizer, (void)bucketBytes;
  unavailable();
#endif
}

// A step that fails between arming and the sync leaves the other ranks waiting for
// buckets this one may already have sent, so the group is marked lost.
OverlapScope::~OverlapScope() {
#ifdef TORCHLITE_C10D
  if (!state_) return;
  std::lock_guard<std::mutex> lock(state_->mutex);
  if (!state_->sync) return;
  bool sent = state_->sync->next > 0;
  GroupPtr group = std::move(state_->group);
  state_->sync.reset();
  if (!sent) return;
  std::lock_guard<std::mutex> groupLock(group->mutex);
  if (!group->failure)
    group->failure = CodedError("TORCHLITE_DIST_ERROR", "rank " + std::to_string(group->rank) +
                                                            ": a data-parallel step failed after its gradients had started to sync, so "
                                                            "the ranks are out of step and the group cannot go on");
#endif
}

bool syncGradients(GroupState& group, OptimizerState& optimizer, size_t bucketBytes) {
#ifdef TORCHLITE_C10D
  std::optional<GradientSync> armed;
  std::exception_ptr error;
  if (optimizer.overlap) {
    std::lock_guard<std::mutex> lock(optimizer.overlap->mutex);
    armed.swap(optimizer.overlap->sync);
    error = optimizer.overlap->error;
    optimizer.overlap->group.reset();
  }
  double flag = optimizer.poisoned ? 1 : 0;
  bool poisoned = communicate(group, "the gradient allreduce", [&] {
                    if (error) std::rethrow_exception(error);
                    if (!armed) armed.emplace(trainedParameters(optimizer), bucketBytes);
                    return armed->finish(group, flag);
                  }) > 0;
  optimizer.poisoned = false;
  if (poisoned) {
    optimizer.clearGrads();
    optimizer.pending = 0;
  }
  return poisoned;
#else
  (void)group, (void)optimizer, (void)bucketBytes;
  unavailable();
#endif
}

void broadcastTensors(GroupState& group, const std::vector<torch::Tensor>& tensors, int root) {
#ifdef TORCHLITE_C10D
  communicate(group, "a broadcast", [&] {
    torch::NoGradGuard noGrad;
    c10d::BroadcastOptions options;
    options.rootRank = root;
    for (const auto& indices : buckets(tensors, SIZE_MAX, SIZE_MAX)) {
      std::vector<torch::Tensor> bucket = pick(tensors, indices);
      std::vector<at::Tensor> flat{flatten(bucket)};
      run(commFor(group, flat[0].device()).broadcast(flat, options));
      unflattenInto(flat[0], bucket);
    }
  });
#else
  (void)group, (void)tensors, (void)root;
  unavailable();
#endif
}

void broadcastModel(GroupState& group, torch::jit::Module& module) {
#ifdef TORCHLITE_C10D
  std::vector<torch::Tensor> tensors;
  std::string signature;
  for (const auto& p : module.named_parameters()) {
    tensors.push_back(p.value);
    signature += p.name + c10::str(p.value.sizes()) + c10::toString(p.value.scalar_type()) + ";";
  }
  for (const auto& b : module.named_buffers()) {
    tensors.push_back(b.value);
    signature += b.name + c10::str(b.value.sizes()) + c10::toString(b.value.scalar_type()) + ";";
  }
  // Equal signatures on every rank: the min and max of their hashes agree.
  torch::Device device = tensors.empty() ? torch::Device(torch::kCPU) : tensors.front().device();
  communicate(group, "the model check", [&] {
    auto hash = static_cast<int64_t>(std::hash<std::string>{}(signature) >> 1);
    auto scratch = torch::TensorOptions().dtype(torch::kLong).device(scratchFor(group, device));
    std::vector<at::Tensor> low{torch::full({1}, hash, scratch)}, high{torch::full({1}, hash, scratch)};
    c10d::AllreduceOptions min, max;
    min.reduceOp = c10d::ReduceOp::MIN;
    max.reduceOp = c10d::ReduceOp::MAX;
    compat::CommBackend& comm = commFor(group, device);
    run(comm.allreduce(low, min));
    run(comm.allreduce(high, max));
    if (low[0].item<int64_t>() != high[0].item<int64_t>())
      throw CodedError("TORCHLITE_DIST_MODEL_MISMATCH",
                       "the ranks hold different models (parameter or buffer names, shapes or dtypes differ): load and change the model "
                       "the same way on every rank before dataParallel");
  });
  broadcastTensors(group, tensors, 0);
#else
  (void)group, (void)module;
  unavailable();
#endif
}

SyncOptions parseSyncOptions(const Napi::Value& value) {
  SyncOptions options;
  if (value.IsNull()) return options;  // not data-parallel
  Baton baton(value.As<Napi::Object>(), "sync options");
  options.group = GroupWrap::StateOf(value.Env(), baton.value("group"));
  options.buffers = baton.boolean("buffers");
  options.overlap = baton.boolean("overlap");
  options.bucketBytes = static_cast<size_t>(baton.integer("bucketBytes"));
  return options;
}
}  // namespace tl
