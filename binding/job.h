// One long operation off the event loop. `work` runs on a lane (executor.h) and must not
// touch V8; `settle` turns its result into JS on the JS thread, reached through the
// environment's thread-safe function. State the work needs is captured by value
// (shared_ptr), so a JS object disposed or collected meanwhile cannot free it.
#pragma once
#include <functional>
#include <memory>
#include <optional>

#include "addon.h"
#include "common.h"
#include "executor.h"

namespace tl {

// Where a job runs: the lane of its device, in its priority class.
struct Place {
  torch::Device device;
  Priority priority;
};

template <class Result>
class Job {
 public:
  using Work = std::function<Result()>;
  // One step of a multi-step job; returns true while steps remain. The lane lets waiting
  // inference run between two steps.
  using Step = std::function<bool(std::optional<Result>&)>;
  using Settle = std::function<Napi::Value(Napi::Env, Result&)>;

  static Napi::Promise Start(Napi::Env env, Place place, Work work, Settle settle) {
    return StartSteps(
        env, place,
        [work = std::move(work)](std::optional<Result>& result) {
          result.emplace(work());
          return false;
        },
        std::move(settle));
  }

  static Napi::Promise StartSteps(Napi::Env env, Place place, Step step, Settle settle) {
    Lane& lane = Executor::instance().laneFor(place.device, place.priority);
    auto* job = new Job(env, std::move(settle));
    Napi::Promise promise = job->deferred_.Promise();
    AddonData& data = addonData(env);
    data.jobStarted(env);
    std::shared_ptr<CompletionChannel> channel = data.completions;
    lane.post(Task{[job, step = std::move(step)]() mutable {
                     try {
                       return step(job->result_);
                     } catch (...) {
                       job->error_ = describe(std::current_exception());
                       return false;
                     }
                   },
                   [job, channel] {
                     // An environment that has shut down meanwhile gets nothing; the job is dropped.
                     std::lock_guard<std::mutex> lock(channel->mutex);
                     if (!channel->open ||
                         channel->tsfn.NonBlockingCall(job, [](Napi::Env env, Napi::Function, Job* finished) { finished->finish(env); }) != napi_ok)
                       delete job;
                   }},
              place.priority);
    return promise;
  }

 private:
  Job(Napi::Env env, Settle settle) : deferred_(Napi::Promise::Deferred::New(env)), settle_(std::move(settle)) {}

  void finish(Napi::Env env) {
    std::unique_ptr<Job> owned(this);
    // Runs from the thread-safe function's callback, where an escaping C++ exception
    // would terminate Node; a worker being terminated makes every napi call fail.
    try {
      addonData(env).jobFinished(env);
      Napi::HandleScope scope(env);
      settle(env);
    } catch (...) {
    }
  }

  void settle(Napi::Env env) {
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

  Napi::Promise::Deferred deferred_;
  Settle settle_;
  std::optional<Result> result_;
  std::optional<ErrorInfo> error_;
};

}  // namespace tl
