// Multi-scale deformable attention (Zhu et al. 2021, eq. 3): declarations shared by the
// registration (vision.cpp), the CPU kernels (cpu/) and the CUDA kernels (cuda/).
//
// Shapes (N batch, S = sum_l H_l * W_l value positions, M heads, D channels per head,
// Lq queries, L levels, P points per level):
//   value               (N, S, M, D)
//   spatial_shapes      (L, 2) int64, rows (H_l, W_l)
//   level_start_index   (L,) int64, offset of level l in S
//   sampling_loc        (N, Lq, M, L, P, 2) normalised (x, y) in [0, 1]
//   attn_weight         (N, Lq, M, L, P)
//   output              (N, Lq, M * D)
// Bilinear sampling uses align_corners=False and zero padding: pixel x = loc_x * W_l - 0.5.
//
// dtypes: value is float64, float32, float16 or bfloat16; sampling_loc and attn_weight each have
// value's dtype, or float32 when value is float16/bfloat16. The output and grad_value have
// value's dtype (so must grad_output), grad_sampling_loc / grad_attn_weight their input's dtype.
// Arithmetic and accumulation are in double for float64, float32 otherwise.
#pragma once

#include <torch/types.h>

#include <string>
#include <tuple>

namespace detrex_lite {

// Which CUDA kernel instance runs: the operators' `kernel` argument ("auto", "generic", "scalar"
// or "index64"). kAuto picks the fastest instance that applies (what the model uses); the others
// force a more general instance, so that tests and benchmarks run every instance on the same
// inputs. The CPU has one kernel: it checks the name and ignores the choice.
enum class KernelChoice { kAuto, kGeneric, kScalar, kIndex64 };

inline KernelChoice parse_kernel_choice(c10::string_view name) {
  if (name.empty() || name == "auto") return KernelChoice::kAuto;
  if (name == "generic") return KernelChoice::kGeneric;
  if (name == "scalar") return KernelChoice::kScalar;
  if (name == "index64") return KernelChoice::kIndex64;
  TORCH_CHECK(false, "ms_deform_attn: kernel must be auto, generic, scalar or index64, got '", std::string(name), "'");
}

// torch's spelling of a dtype ("float32", not "Float"), so that messages match the Python side.
std::string dtype_name(at::ScalarType t);

// Shape-level checks shared by every backend (ranks, N/M/L/P/Lq agreement, dtypes, devices);
// raises c10::Error naming the argument at fault. The layout's values are checked by
// check_layout_values_on_host (ms_deform_attn_layout.h) or inside the CUDA kernels.
void check_ms_deform_attn_inputs(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight,
    int64_t im2col_step);

// grad_output of the backward: (N, Lq, M * D), value's dtype and device.
void check_grad_output(const at::Tensor& value, const at::Tensor& sampling_loc, const at::Tensor& grad_output);

at::Tensor ms_deform_attn_forward_cpu(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight,
    int64_t im2col_step,
    c10::string_view kernel);

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight,
    const at::Tensor& grad_output,
    int64_t im2col_step,
    c10::string_view kernel);

}  // namespace detrex_lite
