// The environment switches of the C++ side, read once per process into one struct (the
// Python side reads its own, jax_blocksparse/_cuda.py). Plain C++: the FFI handlers use it.
//   JAX_BLOCKSPARSE_DEBUG=1 one line per kernel launch on stderr; =2 also times each launch
//   JAX_BLOCKSPARSE_SIMPLE_KERNELS=1 the simple matmul kernels instead of the tensor-core ones
//   JAX_BLOCKSPARSE_NO_WGMMA=1 the mma.sync matmul kernels instead of the Hopper wgmma ones
//   JAX_BLOCKSPARSE_MATMUL_SMALL_WGMMA=0 opts out of the default (measured 1.9-2.3x faster,
//     RESULTS 2026-12-03 fourth session): dds/dsd (the DS-mode tile kernel) at block sizes
//     16/32 in bf16/f16 on the Hopper wgmma kernel that groups 64/bs lines per CTA
//     (matmul/wgmma_small.cuh) instead of mma.sync, where usable (sm_90a built, an sm_90
//     device, 16-byte aligned operand rows); NO_WGMMA=1 switches it off too
//   JAX_BLOCKSPARSE_ATTN_FWD_VARIANT: developer overrides of the attention forward (unset
//     or "": the default by architecture, attention/dispatch.cu: the FA3-design forward
//     with ping-pong on an sm_90 device running sm_90a code, for the shapes it covers; the
//     FA2 forward elsewhere). =0 the FA2 forward (64-row CTAs) even on Hopper, for A/B
//     timing; =1 the FA2 forward with 128-row CTAs at block size 128; =2 the FA3-design
//     forward (sm_90a only: an error elsewhere); =3 the same without the ping-pong (block
//     128; block 64 has one kernel for 2 and 3). Combinations a variant leaves out run the
//     FA2 forward (variant 0).
//   JAX_BLOCKSPARSE_ATTN_FWD_PERSISTENT=1 opt-in (measured no faster): the FA3-design forward
//     (variants 2 and 3, sm_90a) as a persistent kernel (attention/fwd_sm90.cu: one CTA per
//     SM, two at block 64, looping over the (batch, head, query block) items longest first
//     in a snake over the CTAs, the next item's loads overlapping this one's end); the same
//     outputs bit for bit
//   JAX_BLOCKSPARSE_ATTN_FWD_PERSISTENT_CTAS=n (n >= 1) the same, with at most n CTAs (tests
//     and compute-sanitizer: many work items per CTA on small shapes)
//   JAX_BLOCKSPARSE_ATTN_FWD_LAZY_RESCALE=0 opts out (issue 18; default on: on an H100
//     1.00-1.03x the forward without it over the six patterns, RESULTS 2026-12-06 third
//     session; its tests and compute-sanitizer pass): the FA3-design forward moves a
//     row's running maximum only when a tile's exceeds it by more than 8 (log2 units:
//     attn::kLazyRescaleSlack), and multiplies O by the old maximum's factor only in warps
//     where some row moved: most tiles skip the 64 (D 128) multiplies per thread between a
//     PV product and the next issue; values within the online softmax's rounding of the
//     exact ones. Under =0 the launch line says " eager-rescale" (every new maximum)
//   JAX_BLOCKSPARSE_ATTN_FWD_CAP_MAX=0 opts out (issue 21; default on: on an H100 the
//     capped forward at 1.025x (causal) and 1.025x (dense) its speed without it, the
//     outputs within bf16 rounding, RESULTS 2026-12-06 fifth session): under a logit soft
//     cap the FA3-design forward takes the cap's bound as every row's maximum
//     (attention/shared.cuh CapServesAsMax: bf16 with cap <= 41, f16 with cap <= 4.1, no
//     sinks): no tile maxima (an FMNMX per score, the quad shuffles) and no rescale; the
//     launch line adds " cap-max"
//   JAX_BLOCKSPARSE_ATTN_BWD_VARIANT (unset: 4 on an sm_90 device where the Python side
//     declares its workspaces, else 2 there, else 0; attention/dispatch.cu
//     kSm90BackwardDefault): =0 the FA2 backward, =2 the Hopper
//     FA3-design backward (sm_90a; bf16/f16, head dims 64 / 128 / 256 (256 unless
//     JAX_BLOCKSPARSE_ATTN_BWD_D256=0), block size 128, every mask source of the Hopper
//     forward; other combinations run the default), =3 the same without the overlap of
//     products and elementwise work inside a warpgroup. The Python side reads it too
//     (_cuda.sm90_backward: where those mask sources may run fused), =4 the
//     one-pass Hopper backward (attention/bwd_sm90_onepass.cu: head dims 64 / 128, block
//     size 128, segment ids, lists per batch entry and q_offset, no partial last tiles or
//     tile bits; dQ summed in a float32 workspace in a fixed order)
//   JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_DQ_FIRST=0 opts out (default on: on the H100 1.003-1.035x
//     the other order on seven masks, RESULTS 2026-12-06 sixth session): variant 4's steps
//     end in FlashAttention-3's order (dQ, then dK, the dQ partial copied out while dK runs:
//     attention/bwd_sm90_onepass.cu, DQ_FIRST); off, dK is issued before the dS^T store;
//     the same results bit for bit
//   JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_GROUP=N (unset: kOnePassGroupDefault = 4; =0 every
//     (batch, kv head) in one group): variant 4's launch order takes the (batch, kv head)
//     pairs N at a time, each group's key blocks launched before the next group's (fewer
//     query tiles in flight, for L2: benchmarks/onepass_schedule_model.py --groups; 4 is
//     1.00-1.18x one group on the H100, RESULTS 2026-12-07); the same results bit for bit
//   JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_EARLY_CONVERT=0 opts out (the default since its
//     racecheck and synccheck, RESULTS 2026-12-07 third session; on the H100 the backward
//     alone 1.1-1.6% faster on four masks, fwd+bwd causal 1.04x, strided 1.03x, RESULTS
//     2026-12-07 second session): variant 4's DqConvertKernel is a programmatic dependent
//     launch whose CTAs become resident while the one-pass kernel's last wave runs; each
//     converts its 64-row tile once the tile's semaphores count every key block that adds
//     into it (attention/bwd_sm90_onepass.cu, EARLY); the same results bit for bit
//   JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_PERSISTENT=0 opts out (the default since RESULTS
//     2026-12-07 fifth session: memcheck, racecheck, synccheck clean with 3 CTAs; on the
//     H100 the backward alone 1.038-1.055x one CTA per item on the five masks the default
//     routes to variant 4 (bigbird, routed to variant 2, 0.98x), fwd+bwd 1.00-1.07x; a
//     soft cap too): variant 4
//     in a persistent grid, one CTA per SM taking the work items (batch, kv head, key
//     block) in launch order from a counter, dK, dV stored by TMA through the K, V tiles
//     (as ..._STORE_TMA), the next item's K and V loading once the stores have read them
//     (bwd_sm90_onepass.cu, PERSISTENT); the same results bit for bit.
//     ..._PERSISTENT_CTAS=N (overrides =0): at most N CTAs (tests: several items per CTA
//     at small shapes)
//   JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_STORE_TMA=0 opts out where variant 4 runs one CTA per
//     item (..._PERSISTENT=0; the persistent form always stores by TMA; on
//     since the H100 ran it: memcheck, racecheck, synccheck clean, the backward alone
//     1.008-1.07x faster on six masks, RESULTS 2026-12-07 fourth session): dK, dV stored
//     through shared memory (each consumer's half into its K and V tiles, once both are
//     done with K) by TMA, instead of 4-byte stores from the registers (the timeline's
//     4.7-5.2 us a CTA from the last step to dK, dV stored, RESULTS 2026-12-07 third
//     session); the same results bit for bit
//   JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_DQ_SLOTS=4 (unset: the harness 2, the Python side by
//     layout, _cuda.py onepass_dq_slots): variant 4's dQ workspaces with 4
//     slots (jax_blocksparse/_cuda.py onepass_workspace_shapes; the FFI handler reads the
//     count from their size): the adds into a tile of a long query line (at least half the
//     key blocks: bigbird's global rows, causal's lower half) from the short key lists run
//     as 3 ordered chains, not one (the long lists keep their slot; attention/
//     bwd_sm90_onepass.cu, dQ slots); deterministic, but the sums' order
//     differs from 2 slots' (results not bit for bit those of the default). "8" (opt-in:
//     bigbird's backward 0.9% faster than with 4, local, strided, causal 3-8% slower than
//     with 2, RESULTS 2026-12-07 eighth session): 8 slots, 7 chains (4x 2 slots' workspace)
//   JAX_BLOCKSPARSE_ATTN_BWD_D256 (default on; "0" off): head dim 256 on the Hopper backward
//     (variants 2 and 3: attention/bwd_sm90_d256.cu; on the H200, RESULTS 2026-12-05, 14x
//     the pure-JAX backward at S 8192 causal); off, the extension reports no backward row of
//     head dim 256 (attention/dispatch.cu, RowEnabled), so the Python side routes those calls
//     to the pure path
//   JAX_BLOCKSPARSE_ATTN_HEAD_SECTIONS (unset: "l2" in the forward calls that ask for it,
//     AttentionForwardParams::l2_sections, one section elsewhere; set, it decides for every
//     call): the Hopper forward (not its
//     persistent form) and backward kernels take their grid's (B x heads, lines) cells in
//     sections of N columns (batch x head indices), one section after another, each
//     longest first across its columns (attn::CellOf, Args::section_columns), so that the
//     operands a section's CTAs share (K/V in the forward and the dQ kernel, Q/dO in the
//     dK/dV kernel) stay in L2, as FlashAttention-3 orders its tiles. "l2": N from the
//     card's L2 (half of it for a section's operands, attn::InSections); "1": one head's
//     lines back to back (heads outer); "" or "0": one section of every column
//     (a rank's CTAs of every head together, longest first across all heads)
//   JAX_BLOCKSPARSE_ATTN_HEAD_SECTIONS_EVEN=1 opt-in until timed (with HEAD_SECTIONS): the
//     same number of sections, of widths that differ by at most one (attn::CellOf), not
//     full ones and a narrower last one, whose long lines start late (a tail: at S 8192,
//     32 columns, "l2" gives 6 x 5 + 2; even: 6, 6, 5, 5, 5, 5). Issue 18's strided
//     forward: its K/V re-read from DRAM without sections (benchmarks/head_sections_model.py)
//   JAX_BLOCKSPARSE_ATTN_DELTA_TILES=0 opts out (default on since RESULTS 2026-12-07 eighth
//     session: the backward 0.6-1.7% faster on five masks, equal on causal): the backwards'
//     delta (rowsum(dO * O) - d_lse) by attention/fa2.cuh's DeltaTileKernel (32 rows of one
//     head a CTA, 16-byte loads, coalesced stores); =0: DeltaKernel (a warp a row), its
//     sums in another order (deterministic both)
//   JAX_BLOCKSPARSE_DECODE_SHARED_TILES=1 opt-in (measured: faster than the default only
//     where the forward kernel is faster still, RESULTS 2026-12-03 fifth session): decode
//     calls with more than 16 (query, head) rows per kv head run the decode kernel with
//     64-row CTAs whose four warps share every 64-key stage (attention/decode.cu), instead
//     of 16-row CTAs whose warps take 16-key tiles in turn (K/V read once per 64 rows, not
//     per 16); the Python side asks DecodeFormOf (_cuda.decode_form: the split count)
//   JAX_BLOCKSPARSE_DECODE_PDL=0 opts out (default on; issue 22): the decode's combine
//     kernel launched as a plain stream-ordered launch instead of with programmatic
//     dependent launch (attention/decode.cu: its CTAs wait for the partial kernel's
//     writes inside the kernel), to time the two on one machine
//   JAX_BLOCKSPARSE_DECODE_PACKED=0 opts out (default on: on the H200 5x the forward
//     kernel's speed at 16 queries of group 8, 1.6x the 16-row form at 3-8 queries,
//     values checked on the GPU: RESULTS 2026-12-04 third session): decode calls with more than 16 (query,
//     head) rows per kv head (GQA group a power of two, q's dtype for k and v, head dim
//     64 / 128, a mask shared by the heads, an sm_90a build on an sm_90 device) run the
//     Hopper forward's wgmma pipeline on GQA-packed tiles (attention/fwd_sm90.cu, PACKED):
//     K and V read once per tile, of 64
//     rows (one consumer warpgroup, two CTAs per SM) for up to 64 rows per kv head, of 128
//     for more, whichever the call allows (block sizes and pages: multiples or divisors of
//     the tile); =64 or =128 takes only that tile; the Python side routes up to 64 queries
//     there (_cuda.decode_form)
//   JAX_BLOCKSPARSE_MATMUL_SDD_RUNS=0 opts out (default on: on the H200 1.10-1.23x the one-block
//     kernel, RESULTS 2026-12-04): sdd (the SDD-mode tile kernel, mma.sync) at block sizes
//     16/32 takes up to 128 / bs blocks of one block row per CTA (matmul/mma_sync.cuh
//     SddRuns16/32: the A panel read once per run) instead of one block
//   JAX_BLOCKSPARSE_MATMUL_TF32_WGMMA=1 opt-in until the GPU suite has run under it (issue
//     20 item 3; its own tests pass on the H200, 2026-12-04): float32 matmuls at default
//     precision, block sizes 64/128, run the Hopper wgmma kernel with tf32 products
//     (matmul/wgmma_lines.cuh) instead of mma.sync's; wgmma reads 32-bit operands K-major
//     only, so the Python lowering (_cuda._tf32_wgmma) passes the transposed operands
//     those calls need (XLA transposes; a block's transpose for the sparse operand)
//   JAX_BLOCKSPARSE_MATMUL_GROUP_WGMMA=1 opt-in (measured 0.5x the default on the H200,
//     RESULTS 2026-12-05; issue 20 item 1, the third design): dds/dsd at
//     block sizes 16/32 in bf16/f16 on the Hopper kernel with one accumulator tile per line
//     (matmul/wgmma_group.cuh: 256 output columns per CTA, a product only on listed
//     blocks; =128: 128 columns, two CTAs per SM) instead of wgmma_small.cuh's; the Python
//     side reads it too and passes the
//     layout's group records (_cuda._group_columns), which that kernel needs
//   JAX_BLOCKSPARSE_MATMUL_TMA (issue 20 item 2; H100, density 0.1: 1.20-1.38x
//     wgmma_lines.cuh at bs 64, 1.22-1.27x at bs 128 with its items in a snake, RESULTS
//     2026-12-06 third session; memcheck, racecheck and synccheck clean): dds/dsd in
//     bf16/f16 with 16-byte aligned output rows on the persistent warp-specialized Hopper
//     kernel (matmul/wgmma_tma.cuh: TMA copies, the blocks multicast to the two CTAs of a
//     cluster, the epilogue through TMA stores under the next item's MMAs) instead of
//     wgmma_lines.cuh's: at block sizes 64 and 128 by default (=1 too), at 64 alone under
//     =64, at neither under =0
//   JAX_BLOCKSPARSE_MATMUL_SDD_SPLIT=1 opt-in (H100: dW within noise at bs 128, 0.94x at
//     bs 64, RESULTS 2026-12-06; issue 20 item 2, the weight
//     gradient): sdd at block sizes 64/128 on wgmma_lines.cuh's kernel in clusters of 2 or
//     4 CTAs per output block, each over a share of K, their partials summed in rank
//     order through distributed shared memory, where that is modelled to end sooner
//     (wg::SddSplits: fewer rounds of resident CTAs)
//   JAX_BLOCKSPARSE_MATMUL_SDD_TMA (issue 20 item 2, the weight gradient; H100, RESULTS
//     2026-12-06 third session: 1.09x wgmma_lines.cuh at bs 128 density 0.1, 0.74x at
//     0.02, 0.89x at bs 64; memcheck, racecheck, synccheck clean): sdd at block sizes
//     64/128 in bf16/f16 with 16-byte aligned rows on a persistent warp-specialized Hopper
//     kernel (matmul/wgmma_sdd_tma.cuh: TMA copies, up to 4 / 2 blocks of one block row
//     per pass sharing the A panel's loads, TMA stores) instead of wgmma_lines.cuh's one
//     block per CTA: unset, at block size 128 where the call's items fill the card
//     (matmul/dispatch.cu SddTmaByDefault; not under JAX_BLOCKSPARSE_MATMUL_SDD_SPLIT=1);
//     =1 at 64 and 128 always; =0 never
//   (Python side only: the default bs-16/32 kernel, wgmma_small.cuh, gets the 64-column
//     group records and reads its union rows from them; JAX_BLOCKSPARSE_MATMUL_SMALL_RECORDS=0
//     passes none, and every thread merges the lists itself: 1.1-1.5x slower on the H200)
#pragma once

namespace jax_blocksparse {

// variant 4's launch order: the (batch, kv head) pairs in groups of this many (RESULTS
// 2026-12-07: the sparse layouts' L2 misses)
constexpr int kOnePassGroupDefault = 4;

struct Switches {
  int debug;              // the value as an integer (atoi); 0 when unset
  bool simple_kernels;    // set to anything but "" or "0"
  bool no_wgmma;          // set to anything but "" or "0"
  bool small_wgmma;       // JAX_BLOCKSPARSE_MATMUL_SMALL_WGMMA: anything but "0" (unset: on)
  int attn_fwd_variant;   // 0..3 when the value starts with that digit, else -1 (default)
  bool attn_fwd_persistent;  // JAX_BLOCKSPARSE_ATTN_FWD_PERSISTENT: anything but "" or "0",
                             // or JAX_BLOCKSPARSE_ATTN_FWD_PERSISTENT_CTAS set
  int attn_fwd_persistent_ctas;  // the latter's value when >= 1, else 0 (no cap)
  int attn_bwd_variant;   // 0..4 when the value starts with that digit, else -1 (default)
  bool attn_bwd_onepass_dq_first;  // JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_DQ_FIRST: anything but
                                   // "0" (unset: on)
  int attn_bwd_onepass_group;  // JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_GROUP: N >= 1 its value,
                               // "0": 0 (every (batch, kv head) in one group), else
                               // kOnePassGroupDefault
  bool attn_bwd_onepass_early_convert;  // JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_EARLY_CONVERT:
                                        // anything but "0" (unset: on)
  bool attn_bwd_onepass_persistent;  // JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_PERSISTENT: anything
                                     // but "0" (unset: on); or the next one set
  int attn_bwd_onepass_persistent_ctas;  // JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_PERSISTENT_CTAS:
                                         // N > 0 its value, else 0
  int attn_bwd_onepass_dq_slots;  // JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_DQ_SLOTS: 4 / 8 for "4" / "8",
                                  // else 2 (the harness's workspaces)
  bool attn_bwd_onepass_store_tma;  // JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_STORE_TMA: anything but
                                    // "0" (unset: on)
  bool attn_delta_tiles;  // JAX_BLOCKSPARSE_ATTN_DELTA_TILES: on unless "0"
  bool attn_fwd_lazy_rescale;  // JAX_BLOCKSPARSE_ATTN_FWD_LAZY_RESCALE: anything but "0"
                               // (unset: on)
  bool attn_fwd_cap_max;  // JAX_BLOCKSPARSE_ATTN_FWD_CAP_MAX: anything but "0"
  bool attn_bwd_d256;     // JAX_BLOCKSPARSE_ATTN_BWD_D256: anything but "0" (default on)
  int attn_head_sections;  // JAX_BLOCKSPARSE_ATTN_HEAD_SECTIONS: N >= 1 its value, -1 "l2",
                           // 0 otherwise (unset, "", "0", anything else)
  bool attn_head_sections_set;  // whether it is set (unset: the call's choice, InSections)
  bool attn_head_sections_even;  // JAX_BLOCKSPARSE_ATTN_HEAD_SECTIONS_EVEN: anything but "" or
                                 // "0"
  bool decode_shared_tiles;  // JAX_BLOCKSPARSE_DECODE_SHARED_TILES: anything but "" or "0"
  bool decode_packed;     // JAX_BLOCKSPARSE_DECODE_PACKED: anything but "0" (unset: on)
  bool decode_pdl;        // JAX_BLOCKSPARSE_DECODE_PDL: anything but "0" (unset: on)
  int decode_packed_tile;  // its value when 64 or 128 (rows per tile), else 0 (by the call)
  bool sdd_runs;          // JAX_BLOCKSPARSE_MATMUL_SDD_RUNS: anything but "0" (unset: on)
  bool tf32_wgmma;        // JAX_BLOCKSPARSE_MATMUL_TF32_WGMMA: anything but "" or "0"
  bool group_wgmma;       // JAX_BLOCKSPARSE_MATMUL_GROUP_WGMMA: anything but "" or "0"
  int tma_wgmma_max_bs;   // JAX_BLOCKSPARSE_MATMUL_TMA: the largest block size the TMA
                          // kernel runs: 0 for "0", 64 for "64", 128 otherwise (unset too)
  bool sdd_split;         // JAX_BLOCKSPARSE_MATMUL_SDD_SPLIT: anything but "" or "0"
  int sdd_tma;            // JAX_BLOCKSPARSE_MATMUL_SDD_TMA: -1 unset or "" (the automatic
                          // choice, matmul/dispatch.cu SddTmaByDefault), 0 for "0", else 1
};

// The switches, read from the environment on the first call (thread-safe, then constant).
const Switches& GetSwitches();

}  // namespace jax_blocksparse
