// Plain-C++ pieces shared by csrc/cuda/device_primitives.cuh (GPU) and
// tests/cuda_emulation/emulated_device.h (the CPU emulator of the same kernels).
#pragma once

namespace detrex_lite {
namespace device {

constexpr unsigned kFullMask = 0xffffffffu;

// A run of V elements loaded or stored with one vector instruction (V * sizeof(T) <= 16 bytes
// and the address aligned to V * sizeof(T)).
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

}  // namespace device
}  // namespace detrex_lite
