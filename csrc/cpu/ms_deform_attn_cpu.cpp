// CPU kernels of multi-scale deformable attention (float and double).
//
// dtypes (contract in ms_deform_attn.h): float64 and float32 inputs run as they are. The forward
// of a bfloat16 value with float32 locations and weights (what a bfloat16 model passes) reads the
// value as bfloat16, widening each 8-channel group to float32 in registers, and sums in float32.
// Other float16 / bfloat16 inputs are computed in float32 copies; the output and grad_value come
// back in value's dtype, the location and weight gradients in their inputs' dtypes.
//
// Forward: work is split over (n, query) rows with at::parallel_for. For each (n, q, m) the D
// output channels are accumulated in registers; per sampling point the pixel position, the four
// corner weights (bilinear weight * attention weight) and the four corner rows are worked out
// once, then the D channels (contiguous in value) are processed with 32-byte vectors.
//
// Backward: work is split over (n, head) pairs. grad_value[n, :, m, :] is only ever written by
// the task owning (n, m), so the scatter-add into grad_value needs no atomics and no per-thread
// copies; grad_sampling_loc and grad_attn_weight are written once per sample.
//
// Out-of-map corners read a row of zeros and write to a scratch row, so the inner loops have no
// branches; that gives exactly grid_sample's zero padding.
//
// Speed: when D is 1, 2, 4, 8 or 16 vectors of 32 bytes (e.g. D = 32 floats), the channel loops
// use GCC/Clang vector extensions with D known at compile time (accumulators stay in registers);
// other D use plain loops. On x86-64 an AVX2+FMA copy of the kernels is compiled too and chosen
// at run time when the CPU has those instructions.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "ms_deform_attn.h"
#include "ms_deform_attn_layout.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DETREX_LITE_X86_DISPATCH 1
#define DETREX_LITE_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define DETREX_LITE_X86_DISPATCH 0
#define DETREX_LITE_TARGET_AVX2
#endif
#define DETREX_LITE_INLINE inline __attribute__((always_inline))

namespace detrex_lite {
namespace {

constexpr int kVecBytes = 32;
constexpr int kMaxVecs = 16;  // D up to 128 floats / 64 doubles on the vector path

// A 32-byte vector of scalar_t; loads and stores through it may be unaligned.
template <typename scalar_t>
struct VecOf {
  typedef scalar_t type __attribute__((vector_size(kVecBytes), aligned(sizeof(scalar_t))));
  static constexpr int lanes = kVecBytes / sizeof(scalar_t);
};

template <typename V>
DETREX_LITE_INLINE V vload(const void* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V>
DETREX_LITE_INLINE void vstore(void* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}

// One vector V of scalar_t lanes from `lanes` consecutive value_t elements: a plain load, or
// for bfloat16 a 16-byte load widened to float32 (a bfloat16 is the top half of a float32).
template <typename V, typename value_t>
DETREX_LITE_INLINE V load_lanes(const value_t* p) {
  if constexpr (std::is_same_v<value_t, c10::BFloat16>) {
    typedef uint16_t Half8 __attribute__((vector_size(16), aligned(2)));
    typedef uint32_t Word8 __attribute__((vector_size(32)));
    static_assert(sizeof(V) == sizeof(Word8), "bfloat16 values widen to 8 float32 lanes");
    const Word8 words = __builtin_convertvector(vload<Half8>(p), Word8) << 16;
    V v;
    std::memcpy(&v, &words, sizeof(V));
    return v;
  } else {
    return vload<V>(p);
  }
}

template <typename scalar_t, typename V>
DETREX_LITE_INLINE scalar_t hsum(V v) {
  scalar_t s = 0;
  for (int i = 0; i < VecOf<scalar_t>::lanes; ++i) s += v[i];
  return s;
}

struct Dims {
  int64_t N, S, M, D, Lq, L, P;
};

// value_t: the dtype value is stored in; scalar_t: everything else and all arithmetic. They
// differ only in the forward of a bfloat16 value (value_t = c10::BFloat16, scalar_t = float).
template <typename scalar_t, typename value_t = scalar_t>
struct Args {
  const value_t* value;
  const int64_t* spatial_shapes;
  const int64_t* level_start;
  const scalar_t* loc;
  const scalar_t* attn;
  const scalar_t* grad_out;  // backward only
  scalar_t* out;             // forward: output; backward: grad_value
  scalar_t* grad_loc;
  scalar_t* grad_attn;
  Dims d;
};

// The four corners of one bilinear sample. Returns false when no corner is inside the map
// (also for NaN; the range check also keeps floor() away from huge values).
template <typename scalar_t>
struct Corners {
  int64_t offset[4];  // element offsets of the corner rows from the level base, -1 when outside
  scalar_t w[4];      // bilinear weights: (y0,x0), (y0,x1), (y1,x0), (y1,x1)
  scalar_t ly, lx, hy, hx;
};

// loc * size - 0.5 with the product rounded before the subtraction, never one fused multiply-add
// (this file is compiled with -ffp-contract=fast, and the AVX2 copy has FMA): a coordinate within
// an ulp of an integer then lands in the same bilinear cell as in the CUDA kernels (__fmul_rn /
// __fsub_rn). The empty asm makes the rounded product opaque to the compiler.
template <typename scalar_t>
DETREX_LITE_INLINE scalar_t pixel_coordinate(scalar_t loc, int64_t size) {
  scalar_t product = loc * static_cast<scalar_t>(size);
#if defined(__x86_64__)
  asm("" : "+x"(product));
#elif defined(__aarch64__)
  asm("" : "+w"(product));
#else
  asm volatile("" : "+m"(product));
#endif
  return product - static_cast<scalar_t>(0.5);
}

// A skipped sample (no corner on the map) makes its output row NaN when its location or weight
// is NaN or infinite, as the reference's grid_sample does (NaN in, NaN out; 0 * inf = NaN).
template <typename scalar_t>
DETREX_LITE_INLINE bool finite_sample(scalar_t loc_x, scalar_t loc_y, scalar_t weight) {
  return std::isfinite(loc_x) && std::isfinite(loc_y) && std::isfinite(weight);
}

template <typename scalar_t>
DETREX_LITE_INLINE bool make_corners(
    scalar_t loc_x, scalar_t loc_y, int64_t H, int64_t W, int64_t col_stride, Corners<scalar_t>& c) {
  // align_corners=False: pixel centres sit at (i + 0.5) / size.
  const scalar_t x = pixel_coordinate(loc_x, W);
  const scalar_t y = pixel_coordinate(loc_y, H);
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
  const int64_t row_stride = W * col_stride;
  const bool y0_in = y0 >= 0, y1_in = y1 < H, x0_in = x0 >= 0, x1_in = x1 < W;
  c.offset[0] = (y0_in && x0_in) ? y0 * row_stride + x0 * col_stride : -1;
  c.offset[1] = (y0_in && x1_in) ? y0 * row_stride + x1 * col_stride : -1;
  c.offset[2] = (y1_in && x0_in) ? y1 * row_stride + x0 * col_stride : -1;
  c.offset[3] = (y1_in && x1_in) ? y1 * row_stride + x1 * col_stride : -1;
  return true;
}

// Forward for rows [begin, end) of (n, query). NV > 0: D = NV vectors; NV == 0: any D.
// `zeros` holds D zeros, `acc` D scratch values (generic path only). A bfloat16 value (value_t)
// is read as it is and widened to float32 in registers; sums are float32.
template <typename scalar_t, typename value_t, int NV>
DETREX_LITE_INLINE void forward_rows_impl(
    const Args<scalar_t, value_t>& a, int64_t begin, int64_t end, const value_t* zeros, scalar_t* acc) {
  using V = typename VecOf<scalar_t>::type;
  constexpr int lanes = VecOf<scalar_t>::lanes;
  const Dims d = a.d;
  const int64_t M = d.M, D = d.D, L = d.L, P = d.P, col_stride = M * D;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t n = row / d.Lq;
    for (int64_t m = 0; m < M; ++m) {
      V vacc[NV > 0 ? NV : 1];
      if constexpr (NV > 0) {
        for (int j = 0; j < NV; ++j) vacc[j] = V{} ;
      } else {
        std::fill(acc, acc + D, scalar_t(0));
      }
      bool poisoned = false;  // a NaN / infinite location or weight among the skipped samples
      const int64_t sample0 = (row * M + m) * L * P;
      const scalar_t* loc = a.loc + sample0 * 2;
      const scalar_t* attn = a.attn + sample0;
      for (int64_t l = 0; l < L; ++l) {
        const int64_t H = a.spatial_shapes[2 * l], W = a.spatial_shapes[2 * l + 1];
        const value_t* base = a.value + ((n * d.S + a.level_start[l]) * M + m) * D;
        for (int64_t p = 0; p < P; ++p, loc += 2, ++attn) {
          Corners<scalar_t> c;
          if (!make_corners(loc[0], loc[1], H, W, col_stride, c)) {
            poisoned = poisoned || !finite_sample(loc[0], loc[1], *attn);
            continue;
          }
          const scalar_t aw = *attn;
          const value_t* v0 = c.offset[0] >= 0 ? base + c.offset[0] : zeros;
          const value_t* v1 = c.offset[1] >= 0 ? base + c.offset[1] : zeros;
          const value_t* v2 = c.offset[2] >= 0 ? base + c.offset[2] : zeros;
          const value_t* v3 = c.offset[3] >= 0 ? base + c.offset[3] : zeros;
          const scalar_t w0 = c.w[0] * aw, w1 = c.w[1] * aw, w2 = c.w[2] * aw, w3 = c.w[3] * aw;
          if constexpr (NV > 0) {
            for (int j = 0; j < NV; ++j) {
              const int o = j * lanes;
              vacc[j] += w0 * load_lanes<V>(v0 + o) + w1 * load_lanes<V>(v1 + o) + w2 * load_lanes<V>(v2 + o) +
                  w3 * load_lanes<V>(v3 + o);
            }
          } else {
            for (int64_t ch = 0; ch < D; ++ch) {
              acc[ch] += w0 * static_cast<scalar_t>(v0[ch]) + w1 * static_cast<scalar_t>(v1[ch]) +
                  w2 * static_cast<scalar_t>(v2[ch]) + w3 * static_cast<scalar_t>(v3[ch]);
            }
          }
        }
      }
      scalar_t* out = a.out + (row * M + m) * D;
      if constexpr (NV > 0) {
        for (int j = 0; j < NV; ++j) vstore(out + j * lanes, vacc[j]);
      } else {
        std::copy(acc, acc + D, out);
      }
      if (poisoned) std::fill(out, out + D, std::numeric_limits<scalar_t>::quiet_NaN());
    }
  }
}

// Backward for the (n, m) tasks [begin, end). `zeros`/`scratch`: D zeros / D writable values.
template <typename scalar_t, int NV>
DETREX_LITE_INLINE void backward_tasks_impl(
    const Args<scalar_t>& a, int64_t begin, int64_t end, const scalar_t* zeros, scalar_t* scratch) {
  using V = typename VecOf<scalar_t>::type;
  constexpr int lanes = VecOf<scalar_t>::lanes;
  const Dims d = a.d;
  const int64_t M = d.M, D = d.D, L = d.L, P = d.P, col_stride = M * D;
  for (int64_t task = begin; task < end; ++task) {
    const int64_t n = task / M, m = task % M;
    for (int64_t q = 0; q < d.Lq; ++q) {
      const int64_t row = n * d.Lq + q;
      const scalar_t* go = a.grad_out + (row * M + m) * D;
      const int64_t sample0 = (row * M + m) * L * P;
      for (int64_t l = 0; l < L; ++l) {
        const int64_t H = a.spatial_shapes[2 * l], W = a.spatial_shapes[2 * l + 1];
        const int64_t level_offset = ((n * d.S + a.level_start[l]) * M + m) * D;
        const scalar_t* base = a.value + level_offset;
        scalar_t* gbase = a.out + level_offset;
        for (int64_t p = 0; p < P; ++p) {
          const int64_t s = sample0 + l * P + p;
          Corners<scalar_t> c;
          if (!make_corners(a.loc[2 * s], a.loc[2 * s + 1], H, W, col_stride, c)) {
            // Grads stay 0, or NaN for a NaN / infinite location or weight (the forward's NaN).
            if (!finite_sample(a.loc[2 * s], a.loc[2 * s + 1], a.attn[s])) {
              const scalar_t nan = std::numeric_limits<scalar_t>::quiet_NaN();
              const bool finite_location = std::isfinite(a.loc[2 * s]) && std::isfinite(a.loc[2 * s + 1]);
              a.grad_loc[2 * s] = a.grad_loc[2 * s + 1] = nan;
              if (!finite_location) a.grad_attn[s] = nan;
            }
            continue;
          }
          const scalar_t aw = a.attn[s];
          const scalar_t* v[4];
          scalar_t* g[4];
          for (int k = 0; k < 4; ++k) {
            const bool inside = c.offset[k] >= 0;
            v[k] = inside ? base + c.offset[k] : zeros;
            g[k] = inside ? gbase + c.offset[k] : scratch;
          }
          const scalar_t w0 = c.w[0], w1 = c.w[1], w2 = c.w[2], w3 = c.w[3];
          const scalar_t hy = c.hy, ly = c.ly, hx = c.hx, lx = c.lx;
          const scalar_t gw0 = w0 * aw, gw1 = w1 * aw, gw2 = w2 * aw, gw3 = w3 * aw;
          scalar_t s_val = 0, s_dx = 0, s_dy = 0;
          if constexpr (NV > 0) {
            V acc_val{}, acc_dx{}, acc_dy{};
            for (int j = 0; j < NV; ++j) {
              const int o = j * lanes;
              const V gj = vload<V>(go + o);
              const V a0 = vload<V>(v[0] + o), a1 = vload<V>(v[1] + o), a2 = vload<V>(v[2] + o),
                      a3 = vload<V>(v[3] + o);
              acc_val += gj * (w0 * a0 + w1 * a1 + w2 * a2 + w3 * a3);
              acc_dx += gj * (hy * (a1 - a0) + ly * (a3 - a2));
              acc_dy += gj * (hx * (a2 - a0) + lx * (a3 - a1));
              // Corners never alias each other except through the scratch row (never read).
              vstore(g[0] + o, vload<V>(g[0] + o) + gw0 * gj);
              vstore(g[1] + o, vload<V>(g[1] + o) + gw1 * gj);
              vstore(g[2] + o, vload<V>(g[2] + o) + gw2 * gj);
              vstore(g[3] + o, vload<V>(g[3] + o) + gw3 * gj);
            }
            s_val = hsum<scalar_t>(acc_val);
            s_dx = hsum<scalar_t>(acc_dx);
            s_dy = hsum<scalar_t>(acc_dy);
          } else {
            const scalar_t *v0 = v[0], *v1 = v[1], *v2 = v[2], *v3 = v[3];
            for (int64_t ch = 0; ch < D; ++ch) {
              const scalar_t gch = go[ch];
              s_val += gch * (w0 * v0[ch] + w1 * v1[ch] + w2 * v2[ch] + w3 * v3[ch]);
              s_dx += gch * (hy * (v1[ch] - v0[ch]) + ly * (v3[ch] - v2[ch]));
              s_dy += gch * (hx * (v2[ch] - v0[ch]) + lx * (v3[ch] - v1[ch]));
            }
            const scalar_t gw[4] = {gw0, gw1, gw2, gw3};
            for (int k = 0; k < 4; ++k) {
              scalar_t* gk = g[k];
              for (int64_t ch = 0; ch < D; ++ch) gk[ch] += gw[k] * go[ch];
            }
          }
          a.grad_attn[s] = s_val;
          a.grad_loc[2 * s] = aw * s_dx * static_cast<scalar_t>(W);
          a.grad_loc[2 * s + 1] = aw * s_dy * static_cast<scalar_t>(H);
        }
      }
    }
  }
}

// The same code compiled for the baseline ISA and (x86-64) for AVX2+FMA.
template <typename scalar_t, typename value_t, int NV>
void forward_rows(const Args<scalar_t, value_t>& a, int64_t b, int64_t e, const value_t* z, scalar_t* acc) {
  forward_rows_impl<scalar_t, value_t, NV>(a, b, e, z, acc);
}
template <typename scalar_t, int NV>
void backward_tasks(const Args<scalar_t>& a, int64_t b, int64_t e, const scalar_t* z, scalar_t* s) {
  backward_tasks_impl<scalar_t, NV>(a, b, e, z, s);
}
#if DETREX_LITE_X86_DISPATCH
template <typename scalar_t, typename value_t, int NV>
DETREX_LITE_TARGET_AVX2 void forward_rows_avx2(
    const Args<scalar_t, value_t>& a, int64_t b, int64_t e, const value_t* z, scalar_t* acc) {
  forward_rows_impl<scalar_t, value_t, NV>(a, b, e, z, acc);
}
template <typename scalar_t, int NV>
DETREX_LITE_TARGET_AVX2 void backward_tasks_avx2(
    const Args<scalar_t>& a, int64_t b, int64_t e, const scalar_t* z, scalar_t* s) {
  backward_tasks_impl<scalar_t, NV>(a, b, e, z, s);
}
#endif

bool cpu_has_avx2() {
#if DETREX_LITE_X86_DISPATCH
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

template <typename scalar_t>
using RowFn = void (*)(const Args<scalar_t>&, int64_t, int64_t, const scalar_t*, scalar_t*);
template <typename scalar_t, typename value_t>
using ForwardFn = void (*)(const Args<scalar_t, value_t>&, int64_t, int64_t, const value_t*, scalar_t*);

template <typename scalar_t, int NV>
RowFn<scalar_t> pick(bool backward) {
#if DETREX_LITE_X86_DISPATCH
  if (cpu_has_avx2()) return backward ? &backward_tasks_avx2<scalar_t, NV> : &forward_rows_avx2<scalar_t, scalar_t, NV>;
#endif
  return backward ? &backward_tasks<scalar_t, NV> : &forward_rows<scalar_t, scalar_t, NV>;
}

template <typename scalar_t, typename value_t, int NV>
ForwardFn<scalar_t, value_t> pick_forward() {
#if DETREX_LITE_X86_DISPATCH
  if (cpu_has_avx2()) return &forward_rows_avx2<scalar_t, value_t, NV>;
#endif
  return &forward_rows<scalar_t, value_t, NV>;
}

// The vector width for this D: NV = D / lanes when that is 1, 2, 4, 8 or 16, else 0 (generic).
template <typename scalar_t>
int vector_count(int64_t D) {
  constexpr int lanes = VecOf<scalar_t>::lanes;
  const int64_t nv = D % lanes == 0 ? D / lanes : 0;
  return (nv == 1 || nv == 2 || nv == 4 || nv == 8 || nv == 16) ? static_cast<int>(nv) : 0;
}

// The kernel for this D: the vector path when D is 1, 2, 4, 8 or 16 whole vectors.
template <typename scalar_t>
RowFn<scalar_t> select_kernel(int64_t D, bool backward) {
  switch (vector_count<scalar_t>(D)) {
    case 1: return pick<scalar_t, 1>(backward);
    case 2: return pick<scalar_t, 2>(backward);
    case 4: return pick<scalar_t, 4>(backward);
    case 8: return pick<scalar_t, 8>(backward);
    case 16: return pick<scalar_t, 16>(backward);
    default: return pick<scalar_t, 0>(backward);
  }
}

template <typename scalar_t, typename value_t>
ForwardFn<scalar_t, value_t> select_forward_kernel(int64_t D) {
  switch (vector_count<scalar_t>(D)) {
    case 1: return pick_forward<scalar_t, value_t, 1>();
    case 2: return pick_forward<scalar_t, value_t, 2>();
    case 4: return pick_forward<scalar_t, value_t, 4>();
    case 8: return pick_forward<scalar_t, value_t, 8>();
    case 16: return pick_forward<scalar_t, value_t, 16>();
    default: return pick_forward<scalar_t, value_t, 0>();
  }
}

template <typename scalar_t, typename value_t = scalar_t>
void run_forward(const Args<scalar_t, value_t>& a) {
  const ForwardFn<scalar_t, value_t> fn = select_forward_kernel<scalar_t, value_t>(a.d.D);
  const int64_t grain = 16;  // (n, query) rows per chunk, each M * L * P samples
  at::parallel_for(0, a.d.N * a.d.Lq, grain, [&](int64_t begin, int64_t end) {
    std::vector<value_t> zeros(a.d.D, value_t(0));
    std::vector<scalar_t> acc(a.d.D, scalar_t(0));
    fn(a, begin, end, zeros.data(), acc.data());
  });
}

template <typename scalar_t>
void run_backward(const Args<scalar_t>& a) {
  const RowFn<scalar_t> fn = select_kernel<scalar_t>(a.d.D, /*backward=*/true);
  // One task per (n, m): it alone writes grad_value[n, :, m, :].
  at::parallel_for(0, a.d.N * a.d.M, 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> buffers(2 * a.d.D, scalar_t(0));  // zeros, scratch
    fn(a, begin, end, buffers.data(), buffers.data() + a.d.D);
  });
}

Dims dims_of(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& sampling_loc) {
  return Dims{value.size(0), value.size(1), value.size(2), value.size(3), sampling_loc.size(1),
              spatial_shapes.size(0), sampling_loc.size(4)};
}

// The kernels read float, double and (forward, float32 locations) bfloat16 values; the rest of
// half and bfloat16 is computed in float32 copies.
bool needs_float32_copy(const at::Tensor& value) {
  return value.scalar_type() == at::kHalf || value.scalar_type() == at::kBFloat16;
}

// Forward on checked CPU inputs: value stored as value_t; locations, weights, sums and the
// output as scalar_t (value_t == scalar_t for float / double; bfloat16 value with float32 rest).
template <typename scalar_t, typename value_t>
at::Tensor forward_as(
    const at::Tensor& value_in,
    const at::Tensor& spatial_shapes_in,
    const at::Tensor& level_start_index_in,
    const at::Tensor& sampling_loc_in,
    const at::Tensor& attn_weight_in) {
  const auto value = value_in.contiguous();
  const auto spatial_shapes = spatial_shapes_in.contiguous().cpu();
  const auto level_start = level_start_index_in.contiguous().cpu();
  const auto loc = sampling_loc_in.contiguous();
  const auto attn = attn_weight_in.contiguous();
  const Dims d = dims_of(value, spatial_shapes, loc);
  auto out = at::empty({d.N, d.Lq, d.M * d.D}, loc.options());
  if (out.numel() == 0) return out;
  if (d.L * d.P == 0) return out.zero_();
  Args<scalar_t, value_t> a{value.data_ptr<value_t>(), spatial_shapes.data_ptr<int64_t>(),
                            level_start.data_ptr<int64_t>(), loc.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(),
                            nullptr, out.data_ptr<scalar_t>(), nullptr, nullptr, d};
  run_forward(a);
  return out;
}

// Forward on checked CPU inputs that share one dtype, float or double.
at::Tensor forward_kernel(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight) {
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
    out = forward_as<scalar_t, scalar_t>(value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
  });
  return out;
}

// Backward on checked CPU inputs that share one dtype, float or double.
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_kernel(
    const at::Tensor& value_in,
    const at::Tensor& spatial_shapes_in,
    const at::Tensor& level_start_index_in,
    const at::Tensor& sampling_loc_in,
    const at::Tensor& attn_weight_in,
    const at::Tensor& grad_output_in) {
  const auto value = value_in.contiguous();
  const auto spatial_shapes = spatial_shapes_in.contiguous().cpu();
  const auto level_start = level_start_index_in.contiguous().cpu();
  const auto loc = sampling_loc_in.contiguous();
  const auto attn = attn_weight_in.contiguous();
  const auto grad_out = grad_output_in.contiguous();
  const Dims d = dims_of(value, spatial_shapes, loc);
  auto grad_value = at::zeros_like(value);
  auto grad_loc = at::zeros_like(loc);
  auto grad_attn = at::zeros_like(attn);
  if (grad_out.numel() == 0 || attn.numel() == 0) return {grad_value, grad_loc, grad_attn};
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
    Args<scalar_t> a{value.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(),
                     level_start.data_ptr<int64_t>(), loc.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(),
                     grad_out.data_ptr<scalar_t>(), grad_value.data_ptr<scalar_t>(), grad_loc.data_ptr<scalar_t>(),
                     grad_attn.data_ptr<scalar_t>(), d};
    run_backward(a);
  });
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace

at::Tensor ms_deform_attn_forward_cpu(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight,
    int64_t im2col_step,
    c10::string_view kernel) {
  check_ms_deform_attn_inputs(value, spatial_shapes, level_start_index, sampling_loc, attn_weight, im2col_step);
  (void)parse_kernel_choice(kernel);  // a valid name; the CPU has one kernel
  TORCH_CHECK(value.device().is_cpu(), "ms_deform_attn_forward_cpu: value must be on the CPU");
  // The layout's values decide which memory the kernel reads: checked before it runs.
  check_layout_values_on_host(spatial_shapes, level_start_index, value.size(1));
  if (!needs_float32_copy(value)) {
    // float64 / float32: the check above guarantees one dtype for all three.
    return forward_kernel(value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
  }
  if (value.scalar_type() == at::kBFloat16 && sampling_loc.scalar_type() == at::kFloat &&
      attn_weight.scalar_type() == at::kFloat) {
    // What MultiScaleDeformableAttention passes in a bfloat16 model: value read as bfloat16.
    // Float32 sums, the output rounded to bfloat16 once at the end.
    return forward_as<float, c10::BFloat16>(value, spatial_shapes, level_start_index, sampling_loc, attn_weight)
        .to(at::kBFloat16);
  }
  // Half/bfloat16 value; locations and weights are value's dtype or already float32 (no copy).
  const auto out = forward_kernel(
      value.to(at::kFloat), spatial_shapes, level_start_index, sampling_loc.to(at::kFloat),
      attn_weight.to(at::kFloat));
  return out.to(value.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight,
    const at::Tensor& grad_output,
    int64_t im2col_step,
    c10::string_view kernel) {
  check_ms_deform_attn_inputs(value, spatial_shapes, level_start_index, sampling_loc, attn_weight, im2col_step);
  (void)parse_kernel_choice(kernel);  // a valid name; the CPU has one kernel
  TORCH_CHECK(value.device().is_cpu(), "ms_deform_attn_backward_cpu: value must be on the CPU");
  check_grad_output(value, sampling_loc, grad_output);
  // The layout's values decide which memory the kernel reads and writes: checked before it runs.
  check_layout_values_on_host(spatial_shapes, level_start_index, value.size(1));
  if (!needs_float32_copy(value)) {
    return backward_kernel(value, spatial_shapes, level_start_index, sampling_loc, attn_weight, grad_output);
  }
  auto grads = backward_kernel(
      value.to(at::kFloat), spatial_shapes, level_start_index, sampling_loc.to(at::kFloat),
      attn_weight.to(at::kFloat), grad_output.to(at::kFloat));
  // Each gradient in its input's dtype (a float32 location keeps a float32 gradient).
  return {std::get<0>(grads).to(value.scalar_type()), std::get<1>(grads).to(sampling_loc.scalar_type()),
          std::get<2>(grads).to(attn_weight.scalar_type())};
}

}  // namespace detrex_lite
