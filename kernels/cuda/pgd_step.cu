// Native CUDA L-inf PGD step, in place and in one pass: the same semantics as pgd_linf_step_reference in
// kernels/pgd_step.py (fp32 arithmetic, sign(NaN) = 0, NaN in x_adv or x propagates, one rounding on store).
#include "common.cuh"
#include "generalist_kernels.h"

namespace gk {

struct StepParams {
  int64_t numel;
  float eps, step, lo, hi;
  const float* eps_per_sample;   // (n_samples,) or nullptr
  const float* step_per_sample;  // (n_samples,) or nullptr
  int64_t sample_stride, n_samples;
};

__device__ __forceinline__ float linf_update(float xa, float x0, float g, float eps, float step, float lo,
                                             float hi) {
  const float direction = static_cast<float>(g > 0.f) - static_cast<float>(g < 0.f);  // NaN -> 0
  float v = xa + step * direction;  // step * direction is exact, so a contracted fma rounds the same
  v = min_nan(max_nan(v, x0 - eps), x0 + eps);
  return min_nan(max_nan(v, lo), hi);
}

// One thread per V consecutive elements; the last thread also takes the tail shorter than V.
template <typename TX, typename TG, int V>
__global__ void __launch_bounds__(kThreads) pgd_linf_step_kernel(TX* __restrict__ x_adv,
                                                                 const TG* __restrict__ grad,
                                                                 const TX* __restrict__ x, StepParams p) {
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * V;
  if (first >= p.numel) return;
  const bool per_sample = p.eps_per_sample != nullptr || p.step_per_sample != nullptr;
  if (first + V <= p.numel) {
    const Pack<TX, V> xa = load_pack<TX, V>(x_adv + first);
    const Pack<TX, V> x0 = load_pack<TX, V>(x + first);
    const Pack<TG, V> g = load_pack<TG, V>(grad + first);
    Pack<TX, V> out;
    // Sample of element k: (k / stride) % N. One 64-bit division per pack, then stepped element by element:
    // a division per element (V of them, inlined) cost registers enough to spill in the bf16 / fp32 variant.
    int64_t sample = 0, in_sample = 0;
    if (per_sample) {
      const int64_t q = first / p.sample_stride;
      in_sample = first - q * p.sample_stride;
      sample = q % p.n_samples;
    }
#pragma unroll
    for (int i = 0; i < V; ++i) {
      float eps = p.eps, step = p.step;
      if (per_sample) {
        if (p.eps_per_sample) eps = p.eps_per_sample[sample];
        if (p.step_per_sample) step = p.step_per_sample[sample];
        if (++in_sample == p.sample_stride) {
          in_sample = 0;
          if (++sample == p.n_samples) sample = 0;
        }
      }
      out.v[i] = from_float<TX>(linf_update(to_float(xa.v[i]), to_float(x0.v[i]), to_float(g.v[i]), eps, step,
                                            p.lo, p.hi));
    }
    store_pack<TX, V>(x_adv + first, out);
  } else {
    for (int64_t k = first; k < p.numel; ++k) {
      float eps = p.eps, step = p.step;
      if (per_sample) {
        const int64_t n = (k / p.sample_stride) % p.n_samples;
        if (p.eps_per_sample) eps = p.eps_per_sample[n];
        if (p.step_per_sample) step = p.step_per_sample[n];
      }
      x_adv[k] = from_float<TX>(linf_update(to_float(x_adv[k]), to_float(x[k]), to_float(grad[k]), eps, step, p.lo,
                                            p.hi));
    }
  }
}

template <typename TX, typename TG>
int launch_linf(void* x_adv, const void* grad, const void* x, const StepParams& p, cudaStream_t stream) {
  // 16-byte accesses on x_adv and x; grad moves V elements of its own width (8, 16 or 32 bytes).
  constexpr int V = 16 / sizeof(TX);
  const bool vec = is_aligned(x_adv, sizeof(TX) * V) && is_aligned(x, sizeof(TX) * V) &&
                   is_aligned(grad, sizeof(TG) * V);
  auto* xa = static_cast<TX*>(x_adv);
  const auto* g = static_cast<const TG*>(grad);
  const auto* x0 = static_cast<const TX*>(x);
  if (vec) {
    pgd_linf_step_kernel<TX, TG, V><<<blocks_for((p.numel + V - 1) / V), kThreads, 0, stream>>>(xa, g, x0, p);
  } else {
    pgd_linf_step_kernel<TX, TG, 1><<<blocks_for(p.numel), kThreads, 0, stream>>>(xa, g, x0, p);
  }
  return static_cast<int>(cudaGetLastError());
}

template <typename TX>
int dispatch_grad(int grad_dtype, void* x_adv, const void* grad, const void* x, const StepParams& p,
                  cudaStream_t stream) {
  switch (grad_dtype) {
    case GK_FLOAT32: return launch_linf<TX, float>(x_adv, grad, x, p, stream);
    case GK_FLOAT16: return launch_linf<TX, __half>(x_adv, grad, x, p, stream);
    case GK_BFLOAT16: return launch_linf<TX, __nv_bfloat16>(x_adv, grad, x, p, stream);
    default: return GK_ERROR_DTYPE;
  }
}

}  // namespace gk

extern "C" GK_API int gk_pgd_linf_step(void* x_adv, const void* grad, const void* x, int64_t numel, int x_dtype,
                                       int grad_dtype, float eps, float step, const float* eps_per_sample,
                                       const float* step_per_sample, int64_t sample_stride, int64_t n_samples,
                                       float lo, float hi, void* stream) {
  if (numel <= 0) return 0;
  const gk::StepParams p{numel, eps, step, lo, hi, eps_per_sample, step_per_sample,
                         sample_stride > 0 ? sample_stride : 1, n_samples > 0 ? n_samples : 1};
  auto s = static_cast<cudaStream_t>(stream);
  switch (x_dtype) {
    case GK_FLOAT32: return gk::dispatch_grad<float>(grad_dtype, x_adv, grad, x, p, s);
    case GK_FLOAT16: return gk::dispatch_grad<__half>(grad_dtype, x_adv, grad, x, p, s);
    case GK_BFLOAT16: return gk::dispatch_grad<__nv_bfloat16>(grad_dtype, x_adv, grad, x, p, s);
    default: return GK_ERROR_DTYPE;
  }
}

extern "C" GK_API int gk_abi_version(void) { return GK_ABI_VERSION; }

extern "C" GK_API const char* gk_error_string(int code) {
  if (code == GK_ERROR_DTYPE) return "unsupported dtype code";
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}
