// Registers the detrex_lite operators with the PyTorch dispatcher and exposes build facts
// (CUDA or not, compiled architectures) to Python as detrex_lite._C.
//
// The schemas live here; the CPU kernels are registered below and the CUDA kernels in
// cuda/ms_deform_attn_cuda.cu (TORCH_LIBRARY_IMPL(detrex_lite, CUDA, ...)), so a CPU-only build
// simply has no CUDA kernel and the dispatcher reports that clearly.
#include <torch/extension.h>

#include "ms_deform_attn.h"

// setup.py defines DETREX_LITE_CUDA_ARCHS as e.g. sm_80+sm_90 (no quotes: it passes through
// compiler command lines); it is turned into a string here.
#define DETREX_LITE_STRINGIFY_(x) #x
#define DETREX_LITE_STRINGIFY(x) DETREX_LITE_STRINGIFY_(x)
#ifdef DETREX_LITE_CUDA_ARCHS
#define DETREX_LITE_CUDA_ARCHS_STR DETREX_LITE_STRINGIFY(DETREX_LITE_CUDA_ARCHS)
#else
#define DETREX_LITE_CUDA_ARCHS_STR ""
#endif

namespace detrex_lite {

std::string dtype_name(at::ScalarType t) {
  return std::string(c10::getDtypeNames(t).first);
}

void check_ms_deform_attn_inputs(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight,
    int64_t im2col_step) {
  TORCH_CHECK(value.dim() == 4, "value must be (N, S, M, D), got shape ", value.sizes());
  TORCH_CHECK(
      spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2,
      "spatial_shapes must be (L, 2), got shape ", spatial_shapes.sizes());
  TORCH_CHECK(
      level_start_index.dim() == 1 && level_start_index.size(0) == spatial_shapes.size(0),
      "level_start_index must be (L,) with L = ", spatial_shapes.size(0), ", got shape ",
      level_start_index.sizes());
  TORCH_CHECK(
      spatial_shapes.scalar_type() == at::kLong && level_start_index.scalar_type() == at::kLong,
      "spatial_shapes and level_start_index must be int64");
  const int64_t N = value.size(0), M = value.size(2);
  const int64_t L = spatial_shapes.size(0);
  TORCH_CHECK(
      sampling_loc.dim() == 6 && sampling_loc.size(0) == N && sampling_loc.size(2) == M &&
          sampling_loc.size(3) == L && sampling_loc.size(5) == 2,
      "sampling_loc must be (N, Lq, M, L, P, 2) = (", N, ", Lq, ", M, ", ", L,
      ", P, 2), got shape ", sampling_loc.sizes());
  TORCH_CHECK(
      attn_weight.dim() == 5 && attn_weight.size(0) == N && attn_weight.size(1) == sampling_loc.size(1) &&
          attn_weight.size(2) == M && attn_weight.size(3) == L && attn_weight.size(4) == sampling_loc.size(4),
      "attn_weight must be (N, Lq, M, L, P) matching sampling_loc ", sampling_loc.sizes(), ", got shape ",
      attn_weight.sizes());
  // The dtype contract (docs/ops.md): locations and weights have value's dtype, or float32 when
  // value is half/bfloat16 (16-bit locations are off by up to a third of a pixel on large maps).
  const at::ScalarType value_type = value.scalar_type();
  const bool half_value = value_type == at::kHalf || value_type == at::kBFloat16;
  TORCH_CHECK(
      half_value || value_type == at::kFloat || value_type == at::kDouble,
      "value must be float64, float32, float16 or bfloat16, got ", dtype_name(value_type));
  const auto allowed = [&](at::ScalarType t) { return t == value_type || (half_value && t == at::kFloat); };
  const std::string expected = dtype_name(value_type) + (half_value ? " or float32" : "");
  TORCH_CHECK(
      allowed(sampling_loc.scalar_type()), "sampling_loc must be ", expected, " for value of dtype ",
      dtype_name(value_type), ", got ", dtype_name(sampling_loc.scalar_type()));
  TORCH_CHECK(
      allowed(attn_weight.scalar_type()), "attn_weight must be ", expected, " for value of dtype ",
      dtype_name(value_type), ", got ", dtype_name(attn_weight.scalar_type()));
  TORCH_CHECK(
      value.device() == sampling_loc.device() && value.device() == attn_weight.device(),
      "value, sampling_loc and attn_weight must be on one device, got ", value.device(), ", ",
      sampling_loc.device(), " and ", attn_weight.device());
  // The layout may stay on the CPU next to a CUDA value (it is then checked on the host).
  for (const at::Tensor* t : {&spatial_shapes, &level_start_index}) {
    TORCH_CHECK(
        t->device().is_cpu() || t->device() == value.device(),
        "spatial_shapes and level_start_index must be on the CPU or on value's device ", value.device(),
        ", got ", t->device());
  }
  TORCH_CHECK(im2col_step > 0, "im2col_step must be positive, got ", im2col_step);
}

void check_grad_output(const at::Tensor& value, const at::Tensor& sampling_loc, const at::Tensor& grad_output) {
  const int64_t N = value.size(0), M = value.size(2), D = value.size(3), Lq = sampling_loc.size(1);
  TORCH_CHECK(
      grad_output.dim() == 3 && grad_output.size(0) == N && grad_output.size(1) == Lq &&
          grad_output.size(2) == M * D && grad_output.scalar_type() == value.scalar_type() &&
          grad_output.device() == value.device(),
      "grad_output must be (N, Lq, M * D) = (", N, ", ", Lq, ", ", M * D, ") of value's dtype ",
      dtype_name(value.scalar_type()), " on ", value.device(), ", got ", grad_output.sizes(), " ",
      dtype_name(grad_output.scalar_type()), " on ", grad_output.device());
}

}  // namespace detrex_lite

TORCH_LIBRARY(detrex_lite, m) {
  m.def(
      "ms_deform_attn_forward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_loc, Tensor attn_weight, int im2col_step, str kernel=\"auto\") -> Tensor");
  m.def(
      "ms_deform_attn_backward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_loc, Tensor attn_weight, Tensor grad_output, int im2col_step, str kernel=\"auto\") "
      "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(detrex_lite, CPU, m) {
  m.impl("ms_deform_attn_forward", &detrex_lite::ms_deform_attn_forward_cpu);
  m.impl("ms_deform_attn_backward", &detrex_lite::ms_deform_attn_backward_cpu);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "detrex_lite compiled operators (registered under torch.ops.detrex_lite)";
  m.def(
      "with_cuda",
      []() {
#ifdef WITH_CUDA
        return true;
#else
        return false;
#endif
      },
      "Whether the CUDA kernels were compiled.");
  m.def(
      "cuda_archs", []() { return std::string(DETREX_LITE_CUDA_ARCHS_STR); },
      "'+'-separated GPU code targets compiled in (e.g. 'sm_80+sm_90'), empty without CUDA.");
}
