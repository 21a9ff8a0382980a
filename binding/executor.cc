// The lanes: one thread per CPU class and per GPU, each running its jobs in priority order.
#include "executor.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>

// setGraphExecutorOptimize: graph_executor.h declares it on 2.x and includes its 1.13 header.
#include <torch/csrc/jit/runtime/graph_executor.h>

#ifdef TORCHLITE_WITH_CUDA
#include <c10/core/Event.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#endif

// OpenMP's own setter: it changes the intra-op team size of the calling thread only,
// where at::set_num_threads also rewrites LibTorch's process-wide default and rebuilds
// its shared pthreadpool on every change. Declared weak and resolved from the OpenMP
// runtime LibTorch itself loaded (Debian's libgomp, or the copy a pip wheel bundles),
// so the addon never links a second runtime; without OpenMP it is null and unused.
extern "C" void omp_set_num_threads(int) __attribute__((weak));

namespace tl {
namespace {

void setIntraOpThreads(int threads) {
  // Per lane thread: only a change costs anything.
  thread_local int applied = 0;
  if (threads == applied) return;
  at::get_num_threads();  // LibTorch's lazy per-thread init first, or it overwrites ours later
  if (omp_set_num_threads != nullptr)
    omp_set_num_threads(threads);
  else
    at::set_num_threads(threads);
  applied = threads;
}

// TORCHLITE_GRAPH_EXECUTOR, read once: how TorchScript runs graphs (see configureGraphExecutor).
enum class GraphExecutor { Plain, Legacy, Profiling };
GraphExecutor graphExecutor = GraphExecutor::Plain;

// The optimize switch is thread-local in LibTorch, so each thread that runs graphs sets it.
void applyGraphExecutor() {
  if (graphExecutor == GraphExecutor::Plain) torch::jit::setGraphExecutorOptimize(false);
}

}  // namespace

// Python runs scripted models on the profiling executor, which records shapes for the first
// runs of every graph, then specialises and guards later runs, and differentiates the
// differentiable parts itself (autodiff subgraphs: a ReLU's backward becomes gt and mul, and
// max-pooling loses its channels-last kernel). On the CPU none of that pays: LibTorch fuses
// no CPU kernels by default. Unoptimised, the interpreter runs each aten op as eager PyTorch
// would, with autograd's own backward kernels: measured on the small CNN (batch 8 steps) and
// a tiny MLP, 8-17% faster than the legacy executor (which was 1.2-1.3x the profiling one),
// and equal to eager PyTorch in channels-last where the legacy executor ran 15% behind.
// TORCHLITE_GRAPH_EXECUTOR=legacy or =profiling (PyTorch's default, with its GPU fusers)
// choose the others.
void configureGraphExecutor() {
  static std::once_flag once;
  std::call_once(once, [] {
    const char* setting = std::getenv("TORCHLITE_GRAPH_EXECUTOR");
    std::string name = setting == nullptr ? "" : setting;
    graphExecutor = name == "profiling" ? GraphExecutor::Profiling : name == "legacy" ? GraphExecutor::Legacy : GraphExecutor::Plain;
    if (graphExecutor != GraphExecutor::Profiling) torch::jit::getProfilingMode() = false;
    applyGraphExecutor();  // the JS thread, for the few graphs it runs itself
  });
}

GraphOptimizing::GraphOptimizing() : previous_(torch::jit::getGraphExecutorOptimize()) { torch::jit::setGraphExecutorOptimize(true); }
GraphOptimizing::~GraphOptimizing() { torch::jit::setGraphExecutorOptimize(previous_); }

Lane::Lane(std::string name, std::function<void()> before, std::function<void()> after)
    : name_(std::move(name)), before_(std::move(before)), after_(std::move(after)), thread_([this] { run(); }) {}

Lane::~Lane() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_one();
  thread_.join();
}

void Lane::post(Task task, Priority priority) {
  bool sleeping;
  task.posted = std::chrono::steady_clock::now();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    queues_[static_cast<int>(priority)].push_back(std::move(task));
    queued_.fetch_add(1, std::memory_order_release);
    sleeping = sleeping_;
  }
  if (sleeping) wake_.notify_one();
}

bool Lane::admit(size_t limit) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (queues_[0].size() < limit) return true;
  rejected_.fetch_add(1, std::memory_order_relaxed);
  return false;
}

LaneStats Lane::stats() {
  std::lock_guard<std::mutex> lock(mutex_);
  LaneStats stats;
  stats.name = name_;
  stats.queuedInference = static_cast<int64_t>(queues_[0].size());
  stats.queuedTraining = static_cast<int64_t>(queues_[1].size()) + (resumed_ && !busy_ ? 1 : 0);
  stats.running = busy_.load();
  stats.completed = completed_;
  stats.rejected = rejected_.load();
  stats.timedOut = timedOut_.load();
  size_t n = std::min(waitCount_, waits_.size());
  if (n > 0) {
    std::vector<float> sorted(waits_.begin(), waits_.begin() + static_cast<std::ptrdiff_t>(n));
    std::sort(sorted.begin(), sorted.end());
    stats.waitP50Ms = sorted[n / 2];
    stats.waitP99Ms = sorted[std::min(n - 1, n * 99 / 100)];
  }
  return stats;
}

// Inference first, then a yielded multi-step job, then queued training. Called with
// the mutex held.
bool Lane::nextTask(Task& task) {
  if (!queues_[0].empty()) {
    task = std::move(queues_[0].front());
    queues_[0].pop_front();
    std::chrono::duration<float, std::milli> waited = std::chrono::steady_clock::now() - task.posted;
    waits_[waitCount_++ % waits_.size()] = waited.count();
  } else if (resumed_) {
    task = std::move(resumed_);
    resumed_ = Task{};
    return true;  // not counted in queued_: it was counted when first posted
  } else if (!queues_[1].empty()) {
    task = std::move(queues_[1].front());
    queues_[1].pop_front();
  } else {
    return false;
  }
  queued_.fetch_sub(1, std::memory_order_relaxed);
  return true;
}

void Lane::run() {
  using Clock = std::chrono::steady_clock;
  applyGraphExecutor();
  while (true) {
    // A training loop posts its next step as soon as the last one settles in JS; a
    // short spin catches it without a futex sleep and wake-up, which costs tens of
    // microseconds per step on small VMs (a tiny MLP step is ~100 µs of compute).
    for (auto until = Clock::now() + std::chrono::microseconds(200);
         queued_.load(std::memory_order_acquire) == 0 && !resumed_ && Clock::now() < until;)
      std::this_thread::yield();
    Task task;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      sleeping_ = true;
      wake_.wait(lock, [&] { return stopping_ || nextTask(task); });
      sleeping_ = false;
      if (!task) return;  // stopping, and nothing left to run
      busy_.store(true, std::memory_order_release);
    }
    // A failing hook (a CUDA error) must not end the lane: the task then meets the same
    // failure itself and reports it through its promise.
    try {
      before_();
    } catch (...) {
    }
    bool more = task.run();  // tasks catch their own exceptions (see Job)
    try {
      if (after_) after_();
    } catch (...) {
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      busy_.store(false, std::memory_order_release);
      if (more) {
        resumed_ = std::move(task);
        continue;
      }
      completed_ += 1;
    }
    task.deliver();
  }
}

Executor& Executor::instance() {
  // Never destroyed: lanes may still be running a job when static destructors run at
  // exit, and joining them there would hang the exit behind a training step.
  static Executor* executor = new Executor();
  return *executor;
}

Executor::Executor() : threads_(at::get_num_threads()) {}

namespace {
int64_t nowMs() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count();
}
}  // namespace

void Executor::noteServing(const torch::Device& device) {
  if (device.is_cpu()) lastServing_.store(nowMs(), std::memory_order_relaxed);
}

// Measured on a 2-core VM (bench/serve-load.mjs): with training's team on both cores, a
// served request competes with it for a core and training's own step slows (the two teams
// oversubscribe the machine); leaving inference its core while requests flow kept predict's
// p99 at 1.14-1.20x idle where it was 1.31-1.77x, and training kept 98-104% of its rate alone
// where it kept 60-63%. The choice is per slice, so it follows the requests within a step.
void Executor::applyCpuThreads(bool inferenceLane) {
  int threads = threads_.load();
  if (inferenceLane) {
    bool shared = cpuTraining_ && cpuTraining_->busy();
    setIntraOpThreads(shared ? std::max(inferenceThreads_.load(), 1) : threads);
    return;
  }
  int whileServing = trainingWhileServing_.load();
  if (whileServing < 0) whileServing = std::max(1, threads - std::max(1, inferenceThreads_.load()));
  bool serving = whileServing > 0 && nowMs() - lastServing_.load(std::memory_order_relaxed) < 1000;
  setIntraOpThreads(serving ? std::min(whileServing, threads) : threads);
}

Lane& Executor::laneFor(const torch::Device& device, Priority priority) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (device.is_cuda()) {
    size_t index = device.has_index() ? static_cast<size_t>(device.index()) : 0;
    if (cuda_.size() <= index) cuda_.resize(index + 1);
    if (!cuda_[index]) {
#ifdef TORCHLITE_WITH_CUDA
      auto deviceIndex = static_cast<c10::DeviceIndex>(index);
      // The lane's own stream keeps its kernels apart from other lanes' work. Tensors made
      // or read on the JS thread use the device's default stream, so each slice first
      // waits for what is queued there, and the default stream then waits for the slice:
      // two event records, no host sync.
      cuda_[index] = std::make_unique<Lane>(
          "cuda:" + std::to_string(index),
          [deviceIndex] {
            thread_local bool ready = false;
            if (!ready) {
              c10::cuda::set_device(deviceIndex);
              c10::cuda::setCurrentCUDAStream(c10::cuda::getStreamFromPool(false, deviceIndex));
              ready = true;
            }
            c10::Event queued(c10::DeviceType::CUDA);
            queued.record(c10::cuda::getDefaultCUDAStream(deviceIndex));
            queued.block(c10::cuda::getCurrentCUDAStream(deviceIndex));
          },
          [deviceIndex] {
            c10::Event done(c10::DeviceType::CUDA);
            done.record(c10::cuda::getCurrentCUDAStream(deviceIndex));
            done.block(c10::cuda::getDefaultCUDAStream(deviceIndex));
          });
#else
      throw std::logic_error("CUDA lane in a CPU-only build");  // parseDevice refuses CUDA devices first
#endif
    }
    return *cuda_[index];
  }
  if (!cpuTraining_) cpuTraining_ = std::make_unique<Lane>("cpu", [this] { applyCpuThreads(false); });
  if (priority == Priority::Training || inferenceThreads_.load() == 0) return *cpuTraining_;
  if (!cpuInference_) cpuInference_ = std::make_unique<Lane>("cpu:inference", [this] { applyCpuThreads(true); });
  return *cpuInference_;
}

std::vector<LaneStats> Executor::stats() {
  std::vector<Lane*> lanes;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (Lane* lane : {cpuTraining_.get(), cpuInference_.get()})
      if (lane) lanes.push_back(lane);
    for (const auto& lane : cuda_)
      if (lane) lanes.push_back(lane.get());
  }
  std::vector<LaneStats> result;
  for (Lane* lane : lanes) result.push_back(lane->stats());
  return result;
}

void Executor::setThreads(int threads) { threads_.store(threads); }

void Executor::setInferenceThreads(int threads) { inferenceThreads_.store(threads); }

}  // namespace tl
