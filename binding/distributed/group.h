// The distributed room's shared part: a process group's state and the helpers its files use
// (the c10d headers stay in binding/distributed/, so the rest of the addon compiles without them).
#pragma once

#include <algorithm>
#include <chrono>
#include <sstream>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#ifdef TORCHLITE_GLOO
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#define TORCHLITE_C10D 1
#endif
#if defined(TORCHLITE_C10D) && defined(TORCHLITE_NCCL)
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#define TORCHLITE_WITH_NCCL 1
#endif

#include "compat.h"
#include "distributed.h"
#include "job.h"


namespace tl {

struct GroupState {
  int rank = 0;
  int size = 1;
  std::string address;  // host:port of the store, for messages
  std::chrono::milliseconds timeout{0};
#ifdef TORCHLITE_C10D
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<compat::CommBackend> gloo;  // CPU tensors, and CUDA ones when there is no NCCL
  c10::intrusive_ptr<compat::CommBackend> nccl;  // CUDA tensors, when the group was made with NCCL
#endif
  // Set by the first failed collective: Gloo cannot recover a group that lost a peer, so
  // every later call fails at once with the same error instead of waiting for a timeout.
  std::mutex mutex;
  std::optional<CodedError> failure;
  bool destroyed = false;

#ifdef TORCHLITE_WITH_NCCL
  ~GroupState() {
    try {
      if (nccl) compat::shutdownNccl(*nccl);
    } catch (const std::exception&) {
      // A group that lost a peer may fail to shut down cleanly; it is going away regardless.
    }
  }
#endif
};

std::string messageOf(const std::exception& e);
std::string seconds(std::chrono::milliseconds ms);
// Gloo and the store report a lost peer or a timeout only in their message text.
CodedError explain(const GroupState& group, const std::string& cause, const char* what);
// Throws when the group cannot be used: destroyed, or failed before.
void usable(GroupState& group);

// Runs one use of the group; a failure poisons the group for every later call.
template <class F>
auto communicate(GroupState& group, const char* what, F&& body) -> decltype(body()) {
  usable(group);
  try {
    return body();
  } catch (const CodedError&) {
    throw;
  } catch (const std::exception& e) {
    CodedError error = explain(group, messageOf(e), what);
    std::lock_guard<std::mutex> lock(group.mutex);
    group.failure = error;
    throw error;
  }
}

// Collectives run on the lane of their tensor's device, in the training class: JS issues
// them one at a time per group (see distributed.ts), so every rank runs them in one order.
Place placeOf(const torch::Tensor& tensor);
[[noreturn]] void unavailable();

#ifdef TORCHLITE_C10D
void run(const c10::intrusive_ptr<c10d::Work>& work);
// As PyTorch's default group does: NCCL for CUDA tensors where the group has it, Gloo for
// the rest (the JS side refuses CUDA tensors in a Gloo-only group's own collectives).
compat::CommBackend& commFor(GroupState& group, const torch::Device& device);
// Where a small message about tensors on `device` (flags, hashes) must live: NCCL reduces
// device memory only, Gloo is cheapest on the host.
torch::Device scratchFor(const GroupState& group, const torch::Device& device);
#endif

}  // namespace tl
