// Runs detrex_lite's CUDA kernels (csrc/cuda/ms_deform_attn_kernels.cuh) on the CPU, so that
// their indexing, vector packs, warp reductions and bounds are tested on machines without a GPU.
//
// It provides what csrc/cuda/device_primitives.cuh provides on a GPU, plus a launcher:
// * every CUDA thread of a block is an OS thread (blocks run one after another), with its own
//   threadIdx / blockIdx;
// * shuffles are exchanged between the lanes named by the mask, in lockstep; a shuffle whose
//   mask names a lane that has exited, a lane that is not itself in the mask, lanes that disagree
//   on the mask, or a partner outside the mask is an error (undefined behaviour on a GPU);
// * every global load / store / atomic is checked: the bytes must lie inside one live allocation
//   made by the tracking CPU allocator (TrackedAllocations) and the address must be aligned for
//   the type (the 16-byte vector packs included);
// * atomics are serialised by a mutex (the order of float additions is therefore one of the
//   orders a GPU may pick).
// An error in any thread stops the launch and is raised as std::runtime_error naming it.
#pragma once

#ifndef DETREX_LITE_CUDA_EMULATION
#error "emulated_device.h is for the CPU emulation build only"
#endif

#include "pack.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <atomic>
#include <cmath>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

namespace detrex_lite {
namespace emulation {

struct Index3 {
  unsigned x = 0, y = 0, z = 0;
};

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---- live allocations ---------------------------------------------------------------------

class TrackedAllocations {
 public:
  static TrackedAllocations& get() {
    static TrackedAllocations instance;
    return instance;
  }
  void add(const void* p, size_t n) {
    std::lock_guard<std::mutex> lock(mutex_);
    live_[reinterpret_cast<uintptr_t>(p)] = n;
  }
  void remove(const void* p) {
    std::lock_guard<std::mutex> lock(mutex_);
    live_.erase(reinterpret_cast<uintptr_t>(p));
  }
  bool contains(const void* p, size_t n) {
    const uintptr_t begin = reinterpret_cast<uintptr_t>(p);
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = live_.upper_bound(begin);
    if (it == live_.begin()) return false;
    --it;
    return begin >= it->first && begin + n <= it->first + it->second;
  }

 private:
  std::mutex mutex_;
  std::map<uintptr_t, size_t> live_;
};

// A CPU allocator that records every live allocation (installed for the duration of one
// emulated op call by AllocatorScope).
struct TrackingAllocator final : c10::Allocator {
  static void release(void* p) {
    TrackedAllocations::get().remove(p);
    std::free(p);
  }
  c10::DataPtr allocate(size_t n) override {
    const size_t rounded = (n + 63) / 64 * 64;
    void* p = rounded == 0 ? nullptr : std::aligned_alloc(64, rounded);
    if (rounded != 0 && p == nullptr) throw std::bad_alloc();
    if (p != nullptr) TrackedAllocations::get().add(p, n);
    return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &release; }
  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }
};

class AllocatorScope {
 public:
  AllocatorScope() : previous_(c10::GetCPUAllocator()) { c10::SetCPUAllocator(&tracking(), kPriority); }
  ~AllocatorScope() { c10::SetCPUAllocator(previous_, kPriority); }

 private:
  static constexpr uint8_t kPriority = 100;
  static TrackingAllocator& tracking() {
    static TrackingAllocator allocator;
    return allocator;
  }
  c10::Allocator* previous_;
};

// ---- one launch ---------------------------------------------------------------------------

struct Warp {
  std::mutex mutex;
  std::condition_variable cv;
  uint64_t posted[32] = {0};  // shuffle sequence number each lane has posted
  uint64_t taken[32] = {0};   // ... and finished reading
  uint64_t sequence[32] = {0};
  unsigned mask[32] = {0};
  unsigned char value[32][8] = {};
  bool exited[32] = {false};
};

struct LaunchState {
  Index3 grid, block;
  std::mutex error_mutex;
  std::string error;
  std::atomic<bool> failed{false};

  void fail(const std::string& message) {
    std::lock_guard<std::mutex> lock(error_mutex);
    if (!failed) error = message;
    failed = true;
  }
};

inline LaunchState*& current_launch() {
  static LaunchState* launch = nullptr;
  return launch;
}

struct ThreadContext {
  Index3 thread_idx, block_idx;
  Warp* warp = nullptr;
  int lane = 0;
};

inline ThreadContext& context() {
  thread_local ThreadContext ctx;
  return ctx;
}

[[noreturn]] inline void raise(const std::string& what) {
  std::ostringstream s;
  const auto& c = context();
  s << "[block " << c.block_idx.x << ", thread " << c.thread_idx.x << "] " << what;
  current_launch()->fail(s.str());
  throw Error(s.str());
}

inline std::mutex& atomic_mutex() {
  static std::mutex mutex;
  return mutex;
}

inline void check_access(const void* p, size_t bytes, size_t alignment, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % alignment != 0) {
    std::ostringstream s;
    s << what << " of " << bytes << " bytes at " << p << " is not aligned to " << alignment << " bytes";
    raise(s.str());
  }
  if (!TrackedAllocations::get().contains(p, bytes)) {
    std::ostringstream s;
    s << what << " of " << bytes << " bytes at " << p << " is outside every live allocation";
    raise(s.str());
  }
}

constexpr auto kWaitLimit = std::chrono::seconds(60);

// Exchange `v` with lane (lane ^ lane_mask) among the lanes of `mask`.
template <typename T>
T shuffle_xor(unsigned mask, T v, int lane_mask, int width) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of an unsupported type");
  auto& c = context();
  Warp& w = *c.warp;
  const int lane = c.lane;
  if (!((mask >> lane) & 1u)) raise("shuffle by a lane that is not in its own mask");
  if (width <= 0 || width > 32 || (width & (width - 1)) != 0) raise("shuffle width must be a power of two <= 32");
  if (lane_mask >= width) raise("shuffle xor offset reaches outside the width segment");
  const int source = lane ^ lane_mask;
  if (!((mask >> source) & 1u)) raise("shuffle reads a lane outside the mask");
  std::unique_lock<std::mutex> lock(w.mutex);
  const uint64_t seq = ++w.sequence[lane];
  std::memcpy(w.value[lane], &v, sizeof(T));
  w.mask[lane] = mask;
  w.posted[lane] = seq;
  w.cv.notify_all();
  auto all_in_mask = [&](const uint64_t* counter) {
    for (int i = 0; i < 32; ++i) {
      if (!((mask >> i) & 1u)) continue;
      if (counter[i] < seq) {
        if (w.exited[i]) {
          lock.unlock();
          raise("shuffle mask names lane " + std::to_string(i) + ", which has exited");
        }
        return false;
      }
    }
    return true;
  };
  auto wait_for = [&](const uint64_t* counter) {
    const auto deadline = std::chrono::steady_clock::now() + kWaitLimit;
    while (!all_in_mask(counter)) {
      if (current_launch()->failed) {
        lock.unlock();
        throw Error("stopped: another thread failed");
      }
      if (std::chrono::steady_clock::now() > deadline) {
        lock.unlock();
        raise("shuffle waited 60 s for its partners (deadlock)");
      }
      w.cv.wait_for(lock, std::chrono::milliseconds(20));
    }
  };
  wait_for(w.posted);
  for (int i = 0; i < 32; ++i) {
    if (((mask >> i) & 1u) && w.posted[i] == seq && w.mask[i] != mask) {
      lock.unlock();
      raise("lanes of one shuffle disagree on its mask");
    }
  }
  T result;
  std::memcpy(&result, w.value[source], sizeof(T));
  w.taken[lane] = seq;
  w.cv.notify_all();
  wait_for(w.taken);
  return result;
}

// Runs `kernel(args...)` for every thread of the grid (1-D grids and blocks).
template <typename... KernelArgs, typename... Args>
void launch(void (*kernel)(KernelArgs...), unsigned blocks, int threads, Args&&... args) {
  if (threads <= 0 || threads > 1024) throw std::invalid_argument("emulated launch: 1 to 1024 threads per block");
  LaunchState state;
  state.grid.x = blocks;
  state.block.x = static_cast<unsigned>(threads);
  current_launch() = &state;
  const int warps = (threads + 31) / 32;
  for (unsigned b = 0; b < blocks && !state.failed; ++b) {
    std::vector<Warp> warp_states(static_cast<size_t>(warps));
    std::vector<std::thread> pool;
    pool.reserve(static_cast<size_t>(threads));
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, b, t] {
        auto& c = context();
        c.thread_idx = Index3{static_cast<unsigned>(t), 0, 0};
        c.block_idx = Index3{b, 0, 0};
        c.warp = &warp_states[static_cast<size_t>(t / 32)];
        c.lane = t % 32;
        try {
          kernel(static_cast<KernelArgs>(args)...);
        } catch (const Error&) {
          // recorded in state
        } catch (const std::exception& e) {
          state.fail(std::string("[block ") + std::to_string(b) + ", thread " + std::to_string(t) + "] " + e.what());
        }
        Warp& w = *c.warp;
        std::lock_guard<std::mutex> lock(w.mutex);
        w.exited[c.lane] = true;
        w.cv.notify_all();
      });
    }
    for (auto& th : pool) th.join();
  }
  current_launch() = nullptr;
  if (state.failed) throw std::runtime_error("emulated CUDA kernel failed: " + state.error);
}

}  // namespace emulation

// ---- the CUDA built-ins that csrc/cuda/device_primitives.cuh uses ---------------------------
// That file itself is compiled below: its load / store / atomics / group_sum run here as on a GPU,
// with DETREX_LITE_CHECK_ACCESS checking every access.

}  // namespace detrex_lite

#define threadIdx (::detrex_lite::emulation::context().thread_idx)
#define blockIdx (::detrex_lite::emulation::context().block_idx)
#define blockDim (::detrex_lite::emulation::current_launch()->block)
#define DETREX_LITE_CHECK_ACCESS(p, bytes, alignment, what) \
  ::detrex_lite::emulation::check_access((p), (bytes), (alignment), (what))

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return ::detrex_lite::emulation::shuffle_xor(mask, v, lane_mask, width);
}

// Atomics are serialised by one mutex (the order of float additions is one a GPU may pick).
template <typename T>
inline T atomicAdd(T* p, T v) {
  std::lock_guard<std::mutex> lock(::detrex_lite::emulation::atomic_mutex());
  const T old = *p;
  *p = old + v;
  return old;
}

struct alignas(16) float4 {
  float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline float4 atomicAdd(float4* p, float4 v) {
  ::detrex_lite::emulation::check_access(p, sizeof(float4), 16, "float4 atomic add");
  std::lock_guard<std::mutex> lock(::detrex_lite::emulation::atomic_mutex());
  const float4 old = *p;
  *p = float4{old.x + v.x, old.y + v.y, old.z + v.z, old.w + v.w};
  return old;
}

// Round-to-nearest products and differences. This file is compiled with -ffp-contract=off, so
// the emulator rounds twice as the GPU's __fmul_rn / __fsub_rn do; whether nvcc contracts is
// not something the emulator can see (docs/ops.md).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dsub_rn(double a, double b) { return a - b; }

using std::isfinite;

#include "device_primitives.cuh"
