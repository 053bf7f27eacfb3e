// CUDA kernels of multi-scale deformable attention and the host code that plans and launches
// them. Included by ms_deform_attn_cuda.cu (nvcc) and by tests/cuda_emulation (a C++ compiler,
// with DETREX_LITE_CUDA_EMULATION defined), so the same source is tested on the CPU.
//
// Semantics are those of csrc/cpu/ms_deform_attn_cpu.cpp: pixel = loc * size - 0.5 (rounded after
// the product and after the subtraction, never one fused multiply-add), bilinear with zero
// padding, a sample is skipped unless -1 < x < W and -1 < y < H. A skipped sample with a NaN or
// infinite coordinate or weight makes its (n, q, m) output row NaN, as the reference's
// grid_sample gives (NaN in, NaN out); in backward its location gradient is NaN, its weight
// gradient NaN for a non-finite location (0 when only the weight is non-finite).
//
// Memory safety: each level's H, W and start are tested in the kernels (level_in_bounds) before
// they index value; a level that would leave value's S positions reads nothing, contributes
// zero, and sets the launch's error flag, raised by the host code after the launch.
//
// dtypes: value / output / grad_output in scalar_t (float64, float32, float16, bfloat16);
// sampling locations, attention weights and every sum in acc_t (float64 for float64, else
// float32). grad_value is accumulated with atomics in an acc_t buffer.
//
// Thread layout: one aligned group of `lanes` threads (a power of two <= 32) per (n, q, m) row.
// D channels are split in packs of VEC adjacent channels (16-byte vector loads when VEC is the
// widest); lane j of a group owns packs j, j + lanes, ... The lanes of a group read the same
// sampling location and weight (a broadcast) and adjacent channels of each corner (one or two
// 32-byte sectors per corner for D = 32).
// Backward: the group's partial sums for grad_loc / grad_attn are reduced with warp shuffles and
// lane 0 writes them (every sample is written, zeros outside the map, so no zero-fill and no
// atomics for those two). Whether a sample is inside the map depends only on the sample, so a
// group never diverges around its shuffles.
// L = 4, P = 4 (the paper's setting) is compiled with constant trip counts; other (L, P) use the
// generic kernel.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>
#include <tuple>
#include <type_traits>

#ifdef DETREX_LITE_CUDA_EMULATION
#include "emulated_device.h"
#else
#include "device_primitives.cuh"
#endif

#include "ms_deform_attn.h"
#include "ms_deform_attn_layout.h"

namespace detrex_lite {
namespace msda_cuda {

using device::Pack;

constexpr int kThreads = 256;

// Sizes of one launch. `lanes` = 1 << lanes_log2 threads per (n, q, m) row; `packs` = D / VEC.
struct Geometry {
  int64_t N, S, M, D, Lq, L, P;
  int64_t rows;  // N * Lq * M
  int lanes_log2;
  int packs;
};

// Bilinear corners of one sample: `offset[k]` in elements from the level's first row, -1 when
// the corner is outside the map; weights for (y0,x0), (y0,x1), (y1,x0), (y1,x1).
template <typename acc_t, typename index_t>
struct Corners {
  index_t offset[4];
  acc_t w[4];
  acc_t ly, lx, hy, hx;
};

// Whether level (H, W) starting at `start` lies inside value's S positions: only then may the
// level index value. No overflow: H, W < 2^31 are tested first, so H * W < 2^62 (and no 64-bit
// division). Uniform over a group (the same level for every lane).
__device__ __forceinline__ bool level_in_bounds(int64_t H, int64_t W, int64_t start, int64_t S) {
  constexpr int64_t kIntMax = 0x7fffffff;
  return H > 0 && W > 0 && H <= kIntMax && W <= kIntMax && start >= 0 && start <= S && H * W <= S - start;
}

// A skipped sample (no corner read) poisons its output row when its location or weight is NaN
// or infinite: the reference's grid_sample returns NaN there, and 0 * w is NaN for w = inf.
template <typename acc_t>
__device__ __forceinline__ bool finite_sample(acc_t x, acc_t y, acc_t w) {
  return isfinite(x) && isfinite(y) && isfinite(w);
}

template <typename acc_t, typename index_t>
__device__ __forceinline__ bool make_corners(
    acc_t loc_x, acc_t loc_y, int H, int W, index_t col_stride, Corners<acc_t, index_t>& c) {
  // Rounded product, then rounded subtraction (no FMA): the CPU kernel's cell at integer seams.
  const acc_t x = device::mul_sub_rn(loc_x, static_cast<acc_t>(W), static_cast<acc_t>(0.5));
  const acc_t y = device::mul_sub_rn(loc_y, static_cast<acc_t>(H), static_cast<acc_t>(0.5));
  if (!(y > -1 && x > -1 && y < H && x < W)) return false;
  const acc_t yf = floor(y), xf = floor(x);
  const int y0 = static_cast<int>(yf), x0 = static_cast<int>(xf);
  const int y1 = y0 + 1, x1 = x0 + 1;
  c.ly = y - yf;
  c.lx = x - xf;
  c.hy = 1 - c.ly;
  c.hx = 1 - c.lx;
  c.w[0] = c.hy * c.hx;
  c.w[1] = c.hy * c.lx;
  c.w[2] = c.ly * c.hx;
  c.w[3] = c.ly * c.lx;
  const bool y0_in = y0 >= 0, y1_in = y1 < H, x0_in = x0 >= 0, x1_in = x1 < W;
  const index_t row0 = static_cast<index_t>(y0) * W, row1 = static_cast<index_t>(y1) * W;
  c.offset[0] = (y0_in && x0_in) ? (row0 + x0) * col_stride : index_t(-1);
  c.offset[1] = (y0_in && x1_in) ? (row0 + x1) * col_stride : index_t(-1);
  c.offset[2] = (y1_in && x0_in) ? (row1 + x0) * col_stride : index_t(-1);
  c.offset[3] = (y1_in && x1_in) ? (row1 + x1) * col_stride : index_t(-1);
  return true;
}

template <typename acc_t, typename scalar_t, int VEC>
__device__ __forceinline__ void load_run(const scalar_t* p, acc_t (&out)[VEC]) {
  const Pack<scalar_t, VEC> pack = device::load(reinterpret_cast<const Pack<scalar_t, VEC>*>(p));
#pragma unroll
  for (int c = 0; c < VEC; ++c) out[c] = static_cast<acc_t>(pack.v[c]);
}

// Where a thread works: its (n, q, m) row = (n * Lq + q) * M + m, its lane in the row's group of
// `lanes` threads, and the row's batch index n and head m.
template <typename index_t>
struct RowThread {
  index_t row, n, m;
  int lane, lanes;
  bool active;  // row < rows: whole groups are active or not (blockDim is a multiple of lanes)
};

template <typename index_t>
__device__ __forceinline__ RowThread<index_t> row_thread(const Geometry& g) {
  RowThread<index_t> r;
  const index_t t = device::global_thread_index<index_t>();
  r.lanes = 1 << g.lanes_log2;
  r.row = t >> g.lanes_log2;
  r.lane = static_cast<int>(t & (r.lanes - 1));
  r.active = r.row < static_cast<index_t>(g.rows);
  const index_t M = static_cast<index_t>(g.M);
  r.m = r.row % M;
  r.n = r.row / (M * static_cast<index_t>(g.Lq));
  return r;
}

// value: (N, S, M, D); loc: (N, Lq, M, L, P, 2); attn: (N, Lq, M, L, P); out: (N, Lq, M * D).
template <typename scalar_t, typename acc_t, int VEC, int kL, int kP, typename index_t>
__global__ void __launch_bounds__(kThreads) forward_kernel(
    const scalar_t* __restrict__ value,
    const int64_t* __restrict__ spatial_shapes,
    const int64_t* __restrict__ level_start,
    const acc_t* __restrict__ loc,
    const acc_t* __restrict__ attn,
    scalar_t* __restrict__ out,
    int* __restrict__ error,
    const Geometry g) {
  const RowThread<index_t> r = row_thread<index_t>(g);
  if (!r.active) return;
  const index_t row = r.row, m = r.m, n = r.n;
  const int lane = r.lane, lanes = r.lanes;
  const int L = kL > 0 ? kL : static_cast<int>(g.L);
  const int P = kP > 0 ? kP : static_cast<int>(g.P);
  const index_t M = static_cast<index_t>(g.M), D = static_cast<index_t>(g.D);
  const index_t col_stride = M * D;
  const scalar_t* value_nm = value + (n * static_cast<index_t>(g.S) * M + m) * D;
  const acc_t* loc_row = loc + row * (L * P * 2);
  const acc_t* attn_row = attn + row * (L * P);
  for (int j = lane; j < g.packs; j += lanes) {
    const index_t c0 = static_cast<index_t>(j) * VEC;
    acc_t acc[VEC];
#pragma unroll
    for (int c = 0; c < VEC; ++c) acc[c] = 0;
    bool poisoned = false;
#pragma unroll
    for (int l = 0; l < L; ++l) {
      const int64_t H64 = device::load(spatial_shapes + 2 * l), W64 = device::load(spatial_shapes + 2 * l + 1);
      const int64_t start = device::load(level_start + l);
      if (!level_in_bounds(H64, W64, start, g.S)) {
        device::raise_flag(error);
        continue;
      }
      const int H = static_cast<int>(H64), W = static_cast<int>(W64);
      const scalar_t* base = value_nm + static_cast<index_t>(start) * col_stride + c0;
#pragma unroll
      for (int p = 0; p < P; ++p) {
        const int s = l * P + p;
        const Pack<acc_t, 2> xy = device::load(reinterpret_cast<const Pack<acc_t, 2>*>(loc_row + 2 * s));
        Corners<acc_t, index_t> cr;
        if (!make_corners<acc_t, index_t>(xy.v[0], xy.v[1], H, W, col_stride, cr)) {
          poisoned = poisoned || !finite_sample(xy.v[0], xy.v[1], device::load(attn_row + s));
          continue;
        }
        const acc_t w = device::load(attn_row + s);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (cr.offset[k] < 0) continue;
          acc_t v[VEC];
          load_run<acc_t, scalar_t, VEC>(base + cr.offset[k], v);
          const acc_t wk = w * cr.w[k];
#pragma unroll
          for (int c = 0; c < VEC; ++c) acc[c] += wk * v[c];
        }
      }
    }
    Pack<scalar_t, VEC> o;
#pragma unroll
    for (int c = 0; c < VEC; ++c) o.v[c] = static_cast<scalar_t>(poisoned ? static_cast<acc_t>(NAN) : acc[c]);
    device::store(reinterpret_cast<Pack<scalar_t, VEC>*>(out + row * D + c0), o);
  }
}

// grad_value: (N, S, M, D) in acc_t, zero on entry; grad_loc / grad_attn: like loc / attn,
// every element written here.
template <typename scalar_t, typename acc_t, int VEC, int kL, int kP, typename index_t>
__global__ void __launch_bounds__(kThreads) backward_kernel(
    const scalar_t* __restrict__ value,
    const int64_t* __restrict__ spatial_shapes,
    const int64_t* __restrict__ level_start,
    const acc_t* __restrict__ loc,
    const acc_t* __restrict__ attn,
    const scalar_t* __restrict__ grad_out,
    acc_t* __restrict__ grad_value,
    acc_t* __restrict__ grad_loc,
    acc_t* __restrict__ grad_attn,
    int* __restrict__ error,
    const Geometry g) {
  const RowThread<index_t> r = row_thread<index_t>(g);
  // Whole groups leave together, so the shuffles below only involve lanes that are still running.
  if (!r.active) return;
  const index_t row = r.row, m = r.m, n = r.n;
  const int lane = r.lane, lanes = r.lanes;
  const unsigned group_mask =
      lanes == 32 ? device::kFullMask
                  : ((1u << lanes) - 1u) << (device::lane_in_warp() & ~static_cast<unsigned>(lanes - 1));
  const int L = kL > 0 ? kL : static_cast<int>(g.L);
  const int P = kP > 0 ? kP : static_cast<int>(g.P);
  const index_t M = static_cast<index_t>(g.M), D = static_cast<index_t>(g.D);
  const index_t col_stride = M * D;
  const index_t value_nm = (n * static_cast<index_t>(g.S) * M + m) * D;
  const acc_t* loc_row = loc + row * (L * P * 2);
  const acc_t* attn_row = attn + row * (L * P);
  acc_t* grad_loc_row = grad_loc + row * (L * P * 2);
  acc_t* grad_attn_row = grad_attn + row * (L * P);
  const scalar_t* grad_out_row = grad_out + row * D;

  // The first pack's output gradient stays in registers (the only pack for D <= lanes * VEC).
  acc_t go_first[VEC];
  if (lane < g.packs) {
    load_run<acc_t, scalar_t, VEC>(grad_out_row + static_cast<index_t>(lane) * VEC, go_first);
  } else {
#pragma unroll
    for (int c = 0; c < VEC; ++c) go_first[c] = 0;
  }

#pragma unroll 1
  for (int l = 0; l < L; ++l) {
    const int64_t H64 = device::load(spatial_shapes + 2 * l), W64 = device::load(spatial_shapes + 2 * l + 1);
    const int64_t start = device::load(level_start + l);
    if (!level_in_bounds(H64, W64, start, g.S)) {
      // Uniform over the group (the same level for every lane): no gradient, the error flag set.
      if (lane == 0) {
        device::raise_flag(error);
        for (int p = 0; p < P; ++p) {
          device::store(grad_attn_row + l * P + p, acc_t(0));
          device::store(reinterpret_cast<Pack<acc_t, 2>*>(grad_loc_row + 2 * (l * P + p)), Pack<acc_t, 2>{{0, 0}});
        }
      }
      continue;
    }
    const int H = static_cast<int>(H64), W = static_cast<int>(W64);
    const index_t level_base = value_nm + static_cast<index_t>(start) * col_stride;
#pragma unroll
    for (int p = 0; p < P; ++p) {
      const int s = l * P + p;
      const Pack<acc_t, 2> xy = device::load(reinterpret_cast<const Pack<acc_t, 2>*>(loc_row + 2 * s));
      Corners<acc_t, index_t> cr;
      if (!make_corners<acc_t, index_t>(xy.v[0], xy.v[1], H, W, col_stride, cr)) {
        // Uniform over the group: the same sample for every lane. Zeros, or NaN for a NaN or
        // infinite location / weight (the reference's derivative of its NaN output).
        if (lane == 0) {
          const acc_t w = device::load(attn_row + s);
          const bool finite_location = isfinite(xy.v[0]) && isfinite(xy.v[1]);
          const acc_t nan = static_cast<acc_t>(NAN);
          const acc_t g_loc = finite_location && isfinite(w) ? acc_t(0) : nan;
          device::store(grad_attn_row + s, finite_location ? acc_t(0) : nan);
          device::store(reinterpret_cast<Pack<acc_t, 2>*>(grad_loc_row + 2 * s), Pack<acc_t, 2>{{g_loc, g_loc}});
        }
        continue;
      }
      const acc_t w = device::load(attn_row + s);
      acc_t part_attn = 0, part_x = 0, part_y = 0;
      for (int j = lane; j < g.packs; j += lanes) {
        const index_t c0 = static_cast<index_t>(j) * VEC;
        acc_t go[VEC];
        if (j == lane) {
#pragma unroll
          for (int c = 0; c < VEC; ++c) go[c] = go_first[c];
        } else {
          load_run<acc_t, scalar_t, VEC>(grad_out_row + c0, go);
        }
        acc_t v[4][VEC];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (cr.offset[k] >= 0) {
            load_run<acc_t, scalar_t, VEC>(value + level_base + cr.offset[k] + c0, v[k]);
            acc_t contribution[VEC];
            const acc_t wk = w * cr.w[k];
#pragma unroll
            for (int c = 0; c < VEC; ++c) contribution[c] = wk * go[c];
            device::atomic_add_run<VEC>(grad_value + level_base + cr.offset[k] + c0, contribution);
          } else {
#pragma unroll
            for (int c = 0; c < VEC; ++c) v[k][c] = 0;
          }
        }
#pragma unroll
        for (int c = 0; c < VEC; ++c) {
          part_attn += go[c] * (cr.w[0] * v[0][c] + cr.w[1] * v[1][c] + cr.w[2] * v[2][c] + cr.w[3] * v[3][c]);
          part_x += go[c] * (cr.hy * (v[1][c] - v[0][c]) + cr.ly * (v[3][c] - v[2][c]));
          part_y += go[c] * (cr.hx * (v[2][c] - v[0][c]) + cr.lx * (v[3][c] - v[1][c]));
        }
      }
      if (lanes > 1) {
        part_attn = device::group_sum(group_mask, part_attn, lanes);
        part_x = device::group_sum(group_mask, part_x, lanes);
        part_y = device::group_sum(group_mask, part_y, lanes);
      }
      if (lane == 0) {
        device::store(grad_attn_row + s, part_attn);
        device::store(
            reinterpret_cast<Pack<acc_t, 2>*>(grad_loc_row + 2 * s),
            Pack<acc_t, 2>{{w * part_x * static_cast<acc_t>(W), w * part_y * static_cast<acc_t>(H)}});
      }
    }
  }
}

// ------------------------------------------------------------------------------------------
// Host side: plan, allocate, launch. `Launcher` runs a kernel:
//   launch(kernel_pointer, blocks, threads, args...)
// (a CUDA launch on the current stream in ms_deform_attn_cuda.cu, the emulator in tests).
// ------------------------------------------------------------------------------------------

// The widest pack: 16 bytes.
template <typename scalar_t>
constexpr int widest_vec() {
  return static_cast<int>(16 / sizeof(scalar_t));
}

inline bool aligned_to(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Which kernel instance runs: the operators' `kernel` argument (ms_deform_attn.h).
using detrex_lite::KernelChoice;
using detrex_lite::parse_kernel_choice;

struct Plan {
  int vec;            // widest_vec or 1
  bool specialised;   // L == 4 and P == 4
  bool index32;       // every offset fits in int32
  Geometry g;
  int64_t threads_total;
};

template <typename scalar_t>
Plan make_plan(
    const at::Tensor& value,
    const at::Tensor& loc,
    std::initializer_list<const void*> vector_ptrs,
    KernelChoice choice = KernelChoice::kAuto) {
  Plan plan;
  Geometry& g = plan.g;
  g.N = value.size(0);
  g.S = value.size(1);
  g.M = value.size(2);
  g.D = value.size(3);
  g.Lq = loc.size(1);
  g.L = loc.size(3);
  g.P = loc.size(4);
  g.rows = g.N * g.Lq * g.M;
  const int wide = widest_vec<scalar_t>();
  bool vector_ok = g.D % wide == 0;
  for (const void* p : vector_ptrs) vector_ok = vector_ok && aligned_to(p, wide * sizeof(scalar_t));
  const bool scalar = choice == KernelChoice::kScalar || choice == KernelChoice::kIndex64;
  plan.vec = vector_ok && !scalar ? wide : 1;
  g.packs = static_cast<int>(g.D / plan.vec);
  g.lanes_log2 = 0;
  while ((1 << g.lanes_log2) < g.packs && g.lanes_log2 < 5) ++g.lanes_log2;
  plan.specialised = g.L == 4 && g.P == 4 && choice == KernelChoice::kAuto;
  plan.threads_total = g.rows << g.lanes_log2;
  const int64_t limit = std::numeric_limits<int32_t>::max();
  const int64_t padded_threads = (plan.threads_total + kThreads - 1) / kThreads * kThreads;
  plan.index32 = value.numel() < limit && loc.numel() < limit && g.rows * g.D < limit && padded_threads < limit &&
                 choice != KernelChoice::kIndex64;
  return plan;
}

inline unsigned blocks_for(const Plan& plan) {
  const int64_t blocks = (plan.threads_total + kThreads - 1) / kThreads;
  TORCH_CHECK(blocks <= 0x7fffffff, "ms_deform_attn (CUDA): too many (batch, query, head) rows for one launch");
  return static_cast<unsigned>(blocks);
}

// Calls `fn(kernel_variant_tag...)`: picks the kernel instance for a plan.
#define DETREX_LITE_MSDA_DISPATCH_VARIANT(plan, WIDE, ...)                      \
  do {                                                                          \
    if ((plan).index32 && (plan).vec == (WIDE) && (plan).specialised) {         \
      constexpr int VEC = (WIDE), kL = 4, kP = 4;                               \
      using index_t = int32_t;                                                  \
      __VA_ARGS__();                                                            \
    } else if ((plan).index32 && (plan).vec == (WIDE)) {                        \
      constexpr int VEC = (WIDE), kL = 0, kP = 0;                               \
      using index_t = int32_t;                                                  \
      __VA_ARGS__();                                                            \
    } else if ((plan).index32) {                                                \
      constexpr int VEC = 1, kL = 0, kP = 0;                                    \
      using index_t = int32_t;                                                  \
      __VA_ARGS__();                                                            \
    } else {                                                                    \
      constexpr int VEC = 1, kL = 0, kP = 0;                                    \
      using index_t = int64_t;                                                  \
      __VA_ARGS__();                                                            \
    }                                                                           \
  } while (0)

// The compute dtype of sampling locations, attention weights and sums.
inline at::ScalarType acc_dtype_for(at::ScalarType value_dtype) {
  return value_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

// `t` as a contiguous acc_t tensor whose data is aligned for pair loads.
inline at::Tensor as_acc_contiguous(const at::Tensor& t, at::ScalarType acc) {
  at::Tensor out = t.to(acc).contiguous();
  if (!aligned_to(out.data_ptr(), 2 * out.element_size())) out = out.clone();
  return out;
}

// Where the layout's values are checked: on the host before the launch (a layout on the CPU),
// or only by the kernels' bounds test, whose error flag is then read after the launch (one
// 4-byte device-to-host copy: a synchronisation). kKernelUnreported: the bounds test alone,
// the flag not read (while a CUDA graph is being captured no synchronisation is allowed; the
// kernels still never leave value).
enum class LayoutCheck { kHost, kKernel, kKernelUnreported };

// A layout on the CPU is checked there; one already on the GPU by the kernels.
inline LayoutCheck layout_check_for(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index) {
  return spatial_shapes.device().is_cpu() && level_start_index.device().is_cpu() ? LayoutCheck::kHost
                                                                                 : LayoutCheck::kKernel;
}

struct Inputs {
  at::Tensor value, spatial_shapes, level_start, loc, attn;
  at::Tensor error;  // (1,) int32 on value's device, set by a kernel that met an out-of-range level
  LayoutCheck layout_check;
};

// Inputs already checked by check_ms_deform_attn_inputs.
inline Inputs prepare_inputs(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight,
    LayoutCheck layout_check) {
  if (layout_check == LayoutCheck::kHost) {
    check_layout_values_on_host(spatial_shapes, level_start_index, value.size(1));
  }
  const auto acc = acc_dtype_for(value.scalar_type());
  // From the CPU without waiting for the device (the host copy is staged at once).
  const auto on_device = [&](const at::Tensor& t) { return t.to(value.device(), /*non_blocking=*/true).contiguous(); };
  return Inputs{value.contiguous(),
                on_device(spatial_shapes),
                on_device(level_start_index),
                as_acc_contiguous(sampling_loc, acc),
                as_acc_contiguous(attn_weight, acc),
                at::zeros({1}, value.options().dtype(at::kInt)),
                layout_check};
}

// After the launch: a kernel found a level outside value (only possible without the host check).
inline void raise_if_layout_error(const Inputs& in) {
  if (in.layout_check != LayoutCheck::kKernel) return;
  TORCH_CHECK(
      in.error.item<int>() == 0,
      "ms_deform_attn: spatial_shapes / level_start_index place a level outside value's S = ", in.value.size(1),
      " positions (each level needs H > 0, W > 0, start >= 0 and start + H * W <= S); those levels were "
      "skipped and the results are invalid");
}

template <typename Launcher>
at::Tensor forward(const Inputs& in, const Launcher& launch, KernelChoice choice = KernelChoice::kAuto) {
  const auto& v = in.value;
  auto out = at::empty({v.size(0), in.loc.size(1), v.size(2) * v.size(3)}, v.options());
  if (out.numel() == 0) return out;
  if (in.loc.size(3) * in.loc.size(4) == 0) return out.zero_();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "ms_deform_attn_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Plan plan = make_plan<scalar_t>(v, in.loc, {v.data_ptr(), out.data_ptr()}, choice);
    DETREX_LITE_MSDA_DISPATCH_VARIANT(plan, widest_vec<scalar_t>(), [&] {
      launch(&forward_kernel<scalar_t, acc_t, VEC, kL, kP, index_t>, blocks_for(plan), kThreads,
             v.data_ptr<scalar_t>(), in.spatial_shapes.data_ptr<int64_t>(), in.level_start.data_ptr<int64_t>(),
             in.loc.data_ptr<acc_t>(), in.attn.data_ptr<acc_t>(), out.data_ptr<scalar_t>(),
             in.error.data_ptr<int>(), plan.g);
    });
  });
  raise_if_layout_error(in);
  return out;
}

// Returns (grad_value, grad_loc, grad_attn) in the dtypes of value, sampling_loc, attn_weight.
template <typename Launcher>
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(
    const Inputs& in,
    const at::Tensor& grad_output,
    at::ScalarType loc_dtype,
    at::ScalarType attn_dtype,
    const Launcher& launch,
    KernelChoice choice = KernelChoice::kAuto) {
  const auto& v = in.value;
  const auto acc = acc_dtype_for(v.scalar_type());
  const auto grad_out = grad_output.contiguous();
  auto grad_value = at::zeros(v.sizes(), v.options().dtype(acc));
  auto grad_loc = at::empty(in.loc.sizes(), in.loc.options());
  auto grad_attn = at::empty(in.attn.sizes(), in.attn.options());
  if (grad_out.numel() == 0 || in.attn.numel() == 0) {
    grad_loc.zero_();
    grad_attn.zero_();
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "ms_deform_attn_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      // grad_value takes the packs through atomic_add_run, which on sm_90+ adds four floats with one
      // 16-byte vector atomic: its pointer must be 16-byte aligned like value's and grad_output's
      // (a fresh allocation always is; an unaligned one takes the scalar path instead).
      const Plan plan =
          make_plan<scalar_t>(v, in.loc, {v.data_ptr(), grad_out.data_ptr(), grad_value.data_ptr()}, choice);
      DETREX_LITE_MSDA_DISPATCH_VARIANT(plan, widest_vec<scalar_t>(), [&] {
        launch(&backward_kernel<scalar_t, acc_t, VEC, kL, kP, index_t>, blocks_for(plan), kThreads,
               v.data_ptr<scalar_t>(), in.spatial_shapes.data_ptr<int64_t>(), in.level_start.data_ptr<int64_t>(),
               in.loc.data_ptr<acc_t>(), in.attn.data_ptr<acc_t>(), grad_out.data_ptr<scalar_t>(),
               grad_value.data_ptr<acc_t>(), grad_loc.data_ptr<acc_t>(), grad_attn.data_ptr<acc_t>(),
               in.error.data_ptr<int>(), plan.g);
      });
    });
    raise_if_layout_error(in);
  }
  return {grad_value.to(v.scalar_type()), grad_loc.to(loc_dtype), grad_attn.to(attn_dtype)};
}

}  // namespace msda_cuda
}  // namespace detrex_lite
