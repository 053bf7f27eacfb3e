// The CUDA operator's host code and kernels (csrc/cuda/ms_deform_attn_kernels.cuh) built for the
// CPU emulator (emulated_device.h), as a Python module for tests/test_ms_deform_attn_cuda_emulated.py.
//
// Every tensor the kernels touch is allocated by the emulator's tracking allocator, so any read
// or write outside them fails the launch. With `misalign`, value, grad_output and the sampling
// locations start one element past a 64-byte boundary (as a view into a larger tensor may), which
// must select the scalar path (value) or a realigned copy (locations).
#include <torch/extension.h>

#include "ms_deform_attn_kernels.cuh"

namespace {

namespace emu = detrex_lite::emulation;
namespace msda = detrex_lite::msda_cuda;

struct EmulatedLauncher {
  template <typename... KernelArgs, typename... Args>
  void operator()(void (*kernel)(KernelArgs...), unsigned blocks, int threads, Args&&... args) const {
    emu::launch(kernel, blocks, threads, std::forward<Args>(args)...);
  }
};

// A tracked copy of `t`, contiguous, starting `offset` elements into its allocation.
at::Tensor tracked(const at::Tensor& t, int64_t offset) {
  auto buffer = at::empty({t.numel() + offset}, t.options());
  auto out = buffer.narrow(0, offset, t.numel()).view(t.sizes());
  out.copy_(t);
  return out;
}

// `layout_check`: "host" (a layout on the CPU, checked before the launch) or "kernel" (a layout
// on the GPU: only the kernels' bounds test and the error flag read after the launch).
msda::LayoutCheck parse_layout_check(const std::string& name) {
  TORCH_CHECK(name == "host" || name == "kernel", "layout_check must be host or kernel, got ", name);
  return name == "host" ? msda::LayoutCheck::kHost : msda::LayoutCheck::kKernel;
}

msda::Inputs tracked_inputs(
    const at::Tensor& value, const at::Tensor& shapes, const at::Tensor& starts, const at::Tensor& loc,
    const at::Tensor& attn, bool misalign, const std::string& layout_check) {
  const int64_t offset = misalign ? 1 : 0;
  return msda::prepare_inputs(
      tracked(value, offset), tracked(shapes, 0), tracked(starts, 0), tracked(loc, offset), tracked(attn, offset),
      parse_layout_check(layout_check));
}

at::Tensor forward(
    const at::Tensor& value, const at::Tensor& shapes, const at::Tensor& starts, const at::Tensor& loc,
    const at::Tensor& attn, bool misalign, const std::string& choice, const std::string& layout_check) {
  emu::AllocatorScope scope;
  return msda::forward(
      tracked_inputs(value, shapes, starts, loc, attn, misalign, layout_check), EmulatedLauncher{},
      msda::parse_kernel_choice(choice));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& value, const at::Tensor& shapes, const at::Tensor& starts, const at::Tensor& loc,
    const at::Tensor& attn, const at::Tensor& grad_output, bool misalign, const std::string& choice,
    const std::string& layout_check) {
  emu::AllocatorScope scope;
  const auto inputs = tracked_inputs(value, shapes, starts, loc, attn, misalign, layout_check);
  return msda::backward(
      inputs, tracked(grad_output, misalign ? 1 : 0), loc.scalar_type(), attn.scalar_type(), EmulatedLauncher{},
      msda::parse_kernel_choice(choice));
}

// The launch plan the host code picks: (vector width, lanes per row, specialised L=P=4, int32).
std::tuple<int64_t, int64_t, bool, bool> plan(
    const at::Tensor& value, const at::Tensor& loc, bool misalign, const std::string& choice) {
  emu::AllocatorScope scope;
  const auto v = tracked(value, misalign ? 1 : 0);
  std::tuple<int64_t, int64_t, bool, bool> result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "plan", [&] {
    const auto p = msda::make_plan<scalar_t>(v, loc, {v.data_ptr()}, msda::parse_kernel_choice(choice));
    result = {p.vec, int64_t(1) << p.g.lanes_log2, p.specialised, p.index32};
  });
  return result;
}

// A kernel that breaks a rule on purpose, to show the emulator catches it.
void read_past_end_kernel(const float* data, int64_t n, float* out) {
  const int64_t i = detrex_lite::device::global_thread_index<int64_t>();
  detrex_lite::device::store(out + i, detrex_lite::device::load(data + i + n));
}

void shuffle_with_exited_lane_kernel(float* out) {
  const unsigned lane = detrex_lite::device::lane_in_warp();
  if (lane == 31) return;
  const float sum = detrex_lite::device::group_sum(detrex_lite::device::kFullMask, 1.0f, 32);
  detrex_lite::device::store(out + lane, sum);
}

void run_faulty(const std::string& which) {
  emu::AllocatorScope scope;
  auto data = at::zeros({64}, at::kFloat);
  auto out = at::zeros({64}, at::kFloat);
  if (which == "out_of_bounds") {
    emu::launch(&read_past_end_kernel, 1, 32, data.data_ptr<float>(), int64_t(64), out.data_ptr<float>());
  } else if (which == "exited_lane") {
    emu::launch(&shuffle_with_exited_lane_kernel, 1, 32, out.data_ptr<float>());
  } else {
    TORCH_CHECK(false, "unknown fault ", which);
  }
}

}  // namespace

// The KernelChoice of the operators' `kernel` argument, as an int.
int64_t kernel_choice(const std::string& name) { return static_cast<int64_t>(msda::parse_kernel_choice(name)); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("kernel_choice", &kernel_choice, "KernelChoice of a `kernel` argument");
  m.def("forward", &forward, "emulated CUDA forward", py::arg("value"), py::arg("shapes"), py::arg("starts"),
        py::arg("loc"), py::arg("attn"), py::arg("misalign") = false, py::arg("choice") = "auto",
        py::arg("layout_check") = "host");
  m.def("backward", &backward, "emulated CUDA backward", py::arg("value"), py::arg("shapes"), py::arg("starts"),
        py::arg("loc"), py::arg("attn"), py::arg("grad_output"), py::arg("misalign") = false,
        py::arg("choice") = "auto", py::arg("layout_check") = "host");
  m.def("plan", &plan, "launch plan: (vec, lanes, specialised, index32)");
  m.def("run_faulty", &run_faulty, "launch a kernel that breaks a rule");
}
