// PTX wrappers for Hopper's warpgroup MMA (wgmma.mma_async, sm_90a only) and its shared
// memory operand descriptors. Every wrapper compiles to nothing outside the sm_90a device
// pass (__CUDA_ARCH_FEAT_SM90_ALL), so this header can be included by translation units
// built for several architectures; callers must only run the code on sm_90a.
//
// Shared-memory operand layout used with these descriptors (16-bit element types; float
// read as tf32 the same in bytes, 32 elements a line, K-major only): the
// tile is a sequence of 128-byte *lines* (64 elements); 16-byte chunk c of line L lives at
// byte L*128 + ((c ^ (L % 8)) * 16) from a 1024-byte aligned base (the 128-byte swizzle;
// eight lines form one 1024-byte swizzle atom).
//  * K-major operand (K contiguous, imm-trans 0): line = row of M (or N), its 64 elements
//    are 64 consecutive k. Descriptor: SBO = 1024 (next 8 rows), LBO unused (16); the
//    k16 slice kk starts kk*32 bytes further.
//  * MN-major operand (M or N contiguous, imm-trans 1): the M/N extent is cut into slabs
//    of 64 elements; line = slab*KLINES + k. Descriptor: SBO = 1024 (next 8 k), LBO = the
//    slab stride (KLINES*128, next 64 elements of M/N); the k16 slice kk starts kk*2048
//    bytes further (16 lines).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace jax_blocksparse {
namespace wg {

// Byte offset of 16-byte chunk `chunk` (0..7) of line `line` in the swizzled line layout
// above, from the 1024-byte aligned base: where a thread writes its part of an operand tile.
__device__ __forceinline__ int ChunkOffset(int line, int chunk) {
  return line * 128 + ((chunk ^ (line & 7)) << 4);
}

// Matrix descriptor: start address, leading / stride byte offsets, 128-byte swizzle.
__device__ __forceinline__ uint64_t Desc(uint32_t smem_addr, uint32_t lbo, uint32_t sbo) {
  return uint64_t((smem_addr & 0x3FFFF) >> 4) | (uint64_t((lbo >> 4) & 0x3FFF) << 16) |
         (uint64_t((sbo >> 4) & 0x3FFF) << 32) | (uint64_t(1) << 62);
}

__device__ __forceinline__ void Fence() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void Commit() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N> __device__ __forceinline__ void Wait() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// Orders this thread's generic-proxy shared-memory writes (st.shared, cp.async) before
// later async-proxy reads (wgmma operands); issue before the barrier that publishes them.
__device__ __forceinline__ void FenceProxyAsync() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
// Keeps the compiler from moving accesses of an accumulator register across wgmma
// fences/waits (the asm statements above do not name the registers).
__device__ __forceinline__ void FenceOperand(float& r) { asm volatile("" : "+f"(r)::"memory"); }
// The same on every register of an accumulator.
template <int N>
__device__ __forceinline__ void FenceAcc(float (&x)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) FenceOperand(x[i]);
}

// ---- The wgmma atoms. Each (kind, shape, dtype) is one line at the end of this section; the
// macros below write its asm statement: the accumulator registers ("%0".."%N-1" in the
// instruction, "+f"(d[i]) as operands), then the operands after them, numbered from N.
// Outside the sm_90a device pass every atom compiles to nothing.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define JBS_WG_ASM(...) asm volatile(__VA_ARGS__)
#else
#define JBS_WG_ASM(...) ((void)0)
#endif
#define JBS_WG_STR_(x) #x
#define JBS_WG_OP(n) "%" JBS_WG_STR_(n)  // operand n in the instruction text: "%n"

// The accumulators in the instruction text: N = 8, 16, 32, 64 or 128 registers.
#define JBS_WG_D8_TEXT "%0,%1,%2,%3,%4,%5,%6,%7"
#define JBS_WG_D16_TEXT JBS_WG_D8_TEXT ",%8,%9,%10,%11,%12,%13,%14,%15"
#define JBS_WG_D32_TEXT JBS_WG_D16_TEXT ",%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31"
#define JBS_WG_D64_TEXT JBS_WG_D32_TEXT ",%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63"
#define JBS_WG_D128_TEXT JBS_WG_D64_TEXT ",%64,%65,%66,%67,%68,%69,%70,%71,%72,%73,%74,%75,%76,%77,%78,%79,%80,%81,%82,%83,%84,%85,%86,%87,%88,%89,%90,%91,%92,%93,%94,%95," \
  "%96,%97,%98,%99,%100,%101,%102,%103,%104,%105,%106,%107,%108,%109,%110,%111,%112,%113,%114,%115,%116,%117,%118,%119,%120,%121,%122,%123,%124,%125,%126,%127"
// The accumulators as operands (read and written).
#define JBS_WG_F4(d, i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3])
#define JBS_WG_F16(d, i) \
  JBS_WG_F4(d, i), JBS_WG_F4(d, i + 4), JBS_WG_F4(d, i + 8), JBS_WG_F4(d, i + 12)
#define JBS_WG_D8(d) JBS_WG_F4(d, 0), JBS_WG_F4(d, 4)
#define JBS_WG_D16(d) JBS_WG_F16(d, 0)
#define JBS_WG_D32(d) JBS_WG_F16(d, 0), JBS_WG_F16(d, 16)
#define JBS_WG_D64(d) JBS_WG_D32(d), JBS_WG_F16(d, 32), JBS_WG_F16(d, 48)
#define JBS_WG_D128(d) JBS_WG_D64(d), JBS_WG_F16(d, 64), JBS_WG_F16(d, 80), \
  JBS_WG_F16(d, 96), JBS_WG_F16(d, 112)
// The numbers of the six operands that may follow N accumulators: N .. N + 5.
#define JBS_WG_AFTER8 8, 9, 10, 11, 12, 13
#define JBS_WG_AFTER16 16, 17, 18, 19, 20, 21
#define JBS_WG_AFTER32 32, 33, 34, 35, 36, 37
#define JBS_WG_AFTER64 64, 65, 66, 67, 68, 69
#define JBS_WG_AFTER128 128, 129, 130, 131, 132, 133
#define JBS_WG_EXPAND_(M, ...) M(__VA_ARGS__)

// SS with compile-time transposes: D[64 x n] += A[64 x 16] * B[16 x n], A and B from shared
// memory (descriptors da, db); TA / TB: A M-major / B N-major (imm-trans).
#define JBS_WG_SS_TRANS(NAME, N, INSTR) \
  JBS_WG_EXPAND_(JBS_WG_SS_TRANS_, NAME, N, INSTR, JBS_WG_AFTER##N)
#define JBS_WG_SS_TRANS_(NAME, N, INSTR, o0, o1, o2, o3, o4, o5)                            \
  template <int TA, int TB>                                                                \
  __device__ __forceinline__ void NAME(float (&d)[N], uint64_t da, uint64_t db) {           \
    JBS_WG_ASM("{\n .reg .pred p;\n setp.ne.b32 p, " JBS_WG_OP(o2) ", 0;\n"                 \
               " wgmma.mma_async.sync.aligned." INSTR " {" JBS_WG_D##N##_TEXT "}, "         \
               JBS_WG_OP(o0) ", " JBS_WG_OP(o1) ", p, 1, 1, " JBS_WG_OP(o3) ", "            \
               JBS_WG_OP(o4) ";\n}\n"                                                      \
               : JBS_WG_D##N(d)                                                            \
               : "l"(da), "l"(db), "r"(1), "n"(TA), "n"(TB));                              \
  }

// SS with a run-time scale-d: D[64 x n] (+)= A[64 x 16] * B[16 x n], A and B from shared
// memory (descriptors), K-major both; scale_d = 0 overwrites D (first k16 slice), 1
// accumulates.
#define JBS_WG_SS_SCALE(NAME, N, INSTR) \
  JBS_WG_EXPAND_(JBS_WG_SS_SCALE_, NAME, N, INSTR, JBS_WG_AFTER##N)
#define JBS_WG_SS_SCALE_(NAME, N, INSTR, o0, o1, o2, o3, o4, o5)                            \
  __device__ __forceinline__ void NAME(float (&d)[N], uint64_t da, uint64_t db,             \
                                       int scale_d) {                                      \
    JBS_WG_ASM("{\n .reg .pred p;\n setp.ne.b32 p, " JBS_WG_OP(o2) ", 0;\n"                 \
               " wgmma.mma_async.sync.aligned." INSTR " {" JBS_WG_D##N##_TEXT "}, "         \
               JBS_WG_OP(o0) ", " JBS_WG_OP(o1) ", p, 1, 1, 0, 0;\n}\n"                     \
               : JBS_WG_D##N(d)                                                            \
               : "l"(da), "l"(db), "r"(scale_d));                                          \
  }

// SS for tf32 (k8): D[64 x n] += A[64 x 8] * B[8 x n], A and B from shared memory, K-major
// both (tf32 takes no transposes: wgmma reads 32-bit operands K-major only).
#define JBS_WG_SS_TF32(NAME, N, INSTR) \
  JBS_WG_EXPAND_(JBS_WG_SS_TF32_, NAME, N, INSTR, JBS_WG_AFTER##N)
#define JBS_WG_SS_TF32_(NAME, N, INSTR, o0, o1, o2, o3, o4, o5)                             \
  __device__ __forceinline__ void NAME(float (&d)[N], uint64_t da, uint64_t db) {           \
    JBS_WG_ASM("{\n .reg .pred p;\n setp.ne.b32 p, " JBS_WG_OP(o2) ", 0;\n"                 \
               " wgmma.mma_async.sync.aligned." INSTR " {" JBS_WG_D##N##_TEXT "}, "         \
               JBS_WG_OP(o0) ", " JBS_WG_OP(o1) ", p, 1, 1;\n}\n"                           \
               : JBS_WG_D##N(d)                                                            \
               : "l"(da), "l"(db), "r"(1));                                                \
  }
// RS: D[64 x n] += A[64 x 16] * B[16 x n], A from registers (the m16n8k16 A-fragment layout
// per warp: a[0..3] rows g / g+8, k 2t / 2t+8), B from shared memory, TB: B stored N-major
// (1) or K-major (0).
#define JBS_WG_RS(NAME, N, INSTR) JBS_WG_EXPAND_(JBS_WG_RS_, NAME, N, INSTR, JBS_WG_AFTER##N)
#define JBS_WG_RS_(NAME, N, INSTR, o0, o1, o2, o3, o4, o5)                                  \
  template <int TB>                                                                        \
  __device__ __forceinline__ void NAME(float (&d)[N], const uint32_t (&a)[4], uint64_t db) { \
    JBS_WG_ASM("wgmma.mma_async.sync.aligned." INSTR " {" JBS_WG_D##N##_TEXT "}, {"        \
               JBS_WG_OP(o0) "," JBS_WG_OP(o1) "," JBS_WG_OP(o2) "," JBS_WG_OP(o3) "}, "   \
               JBS_WG_OP(o4) ", 1, 1, 1, " JBS_WG_OP(o5) ";\n"                             \
               : JBS_WG_D##N(d)                                                            \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "n"(TB));            \
  }

// N: accumulators per thread (n / 2).
JBS_WG_SS_TRANS(Mma64x16Bf16, 8, "m64n16k16.f32.bf16.bf16")
JBS_WG_SS_TRANS(Mma64x16F16, 8, "m64n16k16.f32.f16.f16")
JBS_WG_SS_TRANS(Mma64x32Bf16, 16, "m64n32k16.f32.bf16.bf16")
JBS_WG_SS_TRANS(Mma64x32F16, 16, "m64n32k16.f32.f16.f16")
JBS_WG_SS_TRANS(Mma64x64Bf16, 32, "m64n64k16.f32.bf16.bf16")
JBS_WG_SS_TRANS(Mma64x64F16, 32, "m64n64k16.f32.f16.f16")
JBS_WG_SS_TRANS(Mma64x128Bf16, 64, "m64n128k16.f32.bf16.bf16")
JBS_WG_SS_TRANS(Mma64x128F16, 64, "m64n128k16.f32.f16.f16")
JBS_WG_SS_TF32(Mma64x64Tf32, 32, "m64n64k8.f32.tf32.tf32")
JBS_WG_SS_TF32(Mma64x128Tf32, 64, "m64n128k8.f32.tf32.tf32")
JBS_WG_SS_SCALE(MmaSS64x32Bf16, 16, "m64n32k16.f32.bf16.bf16")
JBS_WG_SS_SCALE(MmaSS64x32F16, 16, "m64n32k16.f32.f16.f16")
JBS_WG_SS_SCALE(MmaSS64x64Bf16, 32, "m64n64k16.f32.bf16.bf16")
JBS_WG_SS_SCALE(MmaSS64x64F16, 32, "m64n64k16.f32.f16.f16")
JBS_WG_SS_SCALE(MmaSS64x128Bf16, 64, "m64n128k16.f32.bf16.bf16")
JBS_WG_SS_SCALE(MmaSS64x128F16, 64, "m64n128k16.f32.f16.f16")
JBS_WG_RS(MmaRS64x64Bf16, 32, "m64n64k16.f32.bf16.bf16")
JBS_WG_RS(MmaRS64x64F16, 32, "m64n64k16.f32.f16.f16")
JBS_WG_RS(MmaRS64x128Bf16, 64, "m64n128k16.f32.bf16.bf16")
JBS_WG_RS(MmaRS64x128F16, 64, "m64n128k16.f32.f16.f16")
JBS_WG_RS(MmaRS64x256Bf16, 128, "m64n256k16.f32.bf16.bf16")
JBS_WG_RS(MmaRS64x256F16, 128, "m64n256k16.f32.f16.f16")

#undef JBS_WG_ASM
#undef JBS_WG_STR_
#undef JBS_WG_OP
#undef JBS_WG_D8_TEXT
#undef JBS_WG_D16_TEXT
#undef JBS_WG_D32_TEXT
#undef JBS_WG_D64_TEXT
#undef JBS_WG_D128_TEXT
#undef JBS_WG_F4
#undef JBS_WG_F16
#undef JBS_WG_D8
#undef JBS_WG_D16
#undef JBS_WG_D32
#undef JBS_WG_D64
#undef JBS_WG_D128
#undef JBS_WG_AFTER8
#undef JBS_WG_AFTER16
#undef JBS_WG_AFTER32
#undef JBS_WG_AFTER64
#undef JBS_WG_AFTER128
#undef JBS_WG_EXPAND_
#undef JBS_WG_SS_TRANS
#undef JBS_WG_SS_TRANS_
#undef JBS_WG_SS_SCALE
#undef JBS_WG_SS_SCALE_
#undef JBS_WG_SS_TF32
#undef JBS_WG_SS_TF32_
#undef JBS_WG_RS
#undef JBS_WG_RS_

// D[64 x N] += A[64 x K] * B[K x N] for one warpgroup, float32 accumulators, K = 32 bytes of
// the element type (k16 of 16-bit types; k8 of float, read as tf32: K-major only); TA / TB:
// A M-major / B N-major (imm-trans). d: this thread's N/2 accumulators.
template <typename T, int N, int TA, int TB>
__device__ __forceinline__ void Mma(float (&d)[N / 2], uint64_t da, uint64_t db) {
  static_assert(N == 16 || N == 32 || N == 64 || N == 128, "N");
  constexpr bool kBf16 = std::is_same<T, __nv_bfloat16>::value;
  constexpr bool kTf32 = std::is_same<T, float>::value;
  static_assert(kBf16 || kTf32 || std::is_same<T, __half>::value, "16-bit types or float");
  static_assert(!kTf32 || (TA == 0 && TB == 0), "tf32: K-major operands only");
  static_assert(!kTf32 || N >= 64, "tf32: N 64 or 128");
  if constexpr (kTf32) {
    if constexpr (N == 64) Mma64x64Tf32(d, da, db);
    else Mma64x128Tf32(d, da, db);
  } else if constexpr (N == 16) {
    if constexpr (kBf16) Mma64x16Bf16<TA, TB>(d, da, db);
    else Mma64x16F16<TA, TB>(d, da, db);
  } else if constexpr (N == 32) {
    if constexpr (kBf16) Mma64x32Bf16<TA, TB>(d, da, db);
    else Mma64x32F16<TA, TB>(d, da, db);
  } else if constexpr (N == 64) {
    if constexpr (kBf16) Mma64x64Bf16<TA, TB>(d, da, db);
    else Mma64x64F16<TA, TB>(d, da, db);
  } else {
    if constexpr (kBf16) Mma64x128Bf16<TA, TB>(d, da, db);
    else Mma64x128F16<TA, TB>(d, da, db);
  }
}
// The same for m64n128k16 with a run-time scale-d (SS, K-major A and B) and with A from
// registers (RS), by element type.
template <typename T>
__device__ __forceinline__ void MmaSS128(float (&d)[64], uint64_t da, uint64_t db, int scale_d) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) MmaSS64x128Bf16(d, da, db, scale_d);
  else MmaSS64x128F16(d, da, db, scale_d);
}
template <typename T, int TB>
__device__ __forceinline__ void MmaRS128(float (&d)[64], const uint32_t (&a)[4], uint64_t db) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) MmaRS64x128Bf16<TB>(d, a, db);
  else MmaRS64x128F16<TB>(d, a, db);
}
// SS (K-major A and B, run-time scale-d) with N = 32, 64 or 128 (d: N / 2 accumulators).
template <typename T, int N>
__device__ __forceinline__ void MmaSS(float (&d)[N / 2], uint64_t da, uint64_t db, int scale_d) {
  static_assert(N == 32 || N == 64 || N == 128, "N");
  if constexpr (N == 128) MmaSS128<T>(d, da, db, scale_d);
  else if constexpr (N == 32) {
    if constexpr (std::is_same<T, __nv_bfloat16>::value) MmaSS64x32Bf16(d, da, db, scale_d);
    else MmaSS64x32F16(d, da, db, scale_d);
  }
  else if constexpr (std::is_same<T, __nv_bfloat16>::value) MmaSS64x64Bf16(d, da, db, scale_d);
  else MmaSS64x64F16(d, da, db, scale_d);
}
// RS with N = 64, 128 or 256 (d: N / 2 accumulators).
template <typename T, int N, int TB>
__device__ __forceinline__ void MmaRS(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t db) {
  static_assert(N == 64 || N == 128 || N == 256, "N");
  if constexpr (N == 256) {
    if constexpr (std::is_same<T, __nv_bfloat16>::value) MmaRS64x256Bf16<TB>(d, a, db);
    else MmaRS64x256F16<TB>(d, a, db);
  } else if constexpr (N == 128) MmaRS128<T, TB>(d, a, db);
  else if constexpr (std::is_same<T, __nv_bfloat16>::value) MmaRS64x64Bf16<TB>(d, a, db);
  else MmaRS64x64F16<TB>(d, a, db);
}

}  // namespace wg
}  // namespace jax_blocksparse
