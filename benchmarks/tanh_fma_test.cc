// Accuracy of TanhFma (cuda/softcap.cuh, the soft cap's tanh off the MUFU) against double
// tanh: every float of |x| <= 20 (the function is odd by construction: the negative side is
// checked at sample points), and the special values. Host only, not part of the build:
//   g++ -O2 -std=c++17 -ffp-contract=off -I cuda benchmarks/tanh_fma_test.cc -o /tmp/t && /tmp/t
// (the device evaluates the same IEEE operations: fmaf, products, min/max, an integer
// subtract, so the host's bits are the device's).
#include <cfloat>
#include <cmath>
#include <cstdio>

#include "softcap.cuh"

using jax_blocksparse::attn::BitsFloat;
using jax_blocksparse::attn::FloatBits;
using jax_blocksparse::attn::TanhFma;

int main() {
  double max_rel = 0, max_abs_sub = 0;  // relative where |tanh| >= FLT_MIN, else absolute
  float worst = 0;
  bool odd = true, bounded = true;
  for (uint32_t u = 0; u <= FloatBits(20.f); ++u) {
    const float x = BitsFloat(u), t = TanhFma(x);
    const double ref = std::tanh(double(x));
    if (ref < FLT_MIN) {
      max_abs_sub = std::fmax(max_abs_sub, std::fabs(t - ref));
    } else if (std::fabs(t / ref - 1) > max_rel) {
      max_rel = std::fabs(t / ref - 1);
      worst = x;
    }
    if (t > 1.f + 4e-4f || t < 0.f) bounded = false;
    if ((u & 0xfff) == 0 && TanhFma(-x) != -t) odd = false;
  }
  std::printf("max relative error %.3g (2^%.2f) at x = %.9g; |tanh x| < FLT_MIN: max abs %.3g "
              "(2^%.1f)\n", max_rel, std::log2(max_rel), worst, max_abs_sub,
              max_abs_sub > 0 ? std::log2(max_abs_sub) : -999.);
  std::printf("odd: %s, 0 <= tanh <= 1 + 4e-4 on x >= 0: %s\n", odd ? "yes" : "NO",
              bounded ? "yes" : "NO");
  const float sp[] = {0.f, -0.f, FLT_TRUE_MIN, -FLT_TRUE_MIN, FLT_MIN, 1e-30f, 5.f, 9.f, 1e30f,
                      INFINITY, -INFINITY, NAN};
  for (float x : sp) {
    const float t = TanhFma(x);
    std::printf("  x = %-13g -> %-13.9g (bits %08x), tanh = %.9g\n", x, t, FloatBits(t),
                std::tanh(double(x)));
  }
  return max_rel <= std::ldexp(1.0, -11) ? 0 : 1;
}
