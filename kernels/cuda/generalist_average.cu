// Native CUDA Generalist average-mix(-redistribute) over flat fp32 buffers, one pass: the same semantics
// as generalist_average_reference in kernels/generalist_average.py.
#include "common.cuh"
#include "generalist_kernels.h"

namespace gk {

struct AverageParams {
  int64_t numel;
  float weight;  // 1 - decay
  float beta;
};

// torch.lerp's formula: a + w (b - a) for |w| < 0.5, else b - (b - a)(1 - w); exact at w = 0 and w = 1.
__device__ __forceinline__ float lerp(float a, float b, float w) {
  return fabsf(w) < 0.5f ? a + w * (b - a) : b - (b - a) * (1.0f - w);
}

template <bool kRedistribute>
__device__ __forceinline__ void average_one(float& theta_r, float& theta_n, float& s_r, float& s_n, float& g,
                                            const AverageParams& p) {
  s_r = lerp(s_r, theta_r, p.weight);  // d S_R + (1-d) theta_R
  s_n = lerp(s_n, theta_n, p.weight);
  g = lerp(g, lerp(s_n, s_r, p.beta), p.weight);  // with the updated S_R, S_N
  if (kRedistribute) theta_r = theta_n = g;
}

// One thread per V consecutive elements of all five buffers; the last thread also takes the tail.
template <int V, bool kRedistribute>
__global__ void __launch_bounds__(kThreads) generalist_average_kernel(float* __restrict__ theta_r,
                                                                      float* __restrict__ theta_n,
                                                                      float* __restrict__ s_r,
                                                                      float* __restrict__ s_n,
                                                                      float* __restrict__ g, AverageParams p) {
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * V;
  if (first >= p.numel) return;
  if (first + V <= p.numel) {
    Pack<float, V> tr = load_pack<float, V>(theta_r + first);
    Pack<float, V> tn = load_pack<float, V>(theta_n + first);
    Pack<float, V> sr = load_pack<float, V>(s_r + first);
    Pack<float, V> sn = load_pack<float, V>(s_n + first);
    Pack<float, V> gg = load_pack<float, V>(g + first);
#pragma unroll
    for (int i = 0; i < V; ++i) average_one<kRedistribute>(tr.v[i], tn.v[i], sr.v[i], sn.v[i], gg.v[i], p);
    store_pack<float, V>(s_r + first, sr);
    store_pack<float, V>(s_n + first, sn);
    store_pack<float, V>(g + first, gg);
    if (kRedistribute) {
      store_pack<float, V>(theta_r + first, tr);
      store_pack<float, V>(theta_n + first, tn);
    }
  } else {
    for (int64_t k = first; k < p.numel; ++k) {
      average_one<kRedistribute>(theta_r[k], theta_n[k], s_r[k], s_n[k], g[k], p);
    }
  }
}

template <int V>
void launch_average(float* theta_r, float* theta_n, float* s_r, float* s_n, float* g, const AverageParams& p,
                    bool redistribute, cudaStream_t stream) {
  const unsigned int blocks = blocks_for((p.numel + V - 1) / V);
  if (redistribute) {
    generalist_average_kernel<V, true><<<blocks, kThreads, 0, stream>>>(theta_r, theta_n, s_r, s_n, g, p);
  } else {
    generalist_average_kernel<V, false><<<blocks, kThreads, 0, stream>>>(theta_r, theta_n, s_r, s_n, g, p);
  }
}

}  // namespace gk

extern "C" GK_API int gk_generalist_average(float* theta_r, float* theta_n, float* s_r, float* s_n, float* g,
                                            int64_t numel, float one_minus_decay, float beta, int redistribute,
                                            void* stream) {
  if (numel <= 0) return 0;
  const gk::AverageParams p{numel, one_minus_decay, beta};
  auto s = static_cast<cudaStream_t>(stream);
  // float4 accesses when every buffer is 16-byte aligned (arena buffers are; arbitrary slices may not be).
  const bool vec = gk::is_aligned(theta_r, 16) && gk::is_aligned(theta_n, 16) && gk::is_aligned(s_r, 16) &&
                   gk::is_aligned(s_n, 16) && gk::is_aligned(g, 16);
  if (vec) {
    gk::launch_average<4>(theta_r, theta_n, s_r, s_n, g, p, redistribute != 0, s);
  } else {
    gk::launch_average<1>(theta_r, theta_n, s_r, s_n, g, p, redistribute != 0, s);
  }
  return static_cast<int>(cudaGetLastError());
}
