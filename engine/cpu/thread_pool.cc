#include "engine/cpu/thread_pool.h"

#include <algorithm>
#include <chrono>

namespace lizard::cpu {
namespace {

// How long a thread polls before it sleeps on a condition variable: a decode step runs dozens
// of short parallel loops back to back, and waking a sleeping thread costs about as much as a
// small loop. Bounded, so idle workers do not take cores from other processes for long.
constexpr auto kSpin = std::chrono::microseconds(50);

// Polls done() for up to kSpin; true when it became true.
template <typename Done>
bool SpinUntil(Done done) {
  const auto deadline = std::chrono::steady_clock::now() + kSpin;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    // Gives the core to another runnable thread, e.g. the one this thread waits for.
    std::this_thread::yield();
  }
  return true;
}

}  // namespace

ThreadPool::ThreadPool(int num_threads) {
  for (int i = 1; i < num_threads; ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  work_ready_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void ThreadPool::ParallelFor(int64_t n, int64_t min_per_range,
                             const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  const int64_t max_parts = std::max<int64_t>(1, n / std::max<int64_t>(1, min_per_range));
  const int64_t parts = std::min<int64_t>(num_threads(), max_parts);
  if (parts == 1) {
    fn(0, n);
    return;
  }
  std::lock_guard<std::mutex> run_lock(run_mutex_);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    fn_ = &fn;
    n_ = n;
    parts_ = parts;
    // Every worker acknowledges the generation, even those without a range, so that none can
    // still be reading fn_ when the next ParallelFor replaces it.
    pending_ = static_cast<int>(workers_.size());
    ++generation_;
  }
  work_ready_.notify_all();
  fn(0, n / parts);
  if (SpinUntil([this] { return pending_.load() == 0; })) return;
  std::unique_lock<std::mutex> lock(mutex_);
  work_done_.wait(lock, [this] { return pending_.load() == 0; });
}

void ThreadPool::WorkerLoop(int index) {
  uint64_t seen = 0;
  while (true) {
    SpinUntil([&] { return generation_.load() != seen || stopping_.load(); });
    const std::function<void(int64_t, int64_t)>* fn;
    int64_t n, parts;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      work_ready_.wait(lock, [&] { return stopping_ || generation_ != seen; });
      if (stopping_) return;
      seen = generation_;
      fn = fn_;
      n = n_;
      parts = parts_;
    }
    if (index < parts) (*fn)(n * index / parts, n * (index + 1) / parts);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (--pending_ == 0) work_done_.notify_one();
    }
  }
}

}  // namespace lizard::cpu
