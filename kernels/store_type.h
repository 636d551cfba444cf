// StoreType: how a state, window or KV buffer stores its values on the device (shared by the
// Lizard attention op and the paged KV cache).
#pragma once

namespace lizard::kernels {

enum class StoreType { kF32, kBF16 };

}  // namespace lizard::kernels
