// CPU kernels of multi-scale deformable attention (float and double).
//
// Forward: work is split over (n, query) rows with at::parallel_for. For each (n, q, m) the D
// output channels are accumulated in a small buffer; per sampling point the pixel position, the
// four corner weights (bilinear weight * attention weight) and the four corner rows are worked
// out once, then one loop over D does the arithmetic, which the compiler vectorises (D channels
// of one position and head are contiguous in value).
//
// Backward: work is split over (n, head) pairs. grad_value[n, :, m, :] is only ever written by
// the task owning (n, m), so the scatter-add into grad_value needs no atomics and no per-thread
// copies; grad_sampling_loc and grad_attn_weight are written once per sample.
//
// Out-of-map corners read a row of zeros and write to a scratch row, so the inner loops have no
// branches; that gives exactly grid_sample's zero padding.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/types.h>

#include <cmath>
#include <vector>

#include "ms_deform_attn.h"

namespace detrex_lite {
namespace {

struct Dims {
  int64_t N, S, M, D, Lq, L, P;
};

Dims dims_of(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& sampling_loc) {
  return Dims{value.size(0), value.size(1), value.size(2), value.size(3), sampling_loc.size(1),
              spatial_shapes.size(0), sampling_loc.size(4)};
}

// The four corners of one bilinear sample: row pointers into value (or the zero row) and the
// bilinear weights (without the attention weight). Returns false when no corner is inside.
template <typename scalar_t>
struct Corners {
  int64_t offset[4];  // element offsets of the corner rows from the level base, -1 when outside
  scalar_t w[4];      // bilinear weights: (y0,x0), (y0,x1), (y1,x0), (y1,x1)
  scalar_t ly, lx, hy, hx;
};

template <typename scalar_t>
inline bool make_corners(
    scalar_t loc_x, scalar_t loc_y, int64_t H, int64_t W, int64_t row_stride, int64_t col_stride,
    Corners<scalar_t>& c) {
  // align_corners=False: pixel centres sit at (i + 0.5) / size.
  const scalar_t x = loc_x * static_cast<scalar_t>(W) - static_cast<scalar_t>(0.5);
  const scalar_t y = loc_y * static_cast<scalar_t>(H) - static_cast<scalar_t>(0.5);
  // Also false for NaN; the range check keeps floor() away from huge values.
  if (!(y > -1 && x > -1 && y < H && x < W)) return false;
  const scalar_t yf = std::floor(y), xf = std::floor(x);
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

template <typename scalar_t>
void forward_kernel(
    const scalar_t* __restrict__ value,
    const int64_t* spatial_shapes,
    const int64_t* level_start,
    const scalar_t* __restrict__ loc,
    const scalar_t* __restrict__ attn,
    scalar_t* __restrict__ out,
    const Dims d) {
  const int64_t M = d.M, D = d.D, L = d.L, P = d.P;
  const int64_t col_stride = M * D;  // elements between neighbouring positions of one head
  const int64_t grain = 16;  // (n, query) rows per chunk, each M * L * P samples
  at::parallel_for(0, d.N * d.Lq, grain, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> acc(D);
    const std::vector<scalar_t> zeros(D, scalar_t(0));
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / d.Lq;
      for (int64_t m = 0; m < M; ++m) {
        std::fill(acc.begin(), acc.end(), scalar_t(0));
        scalar_t* __restrict__ a = acc.data();
        const int64_t sample0 = (row * M + m) * L * P;
        const scalar_t* loc_ptr = loc + sample0 * 2;
        const scalar_t* attn_ptr = attn + sample0;
        for (int64_t l = 0; l < L; ++l) {
          const int64_t H = spatial_shapes[2 * l], W = spatial_shapes[2 * l + 1];
          const scalar_t* base = value + ((n * d.S + level_start[l]) * M + m) * D;
          for (int64_t p = 0; p < P; ++p, loc_ptr += 2, ++attn_ptr) {
            Corners<scalar_t> c;
            if (!make_corners(loc_ptr[0], loc_ptr[1], H, W, W * col_stride, col_stride, c)) continue;
            const scalar_t aw = *attn_ptr;
            const scalar_t* v[4];
            scalar_t w[4];
            for (int k = 0; k < 4; ++k) {
              v[k] = c.offset[k] >= 0 ? base + c.offset[k] : zeros.data();
              w[k] = c.w[k] * aw;
            }
            const scalar_t *__restrict__ v0 = v[0], *__restrict__ v1 = v[1], *__restrict__ v2 = v[2],
                                        *__restrict__ v3 = v[3];
            const scalar_t w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
            for (int64_t ch = 0; ch < D; ++ch) {
              a[ch] += w0 * v0[ch] + w1 * v1[ch] + w2 * v2[ch] + w3 * v3[ch];
            }
          }
        }
        std::copy(acc.begin(), acc.end(), out + (row * M + m) * D);
      }
    }
  });
}

template <typename scalar_t>
void backward_kernel(
    const scalar_t* __restrict__ value,
    const int64_t* spatial_shapes,
    const int64_t* level_start,
    const scalar_t* __restrict__ loc,
    const scalar_t* __restrict__ attn,
    const scalar_t* __restrict__ grad_out,
    scalar_t* __restrict__ grad_value,
    scalar_t* __restrict__ grad_loc,
    scalar_t* __restrict__ grad_attn,
    const Dims d) {
  const int64_t M = d.M, D = d.D, L = d.L, P = d.P;
  const int64_t col_stride = M * D;
  // One task per (n, m): it alone writes grad_value[n, :, m, :].
  at::parallel_for(0, d.N * M, 1, [&](int64_t begin, int64_t end) {
    const std::vector<scalar_t> zeros(D, scalar_t(0));
    std::vector<scalar_t> scratch(D);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / M, m = task % M;
      for (int64_t q = 0; q < d.Lq; ++q) {
        const int64_t row = n * d.Lq + q;
        const scalar_t* __restrict__ go = grad_out + (row * M + m) * D;
        const int64_t sample0 = (row * M + m) * L * P;
        for (int64_t l = 0; l < L; ++l) {
          const int64_t H = spatial_shapes[2 * l], W = spatial_shapes[2 * l + 1];
          const int64_t level_offset = ((n * d.S + level_start[l]) * M + m) * D;
          const scalar_t* base = value + level_offset;
          scalar_t* gbase = grad_value + level_offset;
          for (int64_t p = 0; p < P; ++p) {
            const int64_t s = sample0 + l * P + p;
            Corners<scalar_t> c;
            if (!make_corners(loc[2 * s], loc[2 * s + 1], H, W, W * col_stride, col_stride, c)) {
              grad_loc[2 * s] = grad_loc[2 * s + 1] = grad_attn[s] = 0;
              continue;
            }
            const scalar_t aw = attn[s];
            const scalar_t* v[4];
            scalar_t* g[4];
            for (int k = 0; k < 4; ++k) {
              const bool inside = c.offset[k] >= 0;
              v[k] = inside ? base + c.offset[k] : zeros.data();
              g[k] = inside ? gbase + c.offset[k] : scratch.data();
            }
            const scalar_t *__restrict__ v0 = v[0], *__restrict__ v1 = v[1], *__restrict__ v2 = v[2],
                                        *__restrict__ v3 = v[3];
            const scalar_t w0 = c.w[0], w1 = c.w[1], w2 = c.w[2], w3 = c.w[3];
            const scalar_t hy = c.hy, ly = c.ly, hx = c.hx, lx = c.lx;
            scalar_t s_val = 0, s_dx = 0, s_dy = 0;
            for (int64_t ch = 0; ch < D; ++ch) {
              const scalar_t gch = go[ch];
              s_val += gch * (w0 * v0[ch] + w1 * v1[ch] + w2 * v2[ch] + w3 * v3[ch]);
              s_dx += gch * (hy * (v1[ch] - v0[ch]) + ly * (v3[ch] - v2[ch]));
              s_dy += gch * (hx * (v2[ch] - v0[ch]) + lx * (v3[ch] - v1[ch]));
            }
            // Corners may alias each other only through the scratch row, which is never read.
            for (int k = 0; k < 4; ++k) {
              scalar_t* __restrict__ gk = g[k];
              const scalar_t wk = c.w[k] * aw;
              for (int64_t ch = 0; ch < D; ++ch) gk[ch] += wk * go[ch];
            }
            grad_attn[s] = s_val;
            grad_loc[2 * s] = aw * s_dx * static_cast<scalar_t>(W);
            grad_loc[2 * s + 1] = aw * s_dy * static_cast<scalar_t>(H);
          }
        }
      }
    }
  });
}

}  // namespace

at::Tensor ms_deform_attn_forward_cpu(
    const at::Tensor& value_in,
    const at::Tensor& spatial_shapes_in,
    const at::Tensor& level_start_index_in,
    const at::Tensor& sampling_loc_in,
    const at::Tensor& attn_weight_in,
    int64_t im2col_step) {
  check_ms_deform_attn_inputs(
      value_in, spatial_shapes_in, level_start_index_in, sampling_loc_in, attn_weight_in, im2col_step);
  TORCH_CHECK(value_in.device().is_cpu(), "ms_deform_attn_forward_cpu: value must be on the CPU");
  const auto value = value_in.contiguous();
  const auto spatial_shapes = spatial_shapes_in.contiguous().cpu();
  const auto level_start = level_start_index_in.contiguous().cpu();
  const auto loc = sampling_loc_in.contiguous();
  const auto attn = attn_weight_in.contiguous();
  const Dims d = dims_of(value, spatial_shapes, loc);
  auto out = at::empty({d.N, d.Lq, d.M * d.D}, value.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
    forward_kernel<scalar_t>(
        value.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(), level_start.data_ptr<int64_t>(),
        loc.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), d);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& value_in,
    const at::Tensor& spatial_shapes_in,
    const at::Tensor& level_start_index_in,
    const at::Tensor& sampling_loc_in,
    const at::Tensor& attn_weight_in,
    const at::Tensor& grad_output_in,
    int64_t im2col_step) {
  check_ms_deform_attn_inputs(
      value_in, spatial_shapes_in, level_start_index_in, sampling_loc_in, attn_weight_in, im2col_step);
  TORCH_CHECK(value_in.device().is_cpu(), "ms_deform_attn_backward_cpu: value must be on the CPU");
  const auto value = value_in.contiguous();
  const auto spatial_shapes = spatial_shapes_in.contiguous().cpu();
  const auto level_start = level_start_index_in.contiguous().cpu();
  const auto loc = sampling_loc_in.contiguous();
  const auto attn = attn_weight_in.contiguous();
  const Dims d = dims_of(value, spatial_shapes, loc);
  TORCH_CHECK(
      grad_output_in.numel() == d.N * d.Lq * d.M * d.D && grad_output_in.scalar_type() == value.scalar_type(),
      "grad_output must be (N, Lq, M * D) = (", d.N, ", ", d.Lq, ", ", d.M * d.D, ") of value's dtype, got ",
      grad_output_in.sizes(), " ", grad_output_in.scalar_type());
  const auto grad_out = grad_output_in.contiguous();
  auto grad_value = at::zeros_like(value);
  auto grad_loc = at::zeros_like(loc);
  auto grad_attn = at::zeros_like(attn);
  if (grad_out.numel() == 0 || attn.numel() == 0) return {grad_value, grad_loc, grad_attn};
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
    backward_kernel<scalar_t>(
        value.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(), level_start.data_ptr<int64_t>(),
        loc.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(), grad_out.data_ptr<scalar_t>(),
        grad_value.data_ptr<scalar_t>(), grad_loc.data_ptr<scalar_t>(), grad_attn.data_ptr<scalar_t>(), d);
  });
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace detrex_lite
