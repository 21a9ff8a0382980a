// Every long LibTorch job runs on one dedicated thread, not on libuv's pool. OpenMP
// keeps a thread team per calling thread, and a team left spinning by one pool thread
// steals the cores from the next job on another (measured: ResNet-18 train step at 224²,
// 12 img/s on the libuv pool against 20 img/s on one thread). One thread also keeps
// LibTorch's caches warm and orders jobs exactly as they were queued.
#pragma once
#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

namespace tl {

class TorchThread {
 public:
  static TorchThread& instance();
  void post(std::function<void()> task);

 private:
  TorchThread();
  ~TorchThread();
  void run();

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> tasks_;
  bool stopping_ = false;
  bool sleeping_ = false;
  std::atomic<size_t> queued_{0};
  std::thread thread_;
};

}  // namespace tl
