// Per-environment state: each Node worker_thread that loads the addon gets its own
// class constructors and completion channel, so nothing here is a process global.
#pragma once
#include "pch.h"

namespace tl {

struct AddonData {
  Napi::FunctionReference tensorClass;
  Napi::FunctionReference modelClass;
  Napi::FunctionReference optimizerClass;
  // Jobs finished on the torch thread come back to this environment through here. It
  // holds the event loop open only while jobs are in flight.
  Napi::ThreadSafeFunction completions;
  int64_t inFlight = 0;

  void jobStarted(Napi::Env env) {
    if (inFlight++ == 0) completions.Ref(env);
  }
  void jobFinished(Napi::Env env) {
    if (--inFlight == 0) completions.Unref(env);
  }
};

inline AddonData& addonData(Napi::Env env) { return *env.GetInstanceData<AddonData>(); }

}  // namespace tl
