// The level layout (spatial_shapes, level_start_index) of multi-scale deformable attention:
// the host check of its values, shared by the CPU entry (vision.cpp / cpu/), the CUDA entry
// (cuda/ms_deform_attn_kernels.cuh) and the CPU emulation of the CUDA kernels (tests/).
//
// The kernels index value (N, S, M, D) with each level's start and H * W, so these values decide
// which memory is touched. A layout on the CPU is checked here before any kernel runs; a layout
// already on the GPU is checked per level inside the CUDA kernels (level_in_bounds in
// cuda/ms_deform_attn_kernels.cuh), which cannot be bypassed.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <limits>

namespace detrex_lite {

// Raises c10::Error naming the entry at fault unless every (H, W) is positive and fits in int32,
// sum(H * W) == S without overflow, and level_start_index is the exclusive cumulative sum of
// H * W. spatial_shapes (L, 2) and level_start_index (L,) are int64 CPU tensors (any strides).
inline void check_layout_values_on_host(
    const at::Tensor& spatial_shapes, const at::Tensor& level_start_index, int64_t S) {
  TORCH_CHECK(
      spatial_shapes.device().is_cpu() && level_start_index.device().is_cpu(),
      "check_layout_values_on_host: the layout must be on the CPU");
  const auto shapes = spatial_shapes.contiguous();
  const auto starts = level_start_index.contiguous();
  const int64_t* hw = shapes.data_ptr<int64_t>();
  const int64_t* start = starts.data_ptr<int64_t>();
  const int64_t L = shapes.size(0);
  constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();
  int64_t offset = 0;  // exclusive cumulative sum of H * W
  for (int64_t l = 0; l < L; ++l) {
    const int64_t H = hw[2 * l], W = hw[2 * l + 1];
    TORCH_CHECK(
        H > 0 && W > 0 && H <= kIntMax && W <= kIntMax, "spatial_shapes[", l, "] = (", H, ", ", W,
        ") must be a positive (H, W) below 2^31");
    TORCH_CHECK(
        start[l] == offset, "level_start_index[", l, "] = ", start[l], " disagrees with spatial_shapes, whose ",
        "exclusive cumulative sum of H * W gives ", offset);
    int64_t area = 0;
    TORCH_CHECK(
        !__builtin_mul_overflow(H, W, &area) && !__builtin_add_overflow(offset, area, &offset),
        "spatial_shapes: sum(H * W) overflows int64 at level ", l);
  }
  TORCH_CHECK(
      offset == S, "spatial_shapes cover sum(H * W) = ", offset, " positions but value has S = ", S);
}

}  // namespace detrex_lite
