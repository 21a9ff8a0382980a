#include "executor.h"

#include <chrono>

namespace tl {

TorchThread& TorchThread::instance() {
  static TorchThread thread;
  return thread;
}

TorchThread::TorchThread() : thread_([this] { run(); }) {}

TorchThread::~TorchThread() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_one();
  thread_.join();
}

void TorchThread::post(std::function<void()> task) {
  bool sleeping;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    tasks_.push_back(std::move(task));
    queued_.fetch_add(1, std::memory_order_release);
    sleeping = sleeping_;
  }
  if (sleeping) wake_.notify_one();
}

void TorchThread::run() {
  using Clock = std::chrono::steady_clock;
  while (true) {
    // A training loop posts its next step as soon as the last one settles in JS; a
    // short spin catches it without a futex sleep and wake-up, which costs tens of
    // microseconds per step on small VMs (a tiny MLP step is ~100 µs of compute).
    for (auto until = Clock::now() + std::chrono::microseconds(200);
         queued_.load(std::memory_order_acquire) == 0 && Clock::now() < until;)
      std::this_thread::yield();
    std::function<void()> task;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      sleeping_ = true;
      wake_.wait(lock, [this] { return stopping_ || !tasks_.empty(); });
      sleeping_ = false;
      if (tasks_.empty()) return;  // stopping, and nothing left to run
      task = std::move(tasks_.front());
      tasks_.pop_front();
      queued_.fetch_sub(1, std::memory_order_relaxed);
    }
    task();  // tasks catch their own exceptions (see Job)
  }
}

}  // namespace tl
