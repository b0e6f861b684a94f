// C ABI of the native CUDA versions of the fused ops, loaded from Python with ctypes
// (kernels/cuda_native.py). Every function launches on `stream` (a cudaStream_t, NULL for the legacy
// default stream), returns 0 or a cudaError_t code (GK_ERROR_DTYPE for an unsupported dtype code), and
// does not synchronise. Pointers are device pointers; numel counts elements.
#ifndef GENERALIST_KERNELS_H
#define GENERALIST_KERNELS_H

#include <stdint.h>

#if defined(__GNUC__)
#define GK_API __attribute__((visibility("default")))
#else
#define GK_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

// dtype codes shared with cuda_native.py
#define GK_FLOAT32 0
#define GK_FLOAT16 1
#define GK_BFLOAT16 2

#define GK_ABI_VERSION 2
#define GK_ERROR_DTYPE (-1)

GK_API int gk_abi_version(void);
GK_API const char* gk_error_string(int code);

// x_adv <- clamp(clamp(x_adv + step * sign(grad), x - eps, x + eps), lo, hi), in place, fp32 arithmetic.
// x_adv, grad, x: numel elements each in one memory order; x_adv and x of x_dtype, grad of grad_dtype.
// eps_per_sample / step_per_sample: NULL to use the scalar, else (n_samples,) fp32 device arrays indexed
// by (offset / sample_stride) % n_samples. sign(NaN) = 0, sign(+-inf) = +-1; NaN in x_adv or x propagates.
GK_API int gk_pgd_linf_step(void* x_adv, const void* grad, const void* x, int64_t numel, int x_dtype,
                            int grad_dtype, float eps, float step, const float* eps_per_sample,
                            const float* step_per_sample, int64_t sample_stride, int64_t n_samples, float lo,
                            float hi, void* stream);

// S_R <- d S_R + (1-d) theta_R; S_N <- d S_N + (1-d) theta_N; G <- d G + (1-d) (beta S_R + (1-beta) S_N)
// with the updated S_R and S_N; then theta_R <- G and theta_N <- G when redistribute != 0. Each is a lerp
// with torch.lerp's formula (weight 1 - d, and beta for the mix). fp32 buffers of numel elements each,
// none aliasing another.
GK_API int gk_generalist_average(float* theta_r, float* theta_n, float* s_r, float* s_n, float* g, int64_t numel,
                                 float one_minus_decay, float beta, int redistribute, void* stream);

#ifdef __cplusplus
}
#endif

#endif  // GENERALIST_KERNELS_H
