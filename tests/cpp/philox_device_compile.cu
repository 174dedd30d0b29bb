// Compile-only check that lowrank_hpc/random/philox.hpp builds for the device (no GPU needed):
// nvcc -std=c++17 -arch=sm_90 -c -I cpp/include -o /tmp/philox_dev.o tests/cpp/philox_device_compile.cu
#include <cstdint>

#include "lowrank_hpc/random/philox.hpp"

namespace lr = lowrank_hpc::random;

__global__ void fill_philox_draws(uint64_t seed, uint64_t stream, uint64_t n, double* normals,
                                  float* normals_f, uint32_t* philox_words) {
  const uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  normals[i] = lr::standard_normal(seed, stream, i);
  normals_f[i] = lr::standard_normal_f(seed, stream, i);
  const lr::Philox4x32Output r = lr::philox4x32_10(static_cast<uint32_t>(i), 0, 0, 0,
                                                   static_cast<uint32_t>(seed), 0);
  for (int k = 0; k < 4; ++k) philox_words[4 * i + k] = r.v[k];
}
