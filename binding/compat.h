// Every LibTorch 1.13 <-> 2.x difference torchlite relies on, and nothing else.
#pragma once
#include <torch/version.h>

#define TORCHLITE_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace tl::compat {

// The grad accumulator of a leaf tensor (where a post hook sees its gradient complete): a
// std::shared_ptr<Node> through 2.12, a c10::intrusive_ptr<Node> from 2.13. Named by what the
// call returns, so either compiles.
using GradAccumulator = decltype(torch::autograd::impl::grad_accumulator(std::declval<const at::Tensor&>()));

// 2.x replaced c10::optional by std::optional (c10's name survives only as an alias
// for a while), so spell it once here.
#if TORCHLITE_TORCH_AT_LEAST(2, 0)
template <class T>
using optional = std::optional<T>;
#else
template <class T>
using optional = c10::optional<T>;
#endif

// Gathers the LibTorch warnings raised on the calling thread while it lives, instead of
// printing them (handlers are per thread). 2.0 passes handlers a c10::Warning and moved the
// guard from c10::Warning into c10::WarningUtils.
class WarningCollector : public c10::WarningHandler {
 public:
  WarningCollector() : guard_(this) {}
#if TORCHLITE_TORCH_AT_LEAST(2, 0)
  void process(const c10::Warning& warning) override { messages.push_back(warning.msg()); }
#else
  void process(const c10::SourceLocation&, const std::string& msg, const bool) override { messages.push_back(msg); }
#endif
  std::vector<std::string> messages;

 private:
#if TORCHLITE_TORCH_AT_LEAST(2, 0)
  c10::WarningUtils::WarningHandlerGuard guard_;
#else
  c10::Warning::WarningHandlerGuard guard_;
#endif
};

// Adam's first moment, written as each version's Python writes it so that parity holds on
// both: 1.13 computes exp_avg * beta1 + grad * (1 - beta1), 2.0 switched to
// exp_avg.lerp_(grad, 1 - beta1), which rounds differently (1e-5 relative after 10 steps).
inline void decayFirstMoment(std::vector<at::Tensor>& expAvg, const std::vector<at::Tensor>& grads, double beta1) {
#if TORCHLITE_TORCH_AT_LEAST(2, 0)
  at::_foreach_lerp_(expAvg, grads, 1 - beta1);
#else
  at::_foreach_mul_(expAvg, beta1);
  at::_foreach_add_(expAvg, grads, 1 - beta1);
#endif
}

}  // namespace tl::compat

#include <ATen/autocast_mode.h>

namespace tl::compat {

// Autocast for one scope of one thread (its state is thread-local, so this must run on
// the worker). 2.4 moved to per-device setters and deprecated the old ones.
class AutocastScope {
 public:
  AutocastScope(c10::DeviceType device, c10::ScalarType dtype) : device_(device) {
    at::autocast::increment_nesting();
#if TORCHLITE_TORCH_AT_LEAST(2, 4)
    at::autocast::set_autocast_dtype(device, dtype);
    at::autocast::set_autocast_enabled(device, true);
#else
    if (device == c10::DeviceType::CUDA) {
      at::autocast::set_autocast_gpu_dtype(dtype);
      at::autocast::set_enabled(true);
    } else {
      at::autocast::set_autocast_cpu_dtype(dtype);
      at::autocast::set_cpu_enabled(true);
    }
#endif
  }

  ~AutocastScope() {
#if TORCHLITE_TORCH_AT_LEAST(2, 4)
    at::autocast::set_autocast_enabled(device_, false);
#else
    if (device_ == c10::DeviceType::CUDA)
      at::autocast::set_enabled(false);
    else
      at::autocast::set_cpu_enabled(false);
#endif
    // Casts are cached per autocast region, as Python's torch.autocast does on exit.
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  }

  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  c10::DeviceType device_;
};

}  // namespace tl::compat

#ifdef TORCHLITE_C10D
namespace tl::compat {

// 2.0 moved the collectives from ProcessGroup into per-device Backends: ProcessGroupGloo
// derives from c10d::Backend there and from c10d::ProcessGroup in 1.13, with the same
// collective signatures, so torchlite holds it by this base and never needs the 2.x
// dispatching ProcessGroup.
#if TORCHLITE_TORCH_AT_LEAST(2, 0)
using CommBackend = c10d::Backend;
#else
using CommBackend = c10d::ProcessGroup;
#endif

#ifdef TORCHLITE_WITH_NCCL
// From 2.4 a ProcessGroupNCCL destroyed without shutdown() (Python's
// destroy_process_group calls it) prints a warning on every rank; 1.13 has neither.
inline void shutdownNccl(CommBackend& nccl) {
#if TORCHLITE_TORCH_AT_LEAST(2, 4)
  static_cast<c10d::ProcessGroupNCCL&>(nccl).shutdown();
#else
  (void)nccl;
#endif
}
#endif

}  // namespace tl::compat
#endif
