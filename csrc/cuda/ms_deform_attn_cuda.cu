// CUDA kernels of multi-scale deformable attention (float, double, half, bfloat16).
//
// A faithful twin of csrc/cpu/ms_deform_attn_cpu.cpp: the same corner arithmetic
// (pixel = loc * size - 0.5, zero padding, the same skip test), so the CPU tests cover the logic.
//
// Forward: one thread per output element (n, q, m, d), d fastest, so the D threads of one
// (n, q, m) read the same location/weight (broadcast) and neighbouring channels of each corner
// (coalesced). Arithmetic is done in opmath (float for half/bfloat16).
//
// Backward: the same thread layout. Each thread adds its channel's share to grad_value with
// atomics and its channel's part of grad_sampling_loc / grad_attn_weight, which are summed over
// the D threads of one (n, q, m) by warp shuffles before one atomic per group. All atomics go to
// opmath buffers (float32 for half/bfloat16, which have no exact atomics), cast at the end.
//
// The batch is processed in chunks of im2col_step samples per launch; the last chunk may be
// smaller.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>
#include <torch/types.h>

#include <atomic>
#include <mutex>
#include <string>

#include "ms_deform_attn.h"

#define DETREX_LITE_STRINGIFY_(x) #x
#define DETREX_LITE_STRINGIFY(x) DETREX_LITE_STRINGIFY_(x)
#ifdef DETREX_LITE_CUDA_ARCHS
#define DETREX_LITE_CUDA_ARCHS_STR DETREX_LITE_STRINGIFY(DETREX_LITE_CUDA_ARCHS)
#else
#define DETREX_LITE_CUDA_ARCHS_STR "unknown"
#endif

namespace detrex_lite {
namespace {

constexpr int kThreads = 256;
constexpr unsigned kFullMask = 0xffffffffu;

struct Dims {
  int64_t N, S, M, D, Lq, L, P;
};

// Bilinear corners, exactly as the CPU kernel: returns false when the point is outside the
// sampled range (also for NaN).
template <typename acc_t>
struct Corners {
  int64_t offset[4];  // element offsets from the level base, -1 when outside the map
  acc_t w[4];         // (y0,x0), (y0,x1), (y1,x0), (y1,x1)
  acc_t ly, lx, hy, hx;
};

template <typename acc_t>
__device__ __forceinline__ bool make_corners(
    acc_t loc_x, acc_t loc_y, int64_t H, int64_t W, int64_t row_stride, int64_t col_stride,
    Corners<acc_t>& c) {
  const acc_t x = loc_x * static_cast<acc_t>(W) - static_cast<acc_t>(0.5);
  const acc_t y = loc_y * static_cast<acc_t>(H) - static_cast<acc_t>(0.5);
  if (!(y > -1 && x > -1 && y < H && x < W)) return false;
  const acc_t yf = floor(y), xf = floor(x);
  const int64_t y0 = static_cast<int64_t>(yf), x0 = static_cast<int64_t>(xf);
  const int64_t y1 = y0 + 1, x1 = x0 + 1;
  c.ly = y - yf;
  c.lx = x - xf;
  c.hy = 1 - c.ly;
  c.hx = 1 - c.lx;
  c.w[0] = c.hy * c.hx;
  c.w[1] = c.hy * c.lx;
  c.w[2] = c.ly * c.hx;
  c.w[3] = c.ly * c.lx;
  const bool y0_in = y0 >= 0, y1_in = y1 < H, x0_in = x0 >= 0, x1_in = x1 < W;
  c.offset[0] = (y0_in && x0_in) ? y0 * row_stride + x0 * col_stride : -1;
  c.offset[1] = (y0_in && x1_in) ? y0 * row_stride + x1 * col_stride : -1;
  c.offset[2] = (y1_in && x0_in) ? y1 * row_stride + x0 * col_stride : -1;
  c.offset[3] = (y1_in && x1_in) ? y1 * row_stride + x1 * col_stride : -1;
  return true;
}

// value/loc/attn/out point at the first batch sample of the chunk; `count` = chunk * Lq * M * D.
template <typename scalar_t>
__global__ void forward_kernel(
    const scalar_t* __restrict__ value,
    const int64_t* __restrict__ spatial_shapes,
    const int64_t* __restrict__ level_start,
    const scalar_t* __restrict__ loc,
    const scalar_t* __restrict__ attn,
    scalar_t* __restrict__ out,
    const Dims d,
    const int64_t count) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= count) return;
  const int64_t ch = index % d.D;
  const int64_t row_m = index / d.D;  // (n_local * Lq + q) * M + m
  const int64_t m = row_m % d.M;
  const int64_t n = row_m / (d.M * d.Lq);
  const int64_t col_stride = d.M * d.D;
  const int64_t sample0 = row_m * d.L * d.P;
  acc_t acc = 0;
  for (int64_t l = 0; l < d.L; ++l) {
    const int64_t H = spatial_shapes[2 * l], W = spatial_shapes[2 * l + 1];
    const scalar_t* base = value + ((n * d.S + level_start[l]) * d.M + m) * d.D + ch;
    for (int64_t p = 0; p < d.P; ++p) {
      const int64_t s = sample0 + l * d.P + p;
      Corners<acc_t> c;
      if (!make_corners<acc_t>(
              static_cast<acc_t>(loc[2 * s]), static_cast<acc_t>(loc[2 * s + 1]), H, W, W * col_stride,
              col_stride, c)) {
        continue;
      }
      acc_t sampled = 0;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if (c.offset[k] >= 0) sampled += c.w[k] * static_cast<acc_t>(base[c.offset[k]]);
      }
      acc += static_cast<acc_t>(attn[s]) * sampled;
    }
  }
  out[index] = static_cast<scalar_t>(acc);
}

// Sum `v` over aligned groups of `width` lanes (width a power of two <= 32); every lane of the
// warp must call it.
template <typename acc_t>
__device__ __forceinline__ acc_t group_sum(acc_t v, int width) {
  for (int offset = width / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

// `reduce_width`: lanes per shuffle group (D if D is a power of two <= 32, 32 if D is a multiple
// of 32, else 1 = no shuffles, one atomic per thread). Threads past `count` stay in the loop
// (with zero contributions) so that every lane takes part in the shuffles.
template <typename scalar_t>
__global__ void backward_kernel(
    const scalar_t* __restrict__ value,
    const int64_t* __restrict__ spatial_shapes,
    const int64_t* __restrict__ level_start,
    const scalar_t* __restrict__ loc,
    const scalar_t* __restrict__ attn,
    const scalar_t* __restrict__ grad_out,
    at::opmath_type<scalar_t>* __restrict__ grad_value,
    at::opmath_type<scalar_t>* __restrict__ grad_loc,
    at::opmath_type<scalar_t>* __restrict__ grad_attn,
    const Dims d,
    const int64_t count,
    const int reduce_width) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool active = index < count;
  const int64_t safe_index = active ? index : 0;
  const int64_t ch = safe_index % d.D;
  const int64_t row_m = safe_index / d.D;
  const int64_t m = row_m % d.M;
  const int64_t n = row_m / (d.M * d.Lq);
  const int64_t col_stride = d.M * d.D;
  const int64_t sample0 = row_m * d.L * d.P;
  const acc_t go = active ? static_cast<acc_t>(grad_out[safe_index]) : acc_t(0);
  const bool group_leader = (threadIdx.x % reduce_width) == 0;
  for (int64_t l = 0; l < d.L; ++l) {
    const int64_t H = spatial_shapes[2 * l], W = spatial_shapes[2 * l + 1];
    const int64_t level_offset = ((n * d.S + level_start[l]) * d.M + m) * d.D + ch;
    for (int64_t p = 0; p < d.P; ++p) {
      const int64_t s = sample0 + l * d.P + p;
      acc_t part_attn = 0, part_x = 0, part_y = 0;
      Corners<acc_t> c;
      const bool inside =
          active && make_corners<acc_t>(
                        static_cast<acc_t>(loc[2 * s]), static_cast<acc_t>(loc[2 * s + 1]), H, W,
                        W * col_stride, col_stride, c);
      acc_t aw = 0;
      if (inside) {
        aw = static_cast<acc_t>(attn[s]);
        acc_t v[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          v[k] = c.offset[k] >= 0 ? static_cast<acc_t>(value[level_offset + c.offset[k]]) : acc_t(0);
          if (c.offset[k] >= 0) gpuAtomicAdd(grad_value + level_offset + c.offset[k], c.w[k] * aw * go);
        }
        part_attn = go * (c.w[0] * v[0] + c.w[1] * v[1] + c.w[2] * v[2] + c.w[3] * v[3]);
        part_x = go * (c.hy * (v[1] - v[0]) + c.ly * (v[3] - v[2]));
        part_y = go * (c.hx * (v[2] - v[0]) + c.lx * (v[3] - v[1]));
      }
      if (reduce_width > 1) {
        part_attn = group_sum(part_attn, reduce_width);
        part_x = group_sum(part_x, reduce_width);
        part_y = group_sum(part_y, reduce_width);
      }
      // With reduce_width > 1 the leader holds its group's sum; its own `aw`, W and H equal the
      // group's (same sample). The leader can be outside the map while another lane is not only
      // when they belong to different samples, which grouping excludes.
      if (active && group_leader && inside) {
        gpuAtomicAdd(grad_attn + s, part_attn);
        gpuAtomicAdd(grad_loc + 2 * s, aw * part_x * static_cast<acc_t>(W));
        gpuAtomicAdd(grad_loc + 2 * s + 1, aw * part_y * static_cast<acc_t>(H));
      }
    }
  }
}

int reduce_width_for(int64_t D) {
  if (D % 32 == 0) return 32;
  if (D <= 32 && (D & (D - 1)) == 0) return static_cast<int>(D);
  return 1;
}

// A GPU whose architecture the build does not cover has no kernel image: say how to rebuild.
void check_arch(int device) {
  static std::mutex mutex;
  static bool checked[64] = {false};
  std::lock_guard<std::mutex> lock(mutex);
  if (device >= 0 && device < 64 && checked[device]) return;
  cudaFuncAttributes attributes;
  const cudaError_t status = cudaFuncGetAttributes(&attributes, forward_kernel<float>);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();  // clear the (non-sticky) error so later CUDA calls are unaffected
    cudaDeviceProp prop;
    C10_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    TORCH_CHECK(
        false, "detrex_lite._C has no CUDA kernel for this GPU (", prop.name, ", sm_", prop.major, prop.minor,
        "): it was compiled for [", DETREX_LITE_CUDA_ARCHS_STR, "] (", cudaGetErrorString(status),
        "). Rebuild for it: TORCH_CUDA_ARCH_LIST=\"", prop.major, ".", prop.minor,
        "\" FORCE_CUDA=1 pip install --no-build-isolation --no-deps -e .  (in the detrex_lite repository)");
  }
  if (device >= 0 && device < 64) checked[device] = true;
}

struct Prepared {
  at::Tensor value, spatial_shapes, level_start, loc, attn;
  Dims d;
};

Prepared prepare(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight,
    int64_t im2col_step) {
  check_ms_deform_attn_inputs(value, spatial_shapes, level_start_index, sampling_loc, attn_weight, im2col_step);
  TORCH_CHECK(value.is_cuda(), "ms_deform_attn (CUDA): value must be a CUDA tensor");
  Prepared p;
  p.value = value.contiguous();
  p.spatial_shapes = spatial_shapes.to(value.device()).contiguous();
  p.level_start = level_start_index.to(value.device()).contiguous();
  p.loc = sampling_loc.contiguous();
  p.attn = attn_weight.contiguous();
  p.d = Dims{value.size(0), value.size(1), value.size(2), value.size(3), sampling_loc.size(1),
             spatial_shapes.size(0), sampling_loc.size(4)};
  return p;
}

unsigned blocks_for(int64_t count) {
  const int64_t blocks = (count + kThreads - 1) / kThreads;
  TORCH_CHECK(blocks <= 0x7fffffff, "ms_deform_attn (CUDA): launch too large; lower im2col_step");
  return static_cast<unsigned>(blocks);
}

}  // namespace

at::Tensor ms_deform_attn_forward_cuda(
    const at::Tensor& value_in,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight,
    int64_t im2col_step) {
  const c10::cuda::CUDAGuard guard(value_in.device());
  check_arch(value_in.get_device());
  Prepared p = prepare(value_in, spatial_shapes, level_start_index, sampling_loc, attn_weight, im2col_step);
  const Dims d = p.d;
  auto out = at::empty({d.N, d.Lq, d.M * d.D}, p.value.options());
  if (out.numel() == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.value.scalar_type(), "ms_deform_attn_forward_cuda", [&] {
    for (int64_t n0 = 0; n0 < d.N; n0 += im2col_step) {
      const int64_t chunk = std::min(im2col_step, d.N - n0);
      Dims dc = d;
      dc.N = chunk;
      const int64_t count = chunk * d.Lq * d.M * d.D;
      forward_kernel<scalar_t><<<blocks_for(count), kThreads, 0, stream>>>(
          p.value.data_ptr<scalar_t>() + n0 * d.S * d.M * d.D, p.spatial_shapes.data_ptr<int64_t>(),
          p.level_start.data_ptr<int64_t>(), p.loc.data_ptr<scalar_t>() + n0 * d.Lq * d.M * d.L * d.P * 2,
          p.attn.data_ptr<scalar_t>() + n0 * d.Lq * d.M * d.L * d.P,
          out.data_ptr<scalar_t>() + n0 * d.Lq * d.M * d.D, dc, count);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& value_in,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight,
    const at::Tensor& grad_output,
    int64_t im2col_step) {
  const c10::cuda::CUDAGuard guard(value_in.device());
  check_arch(value_in.get_device());
  Prepared p = prepare(value_in, spatial_shapes, level_start_index, sampling_loc, attn_weight, im2col_step);
  const Dims d = p.d;
  TORCH_CHECK(
      grad_output.numel() == d.N * d.Lq * d.M * d.D && grad_output.scalar_type() == p.value.scalar_type() &&
          grad_output.device() == p.value.device(),
      "grad_output must be (N, Lq, M * D) = (", d.N, ", ", d.Lq, ", ", d.M * d.D,
      ") with value's dtype and device, got ", grad_output.sizes(), " ", grad_output.scalar_type());
  const auto grad_out = grad_output.contiguous();
  const auto acc_type = at::toOpMathType(p.value.scalar_type());
  auto grad_value = at::zeros(p.value.sizes(), p.value.options().dtype(acc_type));
  auto grad_loc = at::zeros(p.loc.sizes(), p.loc.options().dtype(acc_type));
  auto grad_attn = at::zeros(p.attn.sizes(), p.attn.options().dtype(acc_type));
  if (grad_out.numel() > 0 && p.attn.numel() > 0) {
    auto stream = c10::cuda::getCurrentCUDAStream();
    const int reduce_width = reduce_width_for(d.D);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.value.scalar_type(), "ms_deform_attn_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      for (int64_t n0 = 0; n0 < d.N; n0 += im2col_step) {
        const int64_t chunk = std::min(im2col_step, d.N - n0);
        Dims dc = d;
        dc.N = chunk;
        const int64_t count = chunk * d.Lq * d.M * d.D;
        const int64_t value_off = n0 * d.S * d.M * d.D;
        const int64_t attn_off = n0 * d.Lq * d.M * d.L * d.P;
        backward_kernel<scalar_t><<<blocks_for(count), kThreads, 0, stream>>>(
            p.value.data_ptr<scalar_t>() + value_off, p.spatial_shapes.data_ptr<int64_t>(),
            p.level_start.data_ptr<int64_t>(), p.loc.data_ptr<scalar_t>() + 2 * attn_off,
            p.attn.data_ptr<scalar_t>() + attn_off, grad_out.data_ptr<scalar_t>() + n0 * d.Lq * d.M * d.D,
            grad_value.data_ptr<acc_t>() + value_off, grad_loc.data_ptr<acc_t>() + 2 * attn_off,
            grad_attn.data_ptr<acc_t>() + attn_off, dc, count, reduce_width);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  }
  const auto dtype = p.value.scalar_type();
  return {grad_value.to(dtype), grad_loc.to(dtype), grad_attn.to(dtype)};
}

}  // namespace detrex_lite

TORCH_LIBRARY_IMPL(detrex_lite, CUDA, m) {
  m.impl("ms_deform_attn_forward", &detrex_lite::ms_deform_attn_forward_cuda);
  m.impl("ms_deform_attn_backward", &detrex_lite::ms_deform_attn_backward_cuda);
}
