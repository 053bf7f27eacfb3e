// CUDA entry points of multi-scale deformable attention: argument checks, device guard, stream,
// and a launcher for the kernels in ms_deform_attn_kernels.cuh (which hold the algorithm and
// are also run on the CPU by tests/cuda_emulation).
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>
#include <torch/types.h>

#include <mutex>
#include <string>

#include "ms_deform_attn.h"
#include "ms_deform_attn_kernels.cuh"

#define DETREX_LITE_STRINGIFY_(x) #x
#define DETREX_LITE_STRINGIFY(x) DETREX_LITE_STRINGIFY_(x)
#ifdef DETREX_LITE_CUDA_ARCHS
#define DETREX_LITE_CUDA_ARCHS_STR DETREX_LITE_STRINGIFY(DETREX_LITE_CUDA_ARCHS)
#else
#define DETREX_LITE_CUDA_ARCHS_STR "unknown"
#endif

namespace detrex_lite {
namespace {

// Launches a kernel on the current stream and checks the launch.
struct StreamLauncher {
  cudaStream_t stream;
  template <typename... KernelArgs, typename... Args>
  void operator()(void (*kernel)(KernelArgs...), unsigned blocks, int threads, Args&&... args) const {
    kernel<<<blocks, threads, 0, stream>>>(static_cast<KernelArgs>(args)...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

// Where the layout is checked (msda_cuda::LayoutCheck): on the host when it is on the CPU; by the
// kernels otherwise, with the error flag read after the launch unless a CUDA graph is being
// captured (reading it would synchronise).
msda_cuda::LayoutCheck layout_check(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index) {
  const auto check = msda_cuda::layout_check_for(spatial_shapes, level_start_index);
  if (check == msda_cuda::LayoutCheck::kKernel &&
      c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None) {
    return msda_cuda::LayoutCheck::kKernelUnreported;
  }
  return check;
}

// A GPU whose architecture the build does not cover has no kernel image: say how to rebuild.
void check_arch(int device) {
  static std::mutex mutex;
  static bool checked[64] = {false};
  std::lock_guard<std::mutex> lock(mutex);
  if (device >= 0 && device < 64 && checked[device]) return;
  cudaFuncAttributes attributes;
  const cudaError_t status =
      cudaFuncGetAttributes(&attributes, msda_cuda::forward_kernel<float, float, 4, 4, 4, int32_t>);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();  // clear the (non-sticky) error so later CUDA calls are unaffected
    cudaDeviceProp prop;
    C10_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    const bool needs_cuda12 = prop.major * 10 + prop.minor < 75;
    TORCH_CHECK(
        false, "detrex_lite._C has no CUDA kernel for this GPU (", prop.name, ", sm_", prop.major, prop.minor,
        "): it was compiled for [", DETREX_LITE_CUDA_ARCHS_STR, "] (", cudaGetErrorString(status),
        "). Rebuild for it: TORCH_CUDA_ARCH_LIST=\"", prop.major, ".", prop.minor,
        "+PTX\" FORCE_CUDA=1 pip install --no-build-isolation --no-deps -e .  (in the detrex_lite repository",
        needs_cuda12 ? ", with a CUDA 12.x toolkit in CUDA_HOME: CUDA 13 cannot build for compute capability < 7.5"
                     : "",
        "). A list ending in +PTX also runs on GPUs newer than its last entry.");
  }
  if (device >= 0 && device < 64) checked[device] = true;
}

}  // namespace

at::Tensor ms_deform_attn_forward_cuda(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight,
    int64_t im2col_step,
    c10::string_view kernel) {
  check_ms_deform_attn_inputs(value, spatial_shapes, level_start_index, sampling_loc, attn_weight, im2col_step);
  TORCH_CHECK(value.is_cuda(), "ms_deform_attn (CUDA): value must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(value.device());
  check_arch(value.get_device());
  const auto inputs = msda_cuda::prepare_inputs(
      value, spatial_shapes, level_start_index, sampling_loc, attn_weight,
      layout_check(spatial_shapes, level_start_index));
  return msda_cuda::forward(
      inputs, StreamLauncher{c10::cuda::getCurrentCUDAStream()}, parse_kernel_choice(kernel));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight,
    const at::Tensor& grad_output,
    int64_t im2col_step,
    c10::string_view kernel) {
  check_ms_deform_attn_inputs(value, spatial_shapes, level_start_index, sampling_loc, attn_weight, im2col_step);
  TORCH_CHECK(value.is_cuda(), "ms_deform_attn (CUDA): value must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(value.device());
  check_arch(value.get_device());
  check_grad_output(value, sampling_loc, grad_output);
  const auto inputs = msda_cuda::prepare_inputs(
      value, spatial_shapes, level_start_index, sampling_loc, attn_weight,
      layout_check(spatial_shapes, level_start_index));
  return msda_cuda::backward(
      inputs, grad_output, sampling_loc.scalar_type(), attn_weight.scalar_type(),
      StreamLauncher{c10::cuda::getCurrentCUDAStream()}, parse_kernel_choice(kernel));
}

}  // namespace detrex_lite

TORCH_LIBRARY_IMPL(detrex_lite, CUDA, m) {
  m.impl("ms_deform_attn_forward", &detrex_lite::ms_deform_attn_forward_cuda);
  m.impl("ms_deform_attn_backward", &detrex_lite::ms_deform_attn_backward_cuda);
}
