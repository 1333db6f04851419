"""The CUDA path: load the compiled extension, register its FFI targets, and lower the
primitives to them on the "cuda" platform.

Each primitive lowers through `jax.ffi.ffi_lowering`: the custom call's operands are the
primitive's operands followed by the layout's int32 metadata (block lists, coordinates) as
constants, its results are the primitive's `ctx.avals_out`. The kernels never depend on the
layout itself. Which calls the kernels take is decided by tables (`MATMUL_DTYPES`; for
attention and decode the rows of the C++ dispatch tables, which the extension reports:
`ATTENTION_KERNELS`, `attention_families`, `DECODE_KERNELS`); every other call lowers to
the pure-JAX implementation, on a GPU too (float64, for one).

The Python side's environment switches are read once, into `SWITCHES`:
`JAX_BLOCKSPARSE_DISABLE_CUDA=1` forces the pure-JAX path (A/B checks);
`JAX_BLOCKSPARSE_ATTN_FWD_VARIANT` and `JAX_BLOCKSPARSE_ATTN_BWD_VARIANT` (the C++ side's
overrides, cuda/switches.h) are read here too: the forward and the backward take segment
ids, lists per batch entry, partial last tiles and q_offset only where the FA3-design
kernels run (`sm90_forward`, `sm90_backward`), at the head dims and block sizes of their
rows; under 4 (`onepass_backward`) the backward's custom call gets the one-pass
kernel's two workspaces. `JAX_BLOCKSPARSE_MATMUL_TF32_WGMMA=1` (with
`JAX_BLOCKSPARSE_NO_WGMMA` unset) makes the float32 matmul lowerings pass K-major operands
on an sm_90a device (`_tf32_wgmma`); the dds/dsd lowerings at block sizes 16/32
pass the layout's group records (`_group_columns`: 64 columns unless
`JAX_BLOCKSPARSE_MATMUL_SMALL_RECORDS=0`, 256 or 128 under
`JAX_BLOCKSPARSE_MATMUL_GROUP_WGMMA`). `JAX_BLOCKSPARSE_ATTN_BWD_TILED64` decides where a
block-64 attention backward without mask sources runs on the Hopper backward's 128 x 128
tiles (`backward_tile_context`): unset, where its tiles are full enough (a traced mask:
always); 0 never; 1 always.
Under `JAX_BLOCKSPARSE_DEBUG` (`_debug`), each call that a kernel could have taken but that
lowers to the pure-JAX implementation says why when the program is compiled (the kernels'
own launch lines come from C++).
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _debug
from . import _jax_internals as jint
from . import _partitioning
from . import attention_primitives as att
from . import attention_decode as dec
from . import lists_primitive as lp
from . import matmul_primitives as mp
from .attention_metadata import (FINE_BLOCKS, TILE, TILED_BACKWARD_BLOCK, AttentionLists,
                                 TileLists, key_tiles, mask_sources, tiled_blocks)
from .layout import GROUP_COLUMNS, SMALL_COLUMNS

try:
    from . import _jax_blocksparse_cuda as _ext
except ImportError:  # built without nvcc, or a source checkout
    _ext = None


class Switches(NamedTuple):
    """The environment switches of the Python side, read once when the package loads."""
    disable_cuda: bool
    attn_fwd_variant: int  # -1: unset (the default by architecture), else 0..3
    attn_bwd_variant: int  # -1: unset (the default), else 0..4 (2, 3, 4: the Hopper backward)
    matmul_tf32_wgmma: bool  # JAX_BLOCKSPARSE_MATMUL_TF32_WGMMA (opt-in: `_tf32_wgmma`)
    no_wgmma: bool  # JAX_BLOCKSPARSE_NO_WGMMA (it switches the former off too)
    attn_bwd_tiled64: int  # JAX_BLOCKSPARSE_ATTN_BWD_TILED64: -1 unset, 0, 1
    # (`backward_tile_context`)
    matmul_group_wgmma: int  # JAX_BLOCKSPARSE_MATMUL_GROUP_WGMMA: 0 off, else the group
    # kernel's columns: 128 for "128", 256 for any other value (opt-in: `_group_columns`)
    matmul_small_records: bool  # JAX_BLOCKSPARSE_MATMUL_SMALL_RECORDS: on unless "0"
    attn_bwd_onepass_dq_slots: int  # JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_DQ_SLOTS: 2, 4, 8 for
    # "2", "4", "8", else 0 (the layout's choice: `onepass_dq_slots`)


# The variants on an sm_90 device when JAX_BLOCKSPARSE_ATTN_FWD_VARIANT / ..._BWD_VARIANT
# is unset: 2 (the FA3-design kernels), as cuda/attention/dispatch.cu decides
# (FindAttentionKernel, kSm90BackwardDefault).
SM90_FORWARD_DEFAULT = 2
SM90_BACKWARD_DEFAULT = 4
# The Hopper backward variant that runs what the one-pass kernel (variant 4) leaves out:
# partial last tiles, tile bits, head dims without a variant-4 row
# (dispatch.cu: kSm90BackwardBeyondOnepass).
SM90_BACKWARD_BEYOND_ONEPASS = 2


def _read_switches() -> Switches:
    def number(name):
        value = os.environ.get(name, "0").strip() or "0"
        return int(value) if value.isdigit() else 1

    def choice(name):  # -1 unset (the default's choice), else 0 or 1 as `number` reads it
        return -1 if not os.environ.get(name, "").strip() else int(number(name) != 0)

    def group_width(name):  # 0 unset or "0", 128 for "128", else 256
        value = number(name)
        return 0 if value == 0 else 128 if value == 128 else GROUP_COLUMNS

    def variant(name):  # the leading digit 0..4, else -1 (as cuda/switches.cu reads them)
        value = os.environ.get(name, "")
        return int(value[0]) if value[:1] in ("0", "1", "2", "3", "4") else -1
    return Switches(disable_cuda=number("JAX_BLOCKSPARSE_DISABLE_CUDA") != 0,
                    attn_fwd_variant=variant("JAX_BLOCKSPARSE_ATTN_FWD_VARIANT"),
                    attn_bwd_variant=variant("JAX_BLOCKSPARSE_ATTN_BWD_VARIANT"),
                    matmul_tf32_wgmma=number("JAX_BLOCKSPARSE_MATMUL_TF32_WGMMA") != 0,
                    no_wgmma=number("JAX_BLOCKSPARSE_NO_WGMMA") != 0,
                    attn_bwd_tiled64=choice("JAX_BLOCKSPARSE_ATTN_BWD_TILED64"),
                    matmul_group_wgmma=group_width("JAX_BLOCKSPARSE_MATMUL_GROUP_WGMMA"),
                    matmul_small_records=os.environ.get(
                        "JAX_BLOCKSPARSE_MATMUL_SMALL_RECORDS", "").strip() != "0",
                    attn_bwd_onepass_dq_slots={"2": 2, "4": 4, "8": 8}.get(os.environ.get(
                        "JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_DQ_SLOTS", "").strip(), 0))


SWITCHES = _read_switches()


def cuda_built() -> bool:
    """Whether the compiled CUDA extension is present and enabled (its lowerings are then
    registered for the "cuda" platform, whether or not this machine has a GPU)."""
    return _ext is not None and not SWITCHES.disable_cuda


@functools.lru_cache(maxsize=None)
def cuda_available() -> bool:
    """Whether the CUDA kernels run here: the extension is built and enabled, **and** jax
    sees a CUDA device. (Asks jax for its CUDA devices on the first call.)"""
    if not cuda_built():
        return False
    try:
        return len(jax.devices("cuda")) > 0
    except RuntimeError:  # no CUDA backend
        return False


@functools.lru_cache(maxsize=None)
def _sm90a_device() -> bool:
    """Whether the FA3-design kernels can run here: the kernels run here, the extension has
    sm_90a code and the first CUDA device is an sm_90 one (asked once, then cached)."""
    if not cuda_available():
        return False
    if "90a" not in str(getattr(_ext, "cuda_architectures", "")).split(","):
        return False
    return getattr(jax.devices("cuda")[0], "compute_capability", None) == "9.0"


def sm90_forward() -> bool:
    """Whether the attention forward runs the FA3-design kernel (cuda/attention/fwd_sm90.cu)
    here, as the C++ dispatch decides (attention/dispatch.cu, FindAttentionKernel): an sm_90a
    device (`_sm90a_device`) and JAX_BLOCKSPARSE_ATTN_FWD_VARIANT does not force the FA2
    forward (a variant of the "forward" family's rows, 0 or 1, or one without rows). That
    kernel also takes segment ids, lists per batch entry, partial last tiles and q_offset."""
    variant = SWITCHES.attn_fwd_variant
    return ((SM90_FORWARD_DEFAULT if variant < 0 else variant)
            in _families()["sm90_forward"].variants and _sm90a_device())


def sm90_backward() -> bool:
    """Whether the attention backward runs the FA3-design kernels
    (cuda/attention/bwd_sm90.cu, or the one-pass bwd_sm90_onepass.cu) here, as the C++
    dispatch decides: an sm_90a device and a backward variant of their rows, 2, 3 or 4
    (JAX_BLOCKSPARSE_ATTN_BWD_VARIANT, else `SM90_BACKWARD_DEFAULT`). Those kernels also
    take segment ids, lists per batch entry, partial last tiles and q_offset (variant 4
    leaves partial last tiles and tile bits to `SM90_BACKWARD_BEYOND_ONEPASS`:
    `onepass_backward`),
    at the head dims and block
    sizes of their rows (`fused_attention_unsupported`; the others run the FA2 backward)."""
    families = _families()
    return (_backward_variant()
            in families["sm90_backward"].variants | families["onepass_backward"].variants
            and _sm90a_device())


def _backward_variant() -> int:
    """The backward variant the C++ dispatch asks for (FindAttentionKernel):
    JAX_BLOCKSPARSE_ATTN_BWD_VARIANT where set, else `SM90_BACKWARD_DEFAULT` on an sm_90a
    device (`_sm90a_device`) and 0 elsewhere."""
    variant = SWITCHES.attn_bwd_variant
    return variant if variant >= 0 else SM90_BACKWARD_DEFAULT if _sm90a_device() else 0


# A block-64 static layout without mask sources runs its backward on 128 x 128 tiles
# when its listed blocks fill at least this fraction of its listed tiles
# (`attention_metadata.tile_fill`), else on the FA2 backward's block-64 rows. Measured
# (H200, bf16, S 8192, D 128; RESULTS 2026-12-04 fifth session), forward+backward on the
# tiles against the block-64 rows: fill 0.47 (bigbird) 0.90x, 0.60 (fixed) 1.08x, 0.84
# (strided) 1.48x, 0.94 (local) 1.61x, 0.99 (causal) 1.81x; the crossover near 0.53.
TILED64_MIN_FILL = 0.55


def backward_tiled(block_size: int, sources: bool, tiles: bool) -> bool:
    """Whether the fused backward runs a mask of `block_size` on TILE x TILE tiles with its
    blocks' bits (`attention_metadata.tiled_blocks`): `FINE_BLOCKS` always;
    `TILED_BACKWARD_BLOCK` with mask sources (`sources`: `mask_sources`), or where
    `attention` built the call's tile lists (`tiles`: `backward_tile_context`)."""
    return tiled_blocks(block_size, sources or tiles, backward=True)


def backward_tile_context(block_size: int, sources: bool = True, fill=None) -> bool:
    """Whether `attention` builds the TILE x TILE tile lists of a call of `block_size` for
    the kernels (`backward_tiled` decides, in the lowering, whether they are read):
    `FINE_BLOCKS` always; `TILED_BACKWARD_BLOCK` where the Hopper backward runs, for calls
    with mask sources (`sources`: `mask_sources`, as far as `attention` knows them), and
    for the others as JAX_BLOCKSPARSE_ATTN_BWD_TILED64 says: 0 never, 1 always, unset
    where `fill` (a static layout's: a function giving its `tile_fill`, asked only here)
    reaches `TILED64_MIN_FILL`, and for a traced mask (`fill` None: unknown until run, and
    vmap over a `BlockMask` can give it lists per batch entry after `attention`). Without
    them a block-64 backward runs the FA2 backward's rows (or, with mask sources that
    appear later, the pure-JAX one). XLA drops the lists where no kernel reads them (the
    lowerings pass constant placeholders instead)."""
    if block_size in FINE_BLOCKS:
        return True
    if block_size != TILED_BACKWARD_BLOCK or not sm90_backward():
        return False
    if sources:
        return True
    if SWITCHES.attn_bwd_tiled64 >= 0:
        return bool(SWITCHES.attn_bwd_tiled64)
    return fill is None or fill() >= TILED64_MIN_FILL


# The one-pass backward (variant 4) adds a query block's dQ in its key blocks' order, so a
# long query line (a global row) chains those adds; a long key line (a global column) does
# not: those key blocks add into a dQ slot of their own (bwd_sm90_onepass.cu,
# kOnePassDqSlots). Static layouts sparser than this (their visited share of the block grid,
# `attention_metadata.LineStats`) with a query block listing at least half the key blocks
# run it with 4 dQ slots, that query block's adds in 3 chains side by side: bigbird's
# backward alone 1.07x variant 2's and 1.18x variant 4's with 2 slots, where those layouts
# ran variant 2 before (H100, bf16, S 8192, D 128, bs 128, one call: RESULTS 2026-12-07
# sixth session). The others keep 2 slots: with 4 the local layouts ran 1-2% slower (no
# long query line there: slots 2 and 3 unused, their semaphores cleared; one call) and
# causal 1.6% faster, for twice the workspace ([S, B, Hq, Tq, D] float32). Variant 4
# against 2 on the others: causal 1.30x, dense 1.31x, local 1.10x, strided 1.02x (RESULTS
# 2026-12-06 sixth session), fixed (global key columns) 1.10x.
ONEPASS_SPARSE_DENSITY = 0.25


def _global_query_rows(stats) -> bool:
    """Whether a static layout's `stats` (`attention_metadata.LineStats`) are both under
    `ONEPASS_SPARSE_DENSITY` dense and hold a query block listing at least half the key
    blocks (bigbird's global rows); False for `stats` None (a mask known only when the
    call runs: a `BlockMask`, a `q_offset`)."""
    return (stats is not None and stats.density < ONEPASS_SPARSE_DENSITY
            and stats.query_line >= 0.5)


def onepass_dq_slots(stats) -> int:
    """The one-pass backward's dQ slots for a call: JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_DQ_SLOTS
    where set (2, 4 or 8), else 4 for a static layout with global query rows
    (`_global_query_rows` of its `stats`), 2 otherwise and for a mask known only when the
    call runs (`stats` None)."""
    return SWITCHES.attn_bwd_onepass_dq_slots or (4 if _global_query_rows(stats) else 2)


# The FA3-design forward takes its grid's (batch x head, query block) cells in sections of
# heads whose K and V fit half the L2 (cuda/attention/common.cuh, InSections "l2"), each
# section's cells longest first, for static layouts without global query rows: the
# strided forward 1.155x one section of every head (its K/V re-read from DRAM otherwise:
# benchmarks/head_sections_model.py), fixed 1.04x, causal 1.01x, local 0.99x; bigbird
# (global rows, the long lines of every head best started together) 0.88x, so it keeps
# one section, as do traced masks (unknown lines); H100, bf16, S 8192, D 128, bs 128, the
# harness, one call (RESULTS 2026-12-07 seventh session; the patterns table: strided
# 1.46x FlexAttention, 1.26x in one section). JAX_BLOCKSPARSE_ATTN_HEAD_SECTIONS, where
# set, decides for every call instead.
def forward_head_sections(stats) -> bool:
    """Whether a forward call asks for sections of heads sized to L2 (the custom call's
    attribute `head_sections`): a static layout's `stats` (`attention_metadata.LineStats`)
    without global query rows (`_global_query_rows`); False for `stats` None."""
    return stats is not None and not _global_query_rows(stats)


def onepass_backward(dtype, head_dim: int, block_size: int, softcap: float = 0.0,
                     beyond: bool = False) -> bool:
    """Whether the attention backward's custom call runs backward variant 4, the one-pass
    Hopper kernel (cuda/attention/bwd_sm90_onepass.cu): it then gets the workspaces
    `dq_accum` and `dq_semaphores`, and a call declared without them runs
    `SM90_BACKWARD_BEYOND_ONEPASS`'s rows (attention/dispatch.cu, FindAttentionKernel), as
    do calls where variant 4 has no row (the "onepass_backward" family of
    `attention_families`; its rows take a soft cap). Where variant 4 is asked for
    (`_backward_variant`: JAX_BLOCKSPARSE_ATTN_BWD_VARIANT=4, or the default) and the
    call has nothing the kernel leaves out (`beyond`: partial last tiles, a mask on
    128 x 128 tiles, `backward_tiled`). The kernel takes segment ids, q_offset and lists
    per batch entry."""
    return (_backward_variant() == 4 and not beyond and _no_row(
        _families()["onepass_backward"], dtype, head_dim, block_size, softcap) is None)


def onepass_workspace_shapes(b: int, hq: int, tq: int, d: int, s: int):
    """The one-pass backward's workspaces (cuda/attention/bwd_sm90_onepass.h,
    OnePassDqAccumElements and OnePassSemaphoreElements): dq_accum float32 [S, B, Hq, Tq, D]
    and dq_semaphores int32 [S B Hq Tq / 64 + 1], `s` = S dQ slots (`onepass_dq_slots`): 2
    (kOnePassDqSlots), or 4 or 8 (a long query line's adds in 3 or 7 ordered chains, not
    one; the kernel reads S from the size); the last int: the persistent grid's item
    counter."""
    return (s, b, hq, tq, d), (s * b * hq * (tq // 64) + 1,)


def _precision_attr(precision) -> np.int32:
    """0: default (TF32 tensor cores for float32 inputs), 1: full float32 (`HIGHEST`)."""
    return np.int32(precision == jax.lax.Precision.HIGHEST)


def _ffi(target, ctx, operands, metadata, **attributes):
    """The custom call `target` on `operands` (the primitive's, as in `ctx.avals_in`) and
    the int32 numpy arrays `metadata` as constants; results typed as `ctx.avals_out`."""
    template = ctx.avals_in[0]
    metadata = [np.ascontiguousarray(m, np.int32) for m in metadata]
    meta_avals = [template.update(shape=m.shape, dtype=np.dtype(np.int32), weak_type=False)
                  for m in metadata]
    ctx = ctx.replace(avals_in=[*ctx.avals_in, *meta_avals])
    constants = [jint.ir_constant(m) for m in metadata]
    return jax.ffi.ffi_lowering(target)(ctx, *operands, *constants, **attributes)


# ------------------------------------------------------------------- matmul family
def _tf32_wgmma(ctx, block_size: int, precision) -> bool:
    """Whether this float32 matmul call is for the Hopper wgmma kernel with tf32 products
    (opt-in: JAX_BLOCKSPARSE_MATMUL_TF32_WGMMA=1; cuda/matmul/dispatch.cu, kWgmmaTf32):
    default precision, block size 64 or 128, an sm_90a device. That kernel reads both
    operands K-major (wgmma takes no transposes of 32-bit operands), so the lowerings below
    then pass the transposes that make them so; where the C++ dispatch still picks
    another kernel (rows that are not 16-byte aligned: mma.sync) the call computes the
    same product from them."""
    return (SWITCHES.matmul_tf32_wgmma and not SWITCHES.no_wgmma
            and ctx.avals_in[0].dtype == jnp.float32 and block_size in (64, 128)
            and precision != jax.lax.Precision.HIGHEST and _sm90a_device())


def _swapped(ctx, operands, which):
    """`operands` (of the call, as `ctx.avals_in`) with the last two axes of those where
    `which` holds swapped, inside the lowering: (operands, ctx with their avals)."""
    swap = jint.lower_fun(lambda x: jnp.swapaxes(x, -1, -2), multiple_results=False)
    values, avals = list(operands), list(ctx.avals_in)
    for i, flip in enumerate(which):
        if flip:
            aval = avals[i]
            out = aval.update(shape=(*aval.shape[:-2], aval.shape[-1], aval.shape[-2]))
            values[i] = swap(ctx.replace(avals_in=[aval], avals_out=[out]), values[i])[0]
            avals[i] = out
    return values, ctx.replace(avals_in=avals)


def _k_major(ctx, operands, trans, block_size, precision):
    """Under `_tf32_wgmma`, the call's two operands K-major for the tf32 kernel: a dense
    operand stored the other way transposed, with the flag that reads it back; a sparse
    operand's blocks each transposed, the flag flipped (the tile kernel reads each block
    through the flag, the block lists stay those of the call's own orientation), so that
    the flags become (False, True) and the product is the same. Else as given. Returns
    (ctx, operands, trans)."""
    if not _tf32_wgmma(ctx, block_size, precision):
        return ctx, operands, trans
    operands, ctx = _swapped(ctx, operands, (trans[0], not trans[1]))
    return ctx, operands, (False, True)


def _sdd_lowering(ctx, a, b, *, layout, trans_a, trans_b, precision):
    ctx, (a, b), (trans_a, trans_b) = _k_major(ctx, (a, b), (trans_a, trans_b),
                                               layout.block_size, precision)
    return _ffi("jax_blocksparse_sdd", ctx, (a, b), [layout.coords],
                block_size=np.int32(layout.block_size), trans_a=trans_a, trans_b=trans_b,
                precision=_precision_attr(precision))


def _group_columns(ctx, block_size: int) -> int:
    """The width of the group records this dds/dsd call carries (0: none, a one-int
    placeholder): the bs-16/32 wgmma kernels on an sm_90a device, bf16/f16, read the union
    of their lines' blocks merged on the host (`Layout.group_steps`) where the call has
    them: 256 (or 128) columns for the per-line-accumulator kernel
    (cuda/matmul/wgmma_group.cuh, opt-in JAX_BLOCKSPARSE_MATMUL_GROUP_WGMMA=1, or =128 for
    its 128-column form), else 64 for the default 64-column kernel (wgmma_small.cuh;
    1.1-1.5x faster on the H200 than each of its threads merging the lists itself, which
    it does under JAX_BLOCKSPARSE_MATMUL_SMALL_RECORDS=0). The C++ dispatch still decides which
    kernel runs (alignment); a kernel given records of another width ignores them."""
    if (SWITCHES.no_wgmma or block_size not in (16, 32) or not _sm90a_device()
            or ctx.avals_in[0].dtype not in (jnp.bfloat16, jnp.float16)):
        return 0
    if SWITCHES.matmul_group_wgmma:
        return SWITCHES.matmul_group_wgmma
    return SMALL_COLUMNS if SWITCHES.matmul_small_records else 0


def _line_metadata(ctx, layout, by):
    """dsd/dds metadata: the block lists of the output lines (`layout.lists(by)`) and the
    group records (`_group_columns`) or their placeholder; and the records' width."""
    columns = _group_columns(ctx, layout.block_size)
    steps = layout.group_steps(by, columns) if columns else np.zeros(1, np.int32)
    return [*layout.lists(by), steps], np.int32(columns)


def _dsd_lowering(ctx, s, b, *, layout, trans_s, trans_b, precision):
    lists, columns = _line_metadata(ctx, layout, "col" if trans_s else "row")  # op(S) rows
    ctx, (s, b), (trans_s, trans_b) = _k_major(ctx, (s, b), (trans_s, trans_b),
                                               layout.block_size, precision)
    return _ffi("jax_blocksparse_dsd", ctx, (s, b), lists,
                block_size=np.int32(layout.block_size), trans_s=trans_s, trans_b=trans_b,
                precision=_precision_attr(precision), group_columns=columns)


def _dds_lowering(ctx, a, w, *, layout, trans_a, trans_w, precision):
    lists, columns = _line_metadata(ctx, layout, "row" if trans_w else "col")  # op(W) cols
    ctx, (a, w), (trans_a, trans_w) = _k_major(ctx, (a, w), (trans_a, trans_w),
                                               layout.block_size, precision)
    return _ffi("jax_blocksparse_dds", ctx, (a, w), lists,
                block_size=np.int32(layout.block_size), trans_a=trans_a, trans_w=trans_w,
                precision=_precision_attr(precision), group_columns=columns)


# The matmul primitives and their kernel lowerings (registered for "cuda" by `_register`).
MATMUL_LOWERINGS = ((mp.sdd_p, _sdd_lowering), (mp.dsd_p, _dsd_lowering),
                    (mp.dds_p, _dds_lowering))


# The dtypes the matmul kernels take; any other (float64) lowers to the pure-JAX
# implementation, on a GPU too.
MATMUL_DTYPES = (jnp.float32, jnp.float16, jnp.bfloat16)


def _matmul_lowering(prim, kernel_rule):
    """`kernel_rule` for the dtypes in `MATMUL_DTYPES`, the pure-JAX lowering otherwise."""
    reference = jint.lower_fun(mp._REFERENCES[prim])

    def rule(ctx, x, y, **params):
        dtype = ctx.avals_in[0].dtype
        if any(dtype == d for d in MATMUL_DTYPES):
            return kernel_rule(ctx, x, y, **params)
        _debug.pure_path(_debug.call(prim.name, ctx.avals_in), f"no kernel for dtype {dtype}")
        return reference(ctx, x, y, **params)
    return rule


# ------------------------------------------------------------------------ attention
class AttentionKernel(NamedTuple):
    """One row of the C++ attention dispatch table (cuda/attention/dispatch.cu,
    `kAttentionKernels`; the fields of cuda/attention.h's `AttentionKernel` less its
    launcher), as the extension reports it (`attention_kernels()`). `dtype`: the jnp name;
    `variant`: the value of JAX_BLOCKSPARSE_ATTN_FWD_VARIANT (forward rows) or
    ..._BWD_VARIANT (backward rows) the row serves."""
    dtype: str
    head_dim: int
    block_size: int
    backward: bool
    variant: int
    name: str
    documents: bool
    dq_workspace: bool
    persistent: bool
    softcap: bool


# The rows of the table the extension was built with: they decide which calls the fused
# kernels take (`attention_families`). Empty without the extension, where no attention call
# lowers to them (the tests that lower for "cuda" there supply the rows: tests/conftest.py,
# `attention_kernels`).
ATTENTION_KERNELS = (tuple(AttentionKernel(**row) for row in _ext.attention_kernels())
                     if _ext is not None else ())


class KernelFamily(NamedTuple):
    """What one family of the fused attention kernels takes: the values of its rows."""
    dtypes: frozenset  # jnp names
    head_dims: frozenset
    block_sizes: frozenset  # the kernels' tiles (block sizes 16 / 32 run on TILE x TILE)
    softcap: bool  # every row of the family takes a logit soft cap
    variants: frozenset  # the switch's values that pick the family


FAMILIES = ("forward", "sm90_forward", "backward", "sm90_backward", "onepass_backward")


def _family(row: AttentionKernel) -> str:
    """The family of a row: the FA2 forward and backward ("forward", "backward"), the
    FA3-design kernels, which take the mask sources beyond the shared lists (`documents`
    rows: "sm90_forward", forward variants 2 and 3; "sm90_backward", backward variants 2
    and 3), the one-pass Hopper backward (`dq_workspace` rows, backward variant 4)."""
    if row.dq_workspace:
        return "onepass_backward"
    return ("sm90_" if row.documents else "") + ("backward" if row.backward else "forward")


@functools.lru_cache(maxsize=None)
def attention_families(rows: tuple) -> dict:
    """Family name (`FAMILIES`) -> `KernelFamily` of the table's `rows` (`ATTENTION_KERNELS`).
    Persistent rows repeat plain ones (FindAttentionKernel falls back to those); a family
    without rows takes nothing."""
    by_family = {name: [] for name in FAMILIES}
    for row in rows:
        if not row.persistent:
            by_family[_family(row)].append(row)
    return {name: KernelFamily(frozenset(r.dtype for r in family),
                               frozenset(r.head_dim for r in family),
                               frozenset(r.block_size for r in family),
                               bool(family) and all(r.softcap for r in family),
                               frozenset(r.variant for r in family))
            for name, family in by_family.items()}


def _families() -> dict:
    return attention_families(ATTENTION_KERNELS)


def _no_row(family: KernelFamily, dtype, head_dim, block_size, softcap=0.0, *,
            tiled=False) -> str | None:
    """Why `family` has no row for the call (None when it has). `tiled`: the call's mask
    runs on TILE x TILE tiles (`attention_metadata.tiled_blocks`; the bits of its mask
    blocks join the element predicate), on the rows of block size TILE."""
    name = jnp.dtype(dtype).name
    if name not in family.dtypes:
        return f"dtype {name}"
    if head_dim not in family.head_dims:
        return f"head dim {head_dim}"
    if (TILE if tiled else block_size) not in family.block_sizes:
        return f"block size {block_size}"
    if softcap and not family.softcap:
        return "logits_soft_cap"
    return None


def fused_attention_unsupported(dtype, head_dim: int, block_size: int, tq: int, tk: int,
                                segments: bool, positioned: bool, mask_batch: int, *,
                                forward: bool = False, softcap: float = 0.0) -> str | None:
    """Why the fused kernels cannot run this call (None when they can), by the rows of the
    C++ dispatch table (`attention_families`), as FindAttentionKernel picks them: the
    FA3-design kernel of the phase where it runs (`sm90_forward()` with `forward=True`,
    else `sm90_backward()`) and its family has the call's row, else the FA2 kernel's. The
    FA3-design kernels take segment ids, a mask per batch entry, lengths that are not
    multiples of the block size (with at least one key), `q_offset` and block sizes 16 and
    32; the FA2 kernels none of these. A logit soft cap (`softcap > 0`) runs on the rows
    that take one: where the FA3-design family's do not, the FA2 kernels run the call
    (the C++ dispatch falls back to variant 0's rows)."""
    families = _families()
    phase = "forward" if forward else "backward"
    fa2, sm90 = families[phase], families["sm90_" + phase]
    sources = (block_size, tq, tk, segments, positioned, mask_batch)
    tiled = (tiled_blocks(block_size, False, backward=False) if forward
             else backward_tiled(block_size, mask_sources(*sources), False))  # (*)
    hopper = ((sm90_forward() if forward else sm90_backward())
              and _no_row(sm90, dtype, head_dim, block_size, tiled=tiled) is None)
    documents = hopper and (not softcap or sm90.softcap)
    why = (_no_row(sm90 if documents else fa2, dtype, head_dim, block_size, softcap,
                   tiled=tiled and documents)
           or _unsupported_sources(*sources, documents=documents))
    # (*) a block-64 call without mask sources has rows both ways: on its tiles (where
    # `attention` built them) and the FA2 backward's
    if (why is not None and hopper and not documents  # the cap alone keeps it off
            and _unsupported_sources(*sources, documents=True) is None):
        return f"logits_soft_cap on the Hopper {phase}: next (the FA2 kernels take no {why})"
    return why


def _unsupported_sources(block_size, tq, tk, segments, positioned, mask_batch, *, documents):
    """What of the call's mask sources a kernel that takes `documents` or not cannot run."""
    if (tq % block_size or tk % block_size) and (not documents or tk == 0):
        return f"lengths ({tq}, {tk}) that are not multiples of the block size"
    if segments and not documents:
        return "segment ids"
    if positioned and not documents:
        return "q_offset"
    if mask_batch != 1 and not documents:
        return "a mask per batch entry"
    return None


def _fused_attention(phase, ctx, floats, params) -> bool:
    """Whether this attention call runs the fused kernels; prints why not under DEBUG."""
    q_aval, k_aval = ctx.avals_in[:2]
    by_query_counts = ctx.avals_in[floats + att.LISTS]
    bs = params["block_size"]
    why = fused_attention_unsupported(q_aval.dtype, q_aval.shape[-1], bs, q_aval.shape[1],
                                      k_aval.shape[1], params["segments"],
                                      params["positioned"], by_query_counts.shape[0],
                                      forward=phase == "attention_fwd",
                                      softcap=params.get("softcap", 0.0))
    if why is not None:
        _debug.pure_path(f"{phase} q{list(q_aval.shape)} bs={bs}", f"no fused kernel for {why}")
    return why is None


def _kernel_operands(ctx, floats, operands, directions, params, *, tiled=False):
    """The operands of an attention custom call and their avals: the float operands,
    `kv_lengths`, `q_positions` (`[1]` or `[B]`, read with the attribute `positioned`:
    q_offset), the block lists of `directions` (1: by query, 2: both) with their leading
    batch axis (1 or B: lists per batch entry), the segment ids `[B, Tq]`, `[B, Tk]`
    zero-padded to whole tiles (the kernels read them so; placeholders `[1, 1]` without
    them: attribute `segments`). `tiled` (a mask on TILE x TILE tiles: `tiled_blocks`): the
    tile lists (`att.TILES`, 128 x 128 tiles; ids padded to whole tiles of 128) in place of
    the by-query lists (the backward inserts their by-key transpose before the ids)."""
    lists = floats + (att.TILES if tiled else att.LISTS)
    seg = floats + att.CONTEXT.index("q_segment_ids")
    pick = [*range(floats + 2), *range(lists, lists + directions * len(AttentionLists._fields))]
    values, avals = [operands[i] for i in pick], [ctx.avals_in[i] for i in pick]
    bs = TILE if tiled else params["block_size"]  # the kernel's tile
    for i in (seg, seg + 1):
        value, aval = operands[i], ctx.avals_in[i]
        if params["segments"] and aval.shape[1] % bs:
            value, aval = _pad_columns(ctx, value, aval, -(-aval.shape[1] // bs) * bs)
        values.append(value)
        avals.append(aval)
    return values, avals


def _attention_attrs(params):
    return dict(block_size=np.int32(params["block_size"]), causal=params["causal"],
                scale=np.float32(params["scale"]), segments=bool(params["segments"]),
                positioned=bool(params["positioned"]))


def _softcap_attr(params):
    """The attribute `softcap` (float32; 0: none) of the attention custom calls."""
    return dict(softcap=np.float32(params.get("softcap", 0.0)))


_forward_reference = jint.lower_fun(att.attention_reference, multiple_results=True)
_backward_reference = jint.lower_fun(att.backward_reference, multiple_results=True)


def _attention_forward_lowering(ctx, *operands, **params):
    """The forward's custom call: `_kernel_operands` with the by-query lists (after q, k, v
    the operand `sinks`: float32 `[Hq]`, or `[0]` without sinks), then the tiles' bits
    `[Bm, Hm, lines, 2 width]`. A mask of block size 16 or 32 (attribute
    `mask_block`) runs on 128 x 128 tiles (attribute `block_size` 128): its lists are the
    tile lists (`att.TILES`), the bits those of the mask blocks of each listed tile; for
    other block sizes `mask_block == block_size` and the bits are a placeholder."""
    floats = att.FLOAT_OPERANDS[att.attention_p]
    if not _fused_attention("attention_fwd", ctx, floats, params):
        return _forward_reference(ctx, *operands, **params)
    mask_block = params["block_size"]
    tiled = tiled_blocks(mask_block, False, backward=False)
    values, avals = _kernel_operands(ctx, floats, operands, 1, params, tiled=tiled)
    bits = floats + att.CONTEXT.index("tile_bits")
    value, aval = ((operands[bits], ctx.avals_in[bits]) if tiled
                   else _placeholder_bits(ctx.avals_in[bits]))
    values.append(value)
    avals.append(aval)
    ctx = ctx.replace(avals_in=avals)
    bs = TILE if tiled else mask_block  # the kernel's tile
    return jax.ffi.ffi_lowering("jax_blocksparse_attention_fwd")(
        ctx, *values, **_attention_attrs(dict(params, block_size=bs)),
        mask_block=np.int32(mask_block), **_softcap_attr(params),
        head_sections=bool(params.get("head_sections", False)))


# The tile bits' placeholder. Its two ints differ: XLA turns a constant whose elements are
# all equal into a broadcast, a kernel launched on every call, and keeps any other in memory.
PLACEHOLDER_BITS = np.arange(2, dtype=np.int32).reshape(1, 1, 1, 2)


def _placeholder_bits(aval):
    """`PLACEHOLDER_BITS` (`[1, 1, 1, 2]` int32) in place of the tile bits (`aval`'s) where
    a kernel does not read them, so that XLA drops the tile lists nothing else reads (a
    block-64 call's are built for the backward on tiles: `backward_tile_context`):
    (value, aval)."""
    return jint.ir_constant(PLACEHOLDER_BITS), aval.update(shape=PLACEHOLDER_BITS.shape)


def _pad_columns(ctx, value, aval, width):
    """`value` ([N, T] int32) zero-padded to [N, width] inside a lowering: (value, aval)."""
    out = aval.update(shape=(aval.shape[0], width))
    sub = ctx.replace(avals_in=[aval], avals_out=[out])
    pad = jint.lower_fun(lambda x: jnp.pad(x, ((0, 0), (0, width - x.shape[1]))),
                         multiple_results=False)
    return pad(sub, value)[0], out


def _key_tile_operands(ctx, values, avals, rk):
    """The by-key tile lists and their bits (`attention_metadata.key_tiles`, `rk` key
    tiles) of the by-query tile lists and bits `values` (five operands, `avals`), computed
    inside the lowering: (values, avals) of the five."""
    def transpose(counts, partial, lists, order, bits):
        tiles = key_tiles(jnp, TileLists(AttentionLists(counts, partial, lists, order), bits), rk)
        return [*tiles.lists, tiles.bits]
    outs = jax.eval_shape(transpose, *(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals))
    out_avals = [avals[0].update(shape=o.shape, dtype=o.dtype, weak_type=False) for o in outs]
    sub = ctx.replace(avals_in=list(avals), avals_out=out_avals)
    return list(jint.lower_fun(transpose, multiple_results=True)(sub, *values)), out_avals


# Head dims without backward kernels that run zero-padded on a wider one's (issue 19 item 3):
# zero columns of q and k leave the scores, so P and lse, unchanged; those of v, o and dO
# add nothing to dP = dO Vᵀ or delta = rowsum(dO ∘ O), and give zero columns of dq, dk,
# dv, sliced away. `scale` stays the call's (1/sqrt(96) by default). The cost: the products
# of the wider head dim (4/3 at 96) and the padding copies.
BACKWARD_PADDED_HEAD_DIMS = {96: 128}


def _backward_padded_to(ctx, params) -> int | None:
    """The head dim this backward call runs zero-padded to (`BACKWARD_PADDED_HEAD_DIMS`),
    when the fused kernels lack its own and take the wider one; else None."""
    q_aval, k_aval = ctx.avals_in[:2]
    d = q_aval.shape[-1]
    wide = BACKWARD_PADDED_HEAD_DIMS.get(d)
    floats = att.FLOAT_OPERANDS[att.attention_bwd_p]
    why = lambda head_dim: fused_attention_unsupported(
        q_aval.dtype, head_dim, params["block_size"], q_aval.shape[1], k_aval.shape[1],
        params["segments"], params["positioned"], ctx.avals_in[floats + att.LISTS].shape[0],
        softcap=params.get("softcap", 0.0))
    if wide is None or why(d) != f"head dim {d}" or why(wide) is not None:
        return None
    return wide


def padded_backward(wide, q, k, v, o, lse, d_o, d_lse, sinks, *ctx, **params):
    """`attention_bwd_p`'s local twin on q, k, v, o, dO zero-padded to head dim `wide`,
    its dq, dk, dv sliced back (`BACKWARD_PADDED_HEAD_DIMS`)."""
    d = q.shape[-1]
    pad = lambda x: jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, wide - d)])
    dq, dk, dv = _partitioning.LOCAL[att.attention_bwd_p].bind(
        pad(q), pad(k), pad(v), pad(o), lse, pad(d_o), d_lse, sinks, *ctx, **params)
    return [dq[..., :d], dk[..., :d], dv[..., :d]]


def _attention_backward_lowering(ctx, *operands, **params):
    """The backward's custom call: `_kernel_operands` with both directions of the lists,
    then the bits of each direction's entries; results dq, dk, dv and a float32 workspace
    `[B, Hq, 2, ceil(Tq / bs) * bs]` (cuda/attention.h: the FA2 backward's delta, the Hopper
    backward's lse and delta rows padded to whole tiles). A mask of block size 16 or 32,
    or 64 with mask sources or tile lists built (`backward_tiled`; attribute `mask_block`;
    the Hopper backward) runs on 128 x 128 tiles (attribute `block_size` 128): the by-query
    lists are the tile lists (`att.TILES`), the by-key ones their transpose
    (`_key_tile_operands`), each with its bits (and where the context holds no tile lists
    for it, as can happen under vmap, the pure-JAX backward); otherwise
    `mask_block == block_size` and both bits are placeholders."""
    floats = att.FLOAT_OPERANDS[att.attention_bwd_p]
    wide = _backward_padded_to(ctx, params)
    if wide is not None:  # the wider head dim's kernels (this rule again, at `wide`)
        return jint.lower_fun(functools.partial(padded_backward, wide),
                              multiple_results=True)(ctx, *operands, **params)
    if not _fused_attention("attention_bwd", ctx, floats, params):
        return _backward_reference(ctx, *operands, **params)
    mask_block = params["block_size"]
    q_aval = ctx.avals_in[0]
    tq, tk = q_aval.shape[1], ctx.avals_in[1].shape[1]
    sources = mask_sources(mask_block, tq, tk, params["segments"], params["positioned"],
                           ctx.avals_in[floats + att.LISTS].shape[0])  # lists per batch?
    bits = floats + att.CONTEXT.index("tile_bits")
    lists, tile_counts = (ctx.avals_in[floats + i].shape for i in (att.LISTS, att.TILES))
    built = tile_counts == (*lists[:2], -(-tq // TILE))  # else placeholders (no tile lines)
    # (a call without mask sources has rows both ways; the tiles' only where the Hopper
    # backward has them for its dtype, head dim and cap)
    built = built and _no_row(_families()["sm90_backward"], q_aval.dtype, q_aval.shape[-1],
                              mask_block, params.get("softcap", 0.0), tiled=True) is None
    tiled = backward_tiled(mask_block, sources, built)
    if tiled and not built:  # never placeholders as lists
        _debug.pure_path(f"attention_bwd q{list(q_aval.shape)} bs={mask_block}",
                         f"no tile lists {list(tile_counts)} beside the lists {list(lists)}")
        return _backward_reference(ctx, *operands, **params)
    if tiled:
        values, avals = _kernel_operands(ctx, floats, operands, 1, params, tiled=True)
        tiles = floats + att.TILES
        picked = [*range(tiles, tiles + len(AttentionLists._fields)), bits]
        rk = -(-ctx.avals_in[1].shape[1] // TILE)
        keys, key_avals = _key_tile_operands(ctx, [operands[i] for i in picked],
                                             [ctx.avals_in[i] for i in picked], rk)
        values[-2:-2], avals[-2:-2] = keys[:-1], key_avals[:-1]  # before the segment ids
        values += [operands[bits], keys[-1]]
        avals += [ctx.avals_in[bits], key_avals[-1]]
    else:
        values, avals = _kernel_operands(ctx, floats, operands, 2, params)
        placeholder = _placeholder_bits(ctx.avals_in[bits])
        values += [placeholder[0]] * 2
        avals += [placeholder[1]] * 2
    sinks = att.SINKS[att.attention_bwd_p]  # not an operand of the kernel: P reads lse
    del values[sinks], avals[sinks]
    b, hq, _ = ctx.avals_in[4].shape  # lse
    bs = TILE if tiled else mask_block  # the kernel's tile
    workspace = ctx.avals_in[4].update(shape=(b, hq, 2, -(-tq // bs) * bs),
                                       dtype=np.dtype(np.float32), weak_type=False)
    # the one-pass backward's workspaces (onepass_workspace_shapes), else [0]
    d = q_aval.shape[-1]
    beyond = tiled or tq % bs != 0 or tk % bs != 0  # what the one-pass kernel does not take
    onepass = onepass_backward(q_aval.dtype, d, bs, params.get("softcap", 0.0), beyond)
    accum_shape, sem_shape = (onepass_workspace_shapes(b, hq, tq, d, params.get(
        "onepass_dq_slots", 2)) if onepass else ((0,), (0,)))
    dq_accum = q_aval.update(shape=accum_shape, dtype=np.dtype(np.float32), weak_type=False)
    dq_sem = q_aval.update(shape=sem_shape, dtype=np.dtype(np.int32), weak_type=False)
    ctx = ctx.replace(avals_in=avals, avals_out=[*ctx.avals_out, workspace, dq_accum, dq_sem])
    dq, dk, dv, *_ = jax.ffi.ffi_lowering("jax_blocksparse_attention_bwd")(
        ctx, *values, **_attention_attrs(dict(params, block_size=bs)),
        mask_block=np.int32(mask_block), **_softcap_attr(params))
    return dq, dk, dv


class DecodeKernel(NamedTuple):
    """One row of the C++ decode dispatch table (cuda/attention/decode.cu,
    `kAttentionDecodeKernels`, less its launcher), as the extension reports it
    (`decode_kernels()`): q's dtype, k's and v's (q's, or an fp8 cache read with float32
    [Hkv] scales), the head dim, the name JAX_BLOCKSPARSE_DEBUG prints."""
    dtype: str
    kv_dtype: str
    head_dim: int
    name: str


# The rows of the decode table the extension was built with: they decide which calls the
# decode kernel takes (`decode_unsupported`). Empty without the extension (the tests that
# lower for "cuda" there supply them: tests/conftest.py, `decode_kernels`).
DECODE_KERNELS = (tuple(DecodeKernel(**row) for row in _ext.decode_kernels())
                  if _ext is not None else ())

# The decode kernel (cuda/attention/decode.cu): short queries against a KV cache. Its limits
# (cuda/attention_decode.h: kDecodeTileKeys, kDecodeMaxQueries, kDecodeSplitCapacity; the
# extension's `decode_limits`, which tests/test_build.py checks them against) route on
# every platform; the rest tunes the split count.
DECODE = {
    "tile_keys": 16,  # block sizes and page sizes: multiples of this
    # (query, head) rows of a CTA in each form of the partial kernel (decode_form; cuda:
    # DecodeForm): 16-row CTAs (kRows), the 64-row form (JAX_BLOCKSPARSE_DECODE_SHARED_TILES),
    # GQA-packed 128- and 64-row wgmma tiles (sm_90a; JAX_BLOCKSPARSE_DECODE_PACKED=0: off)
    "form_rows": {"warp_tiles": 16, "shared_tiles": 64, "packed": 128, "packed64": 64},
    # queries per sequence (cuda: kDecodeMaxQueries); `attention.DECODE_MAX_QUERIES` routes
    # fewer here, the crossover with the forward kernel measured by decode.py --sweep
    "max_queries": 64,
    "split_capacity": 1024,  # listed blocks one split holds (cuda: kDecodeSplitCapacity)
    # CTAs to aim for; None: one wave of the kernel's resident CTAs on the device
    # (decode_resident_ctas: best in the H200 sweep of benchmarks/RESULTS.md, 2026-12-04)
    "target_ctas": None,
    "unknown_device_ctas": 4 * 132,  # the aim where that count is unknown
    "min_blocks_per_split": 8,  # splits of fewer blocks cost more than they overlap
    "max_splits": 128,
}


def decode_unsupported(dtype, head_dim: int, block_size: int,
                       page_size: int | None, kv_dtype=None, tq: int = 1) -> str | None:
    """Why the decode kernel cannot run this call (None when it can); `dtype` is q's,
    `kv_dtype` k's and v's (None: q's), `tq` the queries per sequence; by the rows of the
    decode table (`DECODE_KERNELS`) and its limits (`DECODE`). A logit soft cap changes
    nothing here: the kernel takes one in every case it runs."""
    if tq > DECODE["max_queries"]:
        return f"Tq {tq} (more than {DECODE['max_queries']} queries)"
    name = jnp.dtype(dtype).name
    kv = name if kv_dtype is None else jnp.dtype(kv_dtype).name
    rows = [r for r in DECODE_KERNELS if r.dtype == name]
    if not rows:
        return f"dtype {name}"
    rows = [r for r in rows if r.kv_dtype == kv]
    if not rows:
        return f"k, v dtype {kv}"
    if not any(r.head_dim == head_dim for r in rows):
        return f"head dim {head_dim}"
    if block_size % DECODE["tile_keys"]:
        return f"block size {block_size} (not a multiple of {DECODE['tile_keys']})"
    if page_size is not None and page_size % DECODE["tile_keys"]:
        return f"page size {page_size} (not a multiple of {DECODE['tile_keys']})"
    return None


def decode_form(dtype, kv_dtype, *, batch: int, tq: int, tk: int, hq: int, hkv: int,
                head_dim: int, block_size: int, mask_heads: int, width: int,
                page_size: int | None) -> str:
    """The form of the decode kernel a call of this shape runs on the current CUDA device
    (a key of DECODE["form_rows"]), as cuda/attention/decode.cu (DecodeFormOf) decides it:
    "packed" (128-row tiles) or "packed64" (64-row tiles) where the GQA-packed Hopper
    kernel takes the call (more than 16 (query, head) rows per kv head; not under
    JAX_BLOCKSPARSE_DECODE_PACKED=0), "shared_tiles" under
    JAX_BLOCKSPARSE_DECODE_SHARED_TILES=1 for more than 16 such rows, else "warp_tiles";
    "warp_tiles" without the extension or for a q dtype the kernel does not take (no decode
    kernel runs there).
    `dtype`: q's; `kv_dtype`: k's and v's; `page_size`: a paged cache's (None:
    contiguous)."""
    if _ext is None or not any(r.dtype == jnp.dtype(dtype).name for r in DECODE_KERNELS):
        return "warp_tiles"
    splits = max(-(-width // DECODE["split_capacity"]), 1)  # the least a call has
    return _ext.decode_form(batch, tq, tk, hq, hkv, head_dim, block_size, mask_heads, width,
                            page_size or 0, jnp.dtype(kv_dtype) == jnp.dtype(dtype), splits)


@functools.lru_cache(maxsize=None)
def decode_resident_ctas(dtype, kv_dtype, head_dim: int, form: str) -> int:
    """CTAs of the decode kernel in `form` (decode_form) for q's `dtype` and the cache's
    `kv_dtype` resident at once on the current CUDA device (its occupancy times its SMs);
    0 when unknown."""
    if _ext is None:
        return 0
    return _ext.decode_resident_ctas(jnp.dtype(dtype).name, jnp.dtype(kv_dtype).name,
                                     head_dim, form)


def decode_splits(batch: int, hq: int, hkv: int, mask_heads: int, tq: int, width: int,
                  resident: int = 0, form: str = "warp_tiles") -> int:
    """How many CTAs share one row's key blocks (split-KV) in the kernel's `form`
    (decode_form): as many as fit the CTAs in one wave (`resident`, from
    decode_resident_ctas; a partial second wave cost the H200 up to 18% of the fp8 cache's
    rate: benchmarks/RESULTS.md), at least `min_blocks_per_split` of the row's (at most
    `width`) blocks per split, and at most `split_capacity` blocks per split."""
    group = hq // hkv
    per_cta = group if mask_heads == 1 else 1  # query heads of a CTA
    chunks = -(-per_cta * tq // DECODE["form_rows"][form])
    ctas = max(batch * hkv * (group // per_cta) * chunks, 1)
    target = DECODE["target_ctas"] or resident or DECODE["unknown_device_ctas"]
    splits = min(target // ctas, width // DECODE["min_blocks_per_split"], DECODE["max_splits"])
    return max(splits, -(-width // DECODE["split_capacity"]), 1)


_decode_reference = jint.lower_fun(dec.decode_reference, multiple_results=True)


def _attention_decode_lowering(ctx, *operands, block_size, causal, scale, paged,
                               softcap=0.0):
    params = dict(block_size=block_size, causal=causal, scale=scale, paged=paged,
                  softcap=softcap)
    q_aval, k_aval = ctx.avals_in[:2]
    why = decode_unsupported(q_aval.dtype, q_aval.shape[-1], block_size,
                             k_aval.shape[1] if paged else None, k_aval.dtype, q_aval.shape[1])
    if why is not None:
        _debug.pure_path(f"attention_decode q{list(q_aval.shape)} bs={block_size}",
                         f"no decode kernel for {why}")
        return _decode_reference(ctx, *operands, **params)
    b, tq, hq, d = q_aval.shape
    _, mask_heads, _, width = ctx.avals_in[7].shape
    hkv = k_aval.shape[2]
    tk = k_aval.shape[1] * (ctx.avals_in[8].shape[1] if paged else 1)
    form = decode_form(q_aval.dtype, k_aval.dtype, batch=b, tq=tq, tk=tk, hq=hq, hkv=hkv,
                       head_dim=d, block_size=block_size, mask_heads=mask_heads, width=width,
                       page_size=k_aval.shape[1] if paged else None)
    resident = decode_resident_ctas(q_aval.dtype, k_aval.dtype, d, form)
    splits = decode_splits(b, hq, hkv, mask_heads, tq, width, resident, form)
    f32 = np.dtype(np.float32)
    workspace = [q_aval.update(shape=(b, hq, tq, splits, d), dtype=f32, weak_type=False),
                 q_aval.update(shape=(b, hq, tq, splits), dtype=f32, weak_type=False)]
    ctx = ctx.replace(avals_out=[*ctx.avals_out, *workspace])
    o, lse, _, _ = jax.ffi.ffi_lowering("jax_blocksparse_attention_decode")(
        ctx, *operands, block_size=np.int32(block_size), causal=causal,
        scale=np.float32(scale), paged=paged, softcap=np.float32(softcap))
    return o, lse


def _block_lists_lowering(ctx, kind, *, width):
    """`lp.block_lists_p` on CUDA: the kernel (cuda/attention/lists.cu), but for empty
    operands and under SPMD partitioning (the custom call has no partitioning rule) the
    jax.numpy code, which XLA partitions."""
    if 0 in ctx.avals_in[0].shape or jint.partitioned_lowering(ctx):
        return lp.REFERENCE_LOWERING(ctx, kind, width=width)
    return jax.ffi.ffi_lowering("jax_blocksparse_block_lists")(ctx, kind, width=np.int64(width))


def _register():
    targets = _ext.registrations()
    for name, capsule in targets.items():
        jint.register_ffi_target(name, capsule, platform="CUDA")
    local = _partitioning.LOCAL  # the kernels lower each primitive's per-device twin
    for prim, rule in MATMUL_LOWERINGS:
        jint.register_lowering_rule(local[prim], _matmul_lowering(prim, rule), "cuda")
    if "jax_blocksparse_attention_fwd" in targets:
        jint.register_lowering_rule(local[att.attention_p], _attention_forward_lowering, "cuda")
        jint.register_lowering_rule(local[att.attention_bwd_p], _attention_backward_lowering,
                                    "cuda")
    if "jax_blocksparse_attention_decode" in targets:
        jint.register_lowering_rule(local[dec.attention_decode_p], _attention_decode_lowering,
                                    "cuda")
    if "jax_blocksparse_block_lists" in targets:
        jint.register_lowering_rule(lp.block_lists_p, _block_lists_lowering, "cuda")


if cuda_built():
    _register()
