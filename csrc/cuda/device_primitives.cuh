// The few device primitives the deformable-attention kernels use, behind one small interface so
// that the same kernel source also runs on the CPU under tests/cuda_emulation (which defines
// DETREX_LITE_CUDA_EMULATION and provides its own versions of everything in this file).
//
// Every global-memory access of the kernels goes through load / store / atomic_add here; the
// emulator checks each one for bounds and alignment.
#pragma once

#include <cstdint>

#include "pack.h"

namespace detrex_lite {
namespace device {

template <typename index_t>
__device__ __forceinline__ index_t global_thread_index() {
  return static_cast<index_t>(blockIdx.x) * static_cast<index_t>(blockDim.x) + static_cast<index_t>(threadIdx.x);
}

__device__ __forceinline__ unsigned lane_in_warp() { return threadIdx.x & 31u; }

template <typename T>
__device__ __forceinline__ T load(const T* __restrict__ p) {
  return *p;
}

template <typename T>
__device__ __forceinline__ void store(T* __restrict__ p, const T& v) {
  *p = v;
}

// Sum over the lanes of an aligned group of `width` lanes (a power of two <= 32) whose lanes
// are named by `mask`: a butterfly, so every lane of the group ends with the group's sum.
template <typename T>
__device__ __forceinline__ T group_sum(unsigned mask, T v, int width) {
  for (int offset = width >> 1; offset > 0; offset >>= 1) v += __shfl_xor_sync(mask, v, offset, width);
  return v;
}

__device__ __forceinline__ void atomic_add(float* p, float v) { atomicAdd(p, v); }
__device__ __forceinline__ void atomic_add(double* p, double v) { atomicAdd(p, v); }

// p[0..V) += v[0..V). On Hopper (sm_90+) four floats at a 16-byte aligned address go in one
// vector atomic; elsewhere one atomic per element.
template <int V>
__device__ __forceinline__ void atomic_add_run(float* p, const float (&v)[V]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr bool kVector = V % 4 == 0;
#else
  constexpr bool kVector = false;
#endif
  if constexpr (kVector) {
#pragma unroll
    for (int i = 0; i < V; i += 4) {
      atomicAdd(reinterpret_cast<float4*>(p + i), make_float4(v[i], v[i + 1], v[i + 2], v[i + 3]));
    }
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) atomicAdd(p + i, v[i]);
  }
}

template <int V>
__device__ __forceinline__ void atomic_add_run(double* p, const double (&v)[V]) {
#pragma unroll
  for (int i = 0; i < V; ++i) atomicAdd(p + i, v[i]);
}

}  // namespace device
}  // namespace detrex_lite
