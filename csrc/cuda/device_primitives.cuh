// The few device primitives the deformable-attention kernels use, behind one small interface.
// The same file is compiled by nvcc for the GPU and, under tests/cuda_emulation, by a C++ compiler
// for the CPU: the emulator (emulated_device.h) supplies the CUDA built-ins used here
// (threadIdx, __shfl_xor_sync, atomicAdd, __fmul_rn, ...) and defines
// DETREX_LITE_CHECK_ACCESS, so these very functions run in the emulated tests.
//
// Every global-memory access of the kernels goes through load / store / atomic_add here; the
// emulator checks each one for bounds and alignment.
#pragma once

#include <cstdint>

#include "pack.h"

// (pointer, bytes, alignment, what): nothing on a GPU; a bounds and alignment check in emulation.
#ifndef DETREX_LITE_CHECK_ACCESS
#define DETREX_LITE_CHECK_ACCESS(p, bytes, alignment, what) ((void)0)
#endif

namespace detrex_lite {
namespace device {

template <typename index_t>
__device__ __forceinline__ index_t global_thread_index() {
  return static_cast<index_t>(blockIdx.x) * static_cast<index_t>(blockDim.x) + static_cast<index_t>(threadIdx.x);
}

__device__ __forceinline__ unsigned lane_in_warp() { return threadIdx.x & 31u; }

template <typename T>
__device__ __forceinline__ T load(const T* __restrict__ p) {
  DETREX_LITE_CHECK_ACCESS(p, sizeof(T), alignof(T), "load");
  return *p;
}

template <typename T>
__device__ __forceinline__ void store(T* __restrict__ p, const T& v) {
  DETREX_LITE_CHECK_ACCESS(p, sizeof(T), alignof(T), "store");
  *p = v;
}

// Records an error for the host to raise after the launch (every writer stores the same 1).
__device__ __forceinline__ void raise_flag(int* p) {
  DETREX_LITE_CHECK_ACCESS(p, sizeof(int), alignof(int), "error flag store");
  *static_cast<volatile int*>(p) = 1;
}

// a * b - c with the product rounded before the subtraction: nvcc would otherwise contract it
// into one fused multiply-add, whose single rounding can move a coordinate within an ulp of an
// integer into the neighbouring bilinear cell (the CPU kernel rounds twice, as here).
__device__ __forceinline__ float mul_sub_rn(float a, float b, float c) { return __fsub_rn(__fmul_rn(a, b), c); }
__device__ __forceinline__ double mul_sub_rn(double a, double b, double c) { return __dsub_rn(__dmul_rn(a, b), c); }

// Sum over the lanes of an aligned group of `width` lanes (a power of two <= 32) whose lanes
// are named by `mask`: a butterfly, so every lane of the group ends with the group's sum.
template <typename T>
__device__ __forceinline__ T group_sum(unsigned mask, T v, int width) {
  for (int offset = width >> 1; offset > 0; offset >>= 1) v += __shfl_xor_sync(mask, v, offset, width);
  return v;
}

__device__ __forceinline__ void atomic_add(float* p, float v) {
  DETREX_LITE_CHECK_ACCESS(p, sizeof(float), alignof(float), "atomic add");
  atomicAdd(p, v);
}
__device__ __forceinline__ void atomic_add(double* p, double v) {
  DETREX_LITE_CHECK_ACCESS(p, sizeof(double), alignof(double), "atomic add");
  atomicAdd(p, v);
}

// p[0..V) += v[0..V). On Hopper (sm_90+) four floats at a 16-byte aligned address go in one
// vector atomic; elsewhere one atomic per element.
template <int V>
__device__ __forceinline__ void atomic_add_run(float* p, const float (&v)[V]) {
  // The emulator checks the 16-byte alignment that the sm_90 vector atomic needs on every build.
  DETREX_LITE_CHECK_ACCESS(p, sizeof(float) * V, V % 4 == 0 ? 16 : alignof(float), "vector atomic add");
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
  DETREX_LITE_CHECK_ACCESS(p, sizeof(double) * V, alignof(double), "atomic add run");
#pragma unroll
  for (int i = 0; i < V; ++i) atomicAdd(p + i, v[i]);
}

}  // namespace device
}  // namespace detrex_lite
