// Custom-op libraries (torchvision's, a user's): loaded into the process as Python's
// torch.ops.load_library does, so that models which call their ops load and run.
#include "ops.h"

#include <dlfcn.h>

#include "job.h"

namespace tl {

// dlopen with RTLD_GLOBAL: the library's static initialisers register its operators with
// LibTorch's dispatcher, as Python's ctypes.CDLL does. Never closed: registered operators
// point into it. A job, since a large library takes tens of milliseconds to map and relocate.
Napi::Value LoadOpsLibrary(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    std::string path = info[0].As<Napi::String>().Utf8Value();
    return Job<bool>::Start(
        env, {torch::Device(torch::kCPU), Priority::Training},
        [path] {
          if (dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr) {
            const char* why = dlerror();
            throw CodedError("TORCHLITE_OPS_LOAD", "cannot load the op library " + path + ": " + (why ? why : "unknown error") +
                                                       " (it must be built for this LibTorch, " TORCH_VERSION ")");
          }
          return true;
        },
        [](Napi::Env env, bool&) { return env.Undefined(); });
  });
}

// The file of the libtorch_cpu this addon runs on, where an op library built for it is
// looked for beside (a pip torch's site-packages, Debian's dist-packages).
Napi::Value TorchLibraryPath(const Napi::CallbackInfo& info) {
  Dl_info where{};
  if (dladdr(reinterpret_cast<void*>(&at::get_num_threads), &where) == 0 || where.dli_fname == nullptr) return info.Env().Null();
  return Napi::String::New(info.Env(), where.dli_fname);
}

}  // namespace tl
