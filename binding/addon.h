// Per-environment state: each Node worker_thread that loads the addon gets its own
// class constructors and completion channel, so nothing here is a process global.
#pragma once
#include <memory>
#include <mutex>

#include "pch.h"

namespace tl {

// The way finished jobs reach one environment. The lanes outlive environments
// (worker_threads end, Node exits), so it may only call into the thread-safe function
// while `open`; the environment's cleanup hook closes it under the mutex first.
struct CompletionChannel {
  std::mutex mutex;
  bool open = true;
  Napi::ThreadSafeFunction tsfn;
};

struct AddonData {
  Napi::FunctionReference tensorClass;
  Napi::FunctionReference modelClass;
  Napi::FunctionReference optimizerClass;
  Napi::FunctionReference groupClass;
  Napi::FunctionReference scriptObjectClass;
  // Holds the event loop open only while jobs are in flight.
  std::shared_ptr<CompletionChannel> completions = std::make_shared<CompletionChannel>();
  int64_t inFlight = 0;

  void jobStarted(Napi::Env env) {
    if (inFlight++ == 0) completions->tsfn.Ref(env);
  }
  void jobFinished(Napi::Env env) {
    if (--inFlight == 0) completions->tsfn.Unref(env);
  }
};

inline AddonData& addonData(Napi::Env env) { return *env.GetInstanceData<AddonData>(); }

}  // namespace tl
