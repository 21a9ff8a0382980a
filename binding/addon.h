// Per-environment state: each Node worker_thread that loads the addon gets its own
// class constructors, so nothing here is a process global.
#pragma once
#include "pch.h"

namespace tl {

struct AddonData {
  Napi::FunctionReference tensorClass;
  Napi::FunctionReference modelClass;
  Napi::FunctionReference optimizerClass;
};

inline AddonData& addonData(Napi::Env env) { return *env.GetInstanceData<AddonData>(); }

}  // namespace tl
