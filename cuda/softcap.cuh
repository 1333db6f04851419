// The logit soft cap's tanh off the special-function unit (issue 21). The capped score is
// cap tanh(s / cap); one tanh.approx.f32 (MUFU, 16 per clock per SM) per score beside the
// softmax's ex2.approx doubles the MUFU work per element, while the FMA pipe (128 per clock)
// has room. So, as FlashAttention-3 does for exp2, a fixed share of the elements take TanhFma
// below (FMA / FMUL / FMNMX and one integer subtract, no MUFU) and the rest tanh.approx
// (SoftCapTanh in attention_kernels.cuh). Which ones is a function of the key index alone
// (CapPoly), so every kernel (FA2 and Hopper forwards and backwards, decode) forms the same t
// for the same (query, key): the backwards' P = 2^(cap_log2 t - lse) match the forward's bits.
//
// Share (an issue-slot estimate, to be measured): per element the capped forward issues
// about 8.5 instructions besides the tanh (scale, cap, max, exp2 argument, the MUFU ex2, sum,
// pack, the O rescale at D = 128) and keeps the MUFU busy 2 / 16 clock per SM (tanh + ex2).
// With a share f on TanhFma (12 instructions instead of 1: 5 FFMA, 4 FMUL, 2 FMNMX, 1 IADD3
// in the SASS): MUFU (2 - f) / 16, issue (8.5 + 11 f) / 128 clock per element per SM.
// f = 1/2: 0.094 vs 0.109; f = 1/4: 0.109 vs 0.088; both bound at 0.109 (0.125 with
// tanh.approx alone); the optimum f = 0.39 would give 0.100. 1/2 is the default as the rule
// then reads key bit 3 only, a compile-time constant per accumulator register in every
// layout (keys as columns: start + 8 (i / 4) + 2t + (i & 1), the tile start a multiple of
// 64; keys as rows, the dK/dV kernels: start + 16 warp + 8 ((i >> 1) & 1) + g). Masks with
// bits 4 or 5 (1/4, 1/8) stay correct, but the keys-as-rows kernels and decode (its 16-key
// tiles start at any multiple of 16) then choose at run time (likely evaluating both forms).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define JBS_HD __host__ __device__ __forceinline__
#else
#define JBS_HD inline  // host-only builds (the accuracy test, benchmarks/tanh_fma_test.cc)
#endif

namespace jax_blocksparse {
namespace attn {

// TanhFma for key j iff (j & kCapPolyMask) == kCapPolyValue (mask within bits 3..5: the
// callers pass the key's offset in a 64-aligned tile, bits 0..2 may be dropped)
constexpr int kCapPolyMask = 8, kCapPolyValue = 8;  // 1/2 of the keys
static_assert((kCapPolyMask & ~56) == 0 && (kCapPolyValue & ~kCapPolyMask) == 0, "bits 3..5");
JBS_HD constexpr bool CapPoly(int j) { return (j & kCapPolyMask) == kCapPolyValue; }

JBS_HD uint32_t FloatBits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
#endif
}
JBS_HD float BitsFloat(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, 4);
  return x;
#endif
}
// clamp(x, -c, c), NaN kept (min.NaN / max.NaN: one FMNMX each)
JBS_HD float ClampNaN(float x, float c) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("min.NaN.f32 %0, %1, %2;\n" : "=f"(y) : "f"(x), "f"(c));
  asm("max.NaN.f32 %0, %0, %1;\n" : "+f"(y) : "f"(-c));
  return y;
#else
  return x != x ? x : (x > c ? c : (x < -c ? -c : x));
#endif
}

// tanh(x) on the FMA / ALU pipes: 12 instructions (2 FMNMX, 1 FMUL x^2, 4 FFMA for P and Q,
// 1 FMUL x P, 1 integer subtract, 1 FFMA, 2 FMUL), |relative error| < 2^-12.5 (1.64e-4)
// where |tanh x| >= 2^-126 (below it |error| < 2^-138); odd, +-0 kept, +-0.99988 from |x| = 5
// to +-inf, NaN kept. benchmarks/tanh_fma_test.cc measures it over every float of |x| <= 20.
// tanh(x) = x P(x^2) / Q(x^2) on [-5, 5] (clamped there: 1 - tanh 5 < 2^-13.4), P and Q of
// degree 2, a relative minimax fit (ours, the saturation beyond 5 included). The division:
// y = 1 / Q from the bits (0x7EB504F3 - bits(Q): the mantissa's linear guess, Q y within
// [0.7071, 0.7286]), then one linear correction t = x P y (c - Q y) with c = 0.7071 +
// 0.7286, Q y (c - Q y) in [0.51517, 0.51528] (relative +-1.1e-4), its middle folded into
// P's coefficients.
JBS_HD float TanhFma(float x) {
  const float xc = ClampNaN(x, 5.f);
  const float z = xc * xc;
  const float p = fmaf(fmaf(1.30150688e-3f, z, 1.98783442e-1f), z, 1.94080818f);
  const float q = fmaf(fmaf(1.28198899e-2f, z, 4.35432509e-1f), z, 1.f);
  const float y = BitsFloat(0x7EB504F3u - FloatBits(q));  // q in [1, 19.9]: positive, normal
  return (xc * p) * (y * fmaf(-q, y, 1.43566015f));  // products: the sign of x, -0 kept
}

}  // namespace attn
}  // namespace jax_blocksparse
