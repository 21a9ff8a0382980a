// The execution model: every LibTorch job runs on a lane, a dedicated thread per device
// (and, on the CPU, a second one for inference), never on libuv's pool or the JS thread.
//
// Why dedicated threads: OpenMP keeps a thread team per calling thread, and a team left
// spinning by one pool thread steals the cores from the next job on another (measured:
// ResNet-18 train step at 224², 12 img/s on the libuv pool against 20 img/s on one
// thread). One thread per lane also keeps LibTorch's caches warm.
//
// Why two CPU lanes: a training step holds its lane for its whole length (75 ms for a
// mobilenet-style CNN at 64 px, batch 16, on 2 cores), so a prediction queued behind it
// waits that long however it is prioritised. The inference lane runs beside training
// with a small intra-op budget of its own (the full budget while training is idle).
//
// Each CUDA device gets a lane of its own, with its own stream and device guard, so
// several GPUs run side by side; both priority classes share it.
#pragma once
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "pch.h"

namespace tl {

// Picks TorchScript's graph executor for the process from TORCHLITE_GRAPH_EXECUTOR; the
// lanes apply it to their threads. Called once when the addon loads.
void configureGraphExecutor();

// Turns graph optimisation on for the calling thread while it lives: freezing a module
// inlines and rewrites its graphs through passes that fail with it off (as the lanes run).
class GraphOptimizing {
 public:
  GraphOptimizing();
  ~GraphOptimizing();
  GraphOptimizing(const GraphOptimizing&) = delete;
  GraphOptimizing& operator=(const GraphOptimizing&) = delete;

 private:
  bool previous_;
};

// Inference (forward, predict, evaluate, reads) runs ahead of queued training.
enum class Priority { Inference = 0, Training = 1 };

// A job as the lane sees it. `run` does one slice and returns true when more remain (a
// multi-step job between two steps): the lane then lets waiting inference in before it
// resumes. `deliver` hands the finished job to JS; the lane calls it only after it has
// booked the job as done, so what JS sees next (runtime.queue()) already counts it.
struct Task {
  std::function<bool()> run;
  std::function<void()> deliver;
  std::chrono::steady_clock::time_point posted;  // set by Lane::post, for the wait statistics
  explicit operator bool() const { return static_cast<bool>(run); }
};

struct LaneStats {
  std::string name;
  int64_t queuedInference = 0;
  int64_t queuedTraining = 0;
  bool running = false;
  uint64_t completed = 0;
  uint64_t rejected = 0;  // inference refused at the call: the lane's queue was full
  uint64_t timedOut = 0;  // inference that reached the lane past its deadline, and did not run
  double waitP50Ms = 0;   // how long the last (up to 1,024) inference jobs waited in the queue
  double waitP99Ms = 0;
};

class Lane {
 public:
  // `before` and `after` run around each slice on the lane's thread (thread budgets,
  // CUDA stream order).
  Lane(std::string name, std::function<void()> before, std::function<void()> after = nullptr);
  ~Lane();
  Lane(const Lane&) = delete;
  Lane& operator=(const Lane&) = delete;

  void post(Task task, Priority priority);
  // Whether an inference job may join the queue (under `limit` queued); counts a refusal.
  bool admit(size_t limit);
  void countTimeout() { timedOut_.fetch_add(1, std::memory_order_relaxed); }
  LaneStats stats();
  bool busy() const { return busy_.load(std::memory_order_acquire); }

 private:
  void run();
  bool nextTask(Task& task);

  std::string name_;
  std::function<void()> before_;
  std::function<void()> after_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Task> queues_[2];  // indexed by Priority
  Task resumed_;                // a yielded multi-step job: runs before other training
  bool stopping_ = false;
  bool sleeping_ = false;
  std::atomic<size_t> queued_{0};
  std::atomic<bool> busy_{false};
  uint64_t completed_ = 0;
  std::atomic<uint64_t> rejected_{0};
  std::atomic<uint64_t> timedOut_{0};
  std::array<float, 1024> waits_{};  // inference queue waits in ms, a ring; guarded by mutex_
  size_t waitCount_ = 0;
  std::thread thread_;
};

class Executor {
 public:
  static Executor& instance();

  // The lane that runs a job on `device` with `priority`.
  Lane& laneFor(const torch::Device& device, Priority priority);
  std::vector<LaneStats> stats();

  // Intra-op threads for training (and for inference while no training runs).
  void setThreads(int threads);
  int threads() const { return threads_.load(); }
  // Intra-op threads of CPU inference while a training job runs; 0 runs CPU inference on
  // the training lane instead (ahead of queued training, behind the running step).
  void setInferenceThreads(int threads);
  int inferenceThreads() const { return inferenceThreads_.load(); }
  // Intra-op threads of CPU training while serving requests (forward, call, predict) ran on
  // the CPU in the last second: -1 leaves the inference lane its threads (setThreads' count
  // less setInferenceThreads', at least 1), 0 keeps setThreads' count, n uses n.
  void setTrainingThreadsWhileServing(int threads) { trainingWhileServing_.store(threads); }
  // Called by a serving request's job as it starts.
  void noteServing(const torch::Device& device);
  // How many inference jobs a lane may hold queued; more are refused with TORCHLITE_OVERLOADED.
  void setMaxQueuedInference(size_t limit) { maxQueuedInference_.store(limit); }
  size_t maxQueuedInference() const { return maxQueuedInference_.load(); }

 private:
  Executor();
  void applyCpuThreads(bool inferenceLane);

  std::atomic<int> threads_{1};
  std::atomic<int> inferenceThreads_{1};
  std::atomic<size_t> maxQueuedInference_{0};  // set from JS (runtime.ts owns the default)
  std::atomic<int> trainingWhileServing_{0};  // set from JS (runtime.ts owns the default)
  std::atomic<int64_t> lastServing_{INT64_MIN / 2};  // steady-clock ms of the last CPU serving request
  std::mutex mutex_;  // guards the lane list; lanes are created on first use, never removed
  std::unique_ptr<Lane> cpuTraining_;
  std::unique_ptr<Lane> cpuInference_;
  std::vector<std::unique_ptr<Lane>> cuda_;  // by device index
};

}  // namespace tl
