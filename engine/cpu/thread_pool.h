// A fixed set of worker threads for the CPU backend's parallel loops. Starting std::threads per
// loop cost more than the loops themselves on the decode path (several loops per layer and step).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace lizard::cpu {

class ThreadPool {
 public:
  // num_threads counts the calling thread: num_threads - 1 workers are started (none for <= 1).
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs fn(begin, end) over [0, n) split into contiguous ranges of at least `min_per_range`
  // indices (so tiny loops run inline on the caller), at most one range per thread; the caller
  // takes the first range. Returns when every range is done. Calls from several threads run
  // one after another; fn must not call ParallelFor on the same pool.
  void ParallelFor(int64_t n, int64_t min_per_range,
                   const std::function<void(int64_t, int64_t)>& fn);

 private:
  void WorkerLoop(int index);

  std::mutex run_mutex_;  // one ParallelFor at a time
  // Guards the fields below; the atomics are written under it too and polled without it.
  std::mutex mutex_;
  std::condition_variable work_ready_, work_done_;
  std::atomic<uint64_t> generation_ = 0;  // bumped per ParallelFor; workers wake on a change
  std::atomic<bool> stopping_ = false;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  int64_t parts_ = 0;
  std::atomic<int> pending_ = 0;  // workers that have not finished the current generation
  std::vector<std::thread> workers_;
};

}  // namespace lizard::cpu
