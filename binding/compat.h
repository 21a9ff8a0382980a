// Every LibTorch 1.13 <-> 2.x difference torchlite relies on, and nothing else.
#pragma once
#include <torch/version.h>

#define TORCHLITE_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace tl::compat {

// 2.x replaced c10::optional by std::optional (c10's name survives only as an alias
// for a while), so spell it once here.
#if TORCHLITE_TORCH_AT_LEAST(2, 0)
template <class T>
using optional = std::optional<T>;
#else
template <class T>
using optional = c10::optional<T>;
#endif

}  // namespace tl::compat
