// One long operation off the event loop. `work` runs on a libuv worker thread and must
// not touch V8; `settle` turns its result into JS on the JS thread. State the work needs
// is captured by value (shared_ptr), so a JS object disposed or collected meanwhile
// cannot free it under the worker.
#pragma once
#include <functional>
#include <optional>

#include "common.h"

namespace tl {

template <class Result>
class Job : public Napi::AsyncWorker {
 public:
  using Work = std::function<Result()>;
  using Settle = std::function<Napi::Value(Napi::Env, Result&)>;

  static Napi::Promise Start(Napi::Env env, Work work, Settle settle) {
    auto* job = new Job(env, std::move(work), std::move(settle));
    Napi::Promise promise = job->deferred_.Promise();
    job->Queue();  // libuv owns the job from here and deletes it after OnOK/OnError.
    return promise;
  }

 protected:
  void Execute() override {
    try {
      result_.emplace(work_());
    } catch (...) {
      error_ = describe(std::current_exception());
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    if (error_) {
      deferred_.Reject(toJsError(env, *error_).Value());
      return;
    }
    try {
      deferred_.Resolve(settle_(env, *result_));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    } catch (...) {
      deferred_.Reject(toJsError(env, describe(std::current_exception())).Value());
    }
  }

 private:
  Job(Napi::Env env, Work work, Settle settle)
      : Napi::AsyncWorker(env, "torchlite"), deferred_(Napi::Promise::Deferred::New(env)),
        work_(std::move(work)), settle_(std::move(settle)) {}

  Napi::Promise::Deferred deferred_;
  Work work_;
  Settle settle_;
  std::optional<Result> result_;
  std::optional<ErrorInfo> error_;
};

}  // namespace tl
