// GetSwitches (switches.h): the environment, read once.
#include "switches.h"

#include <cstdlib>
#include <cstring>

namespace jax_blocksparse {
namespace {

bool Flag(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && std::strcmp(v, "") != 0 && std::strcmp(v, "0") != 0;
}

bool OnUnlessZero(const char* name) {  // a default that "0" switches off
  const char* v = std::getenv(name);
  return v == nullptr || std::strcmp(v, "0") != 0;
}

int PositiveOrZero(const char* name) {  // a count: its value when >= 1, else 0 (unset)
  const char* v = std::getenv(name);
  return v != nullptr && std::atoi(v) > 0 ? std::atoi(v) : 0;
}

Switches Read() {
  Switches s{};
  const char* debug = std::getenv("JAX_BLOCKSPARSE_DEBUG");
  s.debug = debug != nullptr ? std::atoi(debug) : 0;
  s.simple_kernels = Flag("JAX_BLOCKSPARSE_SIMPLE_KERNELS");
  s.no_wgmma = Flag("JAX_BLOCKSPARSE_NO_WGMMA");
  s.small_wgmma = OnUnlessZero("JAX_BLOCKSPARSE_MATMUL_SMALL_WGMMA");
  const char* variant = std::getenv("JAX_BLOCKSPARSE_ATTN_FWD_VARIANT");
  s.attn_fwd_variant =
      variant != nullptr && variant[0] >= '0' && variant[0] <= '3' ? variant[0] - '0' : -1;
  s.attn_fwd_persistent_ctas = PositiveOrZero("JAX_BLOCKSPARSE_ATTN_FWD_PERSISTENT_CTAS");
  s.attn_fwd_persistent =
      Flag("JAX_BLOCKSPARSE_ATTN_FWD_PERSISTENT") || s.attn_fwd_persistent_ctas > 0;
  const char* bwd_variant = std::getenv("JAX_BLOCKSPARSE_ATTN_BWD_VARIANT");
  s.attn_bwd_variant =
      bwd_variant != nullptr && bwd_variant[0] >= '0' && bwd_variant[0] <= '4' ? bwd_variant[0] - '0'
                                                                               : -1;
  s.attn_bwd_onepass_dq_first = OnUnlessZero("JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_DQ_FIRST");
  const char* group = std::getenv("JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_GROUP");
  s.attn_bwd_onepass_group = group == nullptr        ? kOnePassGroupDefault
                             : group[0] == '0'        ? 0
                             : std::atoi(group) > 0   ? std::atoi(group)
                                                      : kOnePassGroupDefault;
  s.attn_bwd_onepass_early_convert =
      OnUnlessZero("JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_EARLY_CONVERT");
  s.attn_bwd_onepass_persistent_ctas =
      PositiveOrZero("JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_PERSISTENT_CTAS");
  s.attn_bwd_onepass_persistent = OnUnlessZero("JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_PERSISTENT") ||
                                  s.attn_bwd_onepass_persistent_ctas > 0;
  s.attn_bwd_onepass_store_tma = OnUnlessZero("JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_STORE_TMA");
  const char* dq_slots = std::getenv("JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_DQ_SLOTS");
  const bool four = dq_slots != nullptr && std::strcmp(dq_slots, "4") == 0;
  const bool eight = dq_slots != nullptr && std::strcmp(dq_slots, "8") == 0;
  s.attn_bwd_onepass_dq_slots = four ? 4 : eight ? 8 : 2;  // exactly as _cuda.py reads it
  s.attn_bwd_d256 = OnUnlessZero("JAX_BLOCKSPARSE_ATTN_BWD_D256");
  const char* sections = std::getenv("JAX_BLOCKSPARSE_ATTN_HEAD_SECTIONS");
  s.attn_head_sections = sections == nullptr             ? 0
                         : std::strcmp(sections, "l2") == 0 ? -1
                         : std::atoi(sections) > 0      ? std::atoi(sections)
                                                        : 0;
  s.attn_head_sections_set = sections != nullptr;
  s.attn_delta_tiles = OnUnlessZero("JAX_BLOCKSPARSE_ATTN_DELTA_TILES");
  s.attn_head_sections_even = Flag("JAX_BLOCKSPARSE_ATTN_HEAD_SECTIONS_EVEN");
  s.decode_shared_tiles = Flag("JAX_BLOCKSPARSE_DECODE_SHARED_TILES");
  s.decode_packed = OnUnlessZero("JAX_BLOCKSPARSE_DECODE_PACKED");
  s.decode_pdl = OnUnlessZero("JAX_BLOCKSPARSE_DECODE_PDL");
  const char* packed = std::getenv("JAX_BLOCKSPARSE_DECODE_PACKED");
  const int tile = packed != nullptr ? std::atoi(packed) : 0;
  s.decode_packed_tile = tile == 64 || tile == 128 ? tile : 0;
  s.sdd_runs = OnUnlessZero("JAX_BLOCKSPARSE_MATMUL_SDD_RUNS");
  s.tf32_wgmma = Flag("JAX_BLOCKSPARSE_MATMUL_TF32_WGMMA");
  s.group_wgmma = Flag("JAX_BLOCKSPARSE_MATMUL_GROUP_WGMMA");
  const char* tma = std::getenv("JAX_BLOCKSPARSE_MATMUL_TMA");
  s.tma_wgmma_max_bs = tma == nullptr || *tma == '\0'     ? 128
                       : std::strcmp(tma, "0") == 0  ? 0
                       : std::strcmp(tma, "64") == 0 ? 64
                                                     : 128;
  s.sdd_split = Flag("JAX_BLOCKSPARSE_MATMUL_SDD_SPLIT");
  const char* sdd_tma = std::getenv("JAX_BLOCKSPARSE_MATMUL_SDD_TMA");
  s.sdd_tma = sdd_tma == nullptr || *sdd_tma == '\0'  ? -1
              : std::strcmp(sdd_tma, "0") == 0 ? 0
                                               : 1;
  s.attn_fwd_lazy_rescale = OnUnlessZero("JAX_BLOCKSPARSE_ATTN_FWD_LAZY_RESCALE");
  s.attn_fwd_cap_max = OnUnlessZero("JAX_BLOCKSPARSE_ATTN_FWD_CAP_MAX");
  return s;
}

}  // namespace

const Switches& GetSwitches() {
  static const Switches switches = Read();
  return switches;
}

}  // namespace jax_blocksparse
