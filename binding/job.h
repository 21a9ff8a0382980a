// One long operation off the event loop. `work` runs on a lane (executor.h) and must not
// touch V8; `settle` turns its result into JS on the JS thread, reached through the
// environment's thread-safe function. State the work needs is captured by value
// (shared_ptr), so a JS object disposed or collected meanwhile cannot free it.
#pragma once
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>

#include "addon.h"
#include "common.h"
#include "executor.h"

namespace tl {

// What an inference request asks of its lane (JS's `timeoutMs` and `signal`): a time to start
// by, and a flag JS raises to withdraw it. A job that reaches its lane past the one, or with
// the other raised, does not run.
struct Admission {
  std::optional<std::chrono::steady_clock::time_point> deadline;
  std::shared_ptr<std::atomic<bool>> withdrawn = std::make_shared<std::atomic<bool>>(false);
};

// Reads `{ timeoutMs }` (null: no deadline) from a request baton; the deadline counts from now.
// A null baton is torchlite's own inference (fineTune's feature cache): no admission, and it
// does not count as serving (see Executor::noteServing).
inline std::optional<Admission> parseAdmission(const Napi::Value& value) {
  if (value.IsNull()) return std::nullopt;
  Admission admission;
  Napi::Value timeout = Baton(value.As<Napi::Object>(), "request options").value("timeoutMs");
  if (!timeout.IsNull())
    admission.deadline = std::chrono::steady_clock::now() +
                         std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                             std::chrono::duration<double, std::milli>(timeout.As<Napi::Number>().DoubleValue()));
  return admission;
}

// Where a job runs: the lane of its device, in its priority class; inference may carry an
// admission.
struct Place {
  torch::Device device;
  Priority priority;
  std::optional<Admission> admission = std::nullopt;
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
    Executor& executor = Executor::instance();
    Lane& lane = executor.laneFor(place.device, place.priority);
    if (place.priority == Priority::Inference && !lane.admit(executor.maxQueuedInference()))
      throw CodedError("TORCHLITE_OVERLOADED", "the " + deviceName(place.device) + " lane already holds " +
                                                   std::to_string(executor.maxQueuedInference()) +
                                                   " queued inference jobs; retry later, or raise the limit with runtime.setQueueLimits({ lane })");
    auto* job = new Job(env, std::move(settle));
    Napi::Promise promise = job->deferred_.Promise();
    std::optional<Admission> admission = std::move(place.admission);
    if (admission) {
      // The promise carries how to withdraw the request while it waits (an AbortSignal).
      std::shared_ptr<std::atomic<bool>> flag = admission->withdrawn;
      promise.Set("withdraw", Napi::Function::New(env, [flag](const Napi::CallbackInfo& info) {
        flag->store(true, std::memory_order_release);
        return info.Env().Undefined();
      }));
    }
    AddonData& data = addonData(env);
    data.jobStarted(env);
    std::shared_ptr<CompletionChannel> channel = data.completions;
    lane.post(Task{[job, step = std::move(step), admission = std::move(admission), &lane, device = place.device]() mutable {
                     try {
                       if (admission) {
                         if (admission->withdrawn->load(std::memory_order_acquire))
                           throw CodedError("TORCHLITE_ABORTED", "the request was withdrawn before it started");
                         if (admission->deadline && std::chrono::steady_clock::now() > *admission->deadline) {
                           lane.countTimeout();
                           throw CodedError("TORCHLITE_TIMEOUT", "the request waited in the lane's queue past its deadline (timeoutMs) and did not run");
                         }
                         Executor::instance().noteServing(device);
                         admission.reset();  // checked once, at the start
                       }
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
