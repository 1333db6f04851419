"""The Hopper attention backward in the FlashAttention-3 design (cuda/attention/bwd_sm90.cu),
forced by JAX_BLOCKSPARSE_ATTN_BWD_VARIANT=2 (products overlapping the elementwise work
inside each warpgroup; every case) or 3 (without the overlap; a subset), and the one-pass
backward (cuda/attention/bwd_sm90_onepass.cu) forced by 4 (every case; dQ summed across
CTAs under semaphores, so determinism is also checked over several runs of larger cases)
on an sm_90 GPU: dq, dk, dv (and o, lse) against
the float64 reference on fresh random inputs (fixed seeds), with cotangents of both o and
the returned lse, bf16 and f16, block size 128, head dim 128 (64 on a few cases), over
causal and non-causal local / strided / random / dense layouts with empty query rows and
empty key columns, a single block, GQA (8 query heads on 2), per-head masks, a traced
BlockMask, scales other than 1/sqrt(D) (negative too), Tq != Tk with causality (rows
without keys), kv_lengths that are not multiples of the block (0 included) with NaN planted
in k and v past them (every gradient must stay finite and bitwise equal to the clean run;
dk, dv rows past kv_lengths are 0); every result bitwise equal over two runs.

Then every mask source of the Hopper forward (the block-128 `DOC_CASES` of
test_gpu_attention_sm90.py, checked by its `check_docs`): packed documents (segment ids,
causal layouts), masks per batch entry (a traced BlockMask with Bm = B), Tq, Tk that are
not multiples of the block size (partial last tiles: 1000, 1100, 50, ...), q_offset with
and without segment ids, kv_lengths with NaN planted past them, GQA, head dims 64 and 128:
dq, dk, dv against the float64 reference, bitwise equal run to run and with the NaN.

Each case runs in a subprocess with JAX_BLOCKSPARSE_DEBUG=1, and the test asserts that the
debug line of every backward launch names the variant's fa3 backward kernel (a silent
fallback to the FA2 backward fails). One test also forces the FA3-design forward (variant
2) with it. Block size 64 has no rows of the variant: it runs the default backward
(checked too), and for the mask sources the FA2 backward does not take the Hopper backward
on 128 x 128 tiles with the blocks' bits. Head dim 256 runs its own Hopper
backward (`D256_CASES` and every mask source's head-dim-256 cases:
cuda/attention/bwd_sm90_d256.cu), and the pure-JAX backward under
JAX_BLOCKSPARSE_ATTN_BWD_D256=0 (no fused backward launch).

Then masks of block size 16 and 32 (the `FINE_CASES` of test_gpu_attention_sm90.py at head
dims 64 and 128: the Hopper backward on 128 x 128 tiles, the tile lists by query and by key
with their bits; causal, random masks with empty rows and columns, GQA, kv_lengths,
segment ids, partial last tiles, q_offset, traced and per-batch masks): dq, dk, dv against
the float64 reference, deterministic, and every result (gradients too) bitwise unchanged
with NaN planted in k and v at keys that no query attends (unlisted block columns inside
listed tiles, keys past kv_lengths). Head dim 96 runs the head dim 128 backward on
zero-padded operands (`_cuda.BACKWARD_PADDED_HEAD_DIMS`), 256 its own kernels (the
head-dim-256 tests below; the pure-JAX backward under JAX_BLOCKSPARSE_ATTN_BWD_D256=0).

Then a logit soft cap (issue 21) under variants 2 and 3: capped calls with segment ids,
block size 16 with partial last tiles, block size 32 with segment ids (the `FWD_CASES` of
test_attention_sinks_softcap.py: o, lse, dq, dk, dv against the float64 reference with
the cap) run the variant's fa3 backward.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_blocksparse as jbs
from reference import (ATTENTION_TOLERANCE, LSE_TOLERANCE, attention64, attention_mask64, f64,
                       kernels_by_case, lse_err, mark_case, random, rel_err, run_python)
from test_gpu_attention_sm90 import DOC_CASES, FINE_CASES, case_id, chunks
from test_matmul import poison

pytestmark = pytest.mark.gpu

FA3_BWD = {"2": "fa3_backward(wgmma, tma, ws, overlap)", "3": "fa3_backward(wgmma, tma, ws)",
           "4": "fa3_backward(one pass, deterministic dq)",
           "2 d256": "fa3_backward(wgmma, tma, ws, overlap, d256 64-row CTAs)",
           "3 d256": "fa3_backward(wgmma, tma, ws, d256 64-row CTAs)"}
DTYPES = {"bf16": jnp.bfloat16, "f16": jnp.float16}
BS = 128


def random_mask(seed, shape, density, empty_row=True, empty_col=True):
    """A random block mask; with `empty_row` / `empty_col`, one query block row / one key
    block column (per head) is empty."""
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < density
    if empty_row:
        mask[..., rng.integers(shape[-2]), :] = False
    if empty_col:
        mask[..., :, rng.integers(shape[-1])] = False
    return mask


def one_block(rows, cols, r, c):
    mask = np.zeros((rows, cols), bool)
    mask[r, c] = True
    return mask


CASES = {
    # name: (block mask (numpy, [Rq, Rk] or [Hq, Rq, Rk]), causal, B, Tq, Tk, Hq, Hkv,
    #        kv_lengths, traced (a BlockMask built inside jit instead of a static Layout)[,
    #        head dim: 128 unless given])
    "local_causal": (lambda: jbs.layouts.local(2048, BS, 512).mask, True,
                     2, 2048, 2048, 4, 4, None, False),
    "strided_causal": (lambda: jbs.layouts.strided(2048, BS, 512).mask, True,
                       2, 2048, 2048, 4, 4, None, False),
    "dense_noncausal": (lambda: np.ones((8, 8), bool), False, 2, 1024, 1024, 4, 4, None, False),
    "random_empty_rows_cols": (lambda: random_mask(21, (8, 8), 0.4), False,
                               2, 1024, 1024, 4, 4, None, False),
    "random_empty_rows_cols_causal": (lambda: random_mask(22, (8, 8), 0.6), True,
                                      2, 1024, 1024, 4, 4, None, False),
    "single_block": (lambda: one_block(8, 8, 5, 2), False, 2, 1024, 1024, 2, 2, None, False),
    # sparse layouts with a global line (density 0.23): key block 0 in every query block's
    # list (the default backward runs variant 4, its dQ slot 1), query block 0 listing
    # every key block (variant 4 with 4 dQ slots: _cuda.onepass_dq_slots)
    "diagonal_global_column": (lambda: np.eye(8, dtype=bool) | (np.arange(8) == 0)[None, :],
                               False, 2, 1024, 1024, 4, 2, None, False),
    "diagonal_global_row": (lambda: np.eye(8, dtype=bool) | (np.arange(8) == 0)[:, None],
                            False, 2, 1024, 1024, 4, 2, None, False),
    "single_block_diagonal": (lambda: one_block(8, 8, 3, 3), True,
                              2, 1024, 1024, 2, 1, None, False),
    "one_block_sequence": (lambda: np.ones((1, 1), bool), True, 2, 128, 128, 2, 1, None, False),
    "gqa4_local_causal": (lambda: jbs.layouts.local(1024, BS, 384).mask, True,
                          2, 1024, 1024, 8, 2, None, False),
    "gqa4_per_head_causal": (lambda: random_mask(23, (8, 8, 8), 0.5), True,
                             2, 1024, 1024, 8, 2, None, False),
    "gqa4_per_head_noncausal": (lambda: random_mask(24, (8, 8, 8), 0.4), False,
                                1, 1024, 1024, 8, 2, None, False),
    "per_head_noncausal": (lambda: random_mask(25, (4, 8, 8), 0.5), False,
                           2, 1024, 1024, 4, 4, None, False),
    "tq_lt_tk_causal": (lambda: np.ones((8, 16), bool), True, 2, 1024, 2048, 4, 4, None, False),
    "tq_gt_tk_causal": (lambda: np.ones((16, 8), bool), True, 2, 2048, 1024, 4, 2, None, False),
    "kv_lengths": (lambda: random_mask(26, (8, 8), 0.7, False, False), False,
                   3, 1024, 1024, 4, 2, [1000, 77, 0], False),
    "kv_lengths_causal": (lambda: jbs.layouts.local(1024, BS, 512).mask, True,
                          2, 1024, 1024, 4, 4, [1024, 555], False),
    "kv_lengths_gqa4_per_head_causal": (lambda: random_mask(27, (8, 8, 8), 0.6, False, False),
                                        True, 2, 1024, 1024, 8, 2, [901, 250], False),
    "kv_lengths_tq_lt_tk_per_head": (lambda: random_mask(28, (4, 8, 16), 0.6, False), True,
                                     2, 1024, 2048, 4, 4, [1900, 1283], False),
    "traced_causal_per_head": (lambda: random_mask(29, (4, 8, 8), 0.5), True,
                               2, 1024, 1024, 4, 2, None, True),
    "traced_kv_lengths": (lambda: random_mask(30, (8, 8), 0.6), False,
                          2, 1024, 1024, 4, 4, [700, 1024], True),
    "d64_local_causal": (lambda: jbs.layouts.local(2048, BS, 512).mask, True,
                         2, 2048, 2048, 4, 4, None, False, 64),
    "d64_random_empty_rows_cols": (lambda: random_mask(31, (8, 8), 0.5), False,
                                   2, 1024, 1024, 4, 2, None, False, 64),
    "d64_tq_gt_tk_causal": (lambda: np.ones((16, 8), bool), True,
                            2, 2048, 1024, 4, 2, None, False, 64),
    "d64_gqa4_per_head_kv_lengths": (lambda: random_mask(32, (8, 8, 8), 0.6, False), True,
                                     3, 1024, 1024, 8, 2, [1024, 333, 0], False, 64),
    "scale_0.3_causal": (lambda: jbs.layouts.local(1024, BS, 512).mask, True,
                         2, 1024, 1024, 4, 4, None, False),
    "negative_scale_causal_kv_lengths": (lambda: jbs.layouts.local(1024, BS, 512).mask, True,
                                         2, 1024, 1024, 4, 4, [1024, 600], False),
}
# Head dim 256 on its own kernels (cuda/attention/bwd_sm90_d256.cu: 64-row CTAs, P and dS
# exchanged between the consumer warpgroups; JAX_BLOCKSPARSE_ATTN_BWD_D256=0: none)
# (`test_fa3_backward_d256`): many key blocks a query block (the dQ kernel's 64-key stages
# wrapping its ring), GQA, empty rows and columns, per-head masks, kv_lengths (0 too) with
# NaN past them, Tq != Tk, a traced mask.
D256_CASES = {
    "d256_local_causal_gqa4": (lambda: jbs.layouts.local(1024, BS, 384).mask, True,
                               2, 1024, 1024, 8, 2, None, False, 256),
    "d256_random_empty_rows_cols": (lambda: random_mask(81, (8, 8), 0.5), False,
                                    2, 1024, 1024, 4, 4, None, False, 256),
    "d256_dense_long": (lambda: np.ones((16, 16), bool), False,
                        1, 2048, 2048, 2, 1, None, False, 256),
    "d256_per_head_causal_kv_lengths": (lambda: random_mask(82, (4, 8, 8), 0.6, False, False),
                                        True, 3, 1024, 1024, 4, 2, [1024, 333, 0], False, 256),
    "d256_tq_lt_tk_traced": (lambda: random_mask(83, (8, 16), 0.6), True,
                             2, 1024, 2048, 4, 4, [1900, 2048], True, 256),
}
CASES_BY_NAME = {**CASES, **D256_CASES}
SCALES = {"scale_0.3_causal": 0.3, "negative_scale_causal_kv_lengths": -0.06}  # else 1/sqrt(D)
NAMES = ("o", "lse", "dq", "dk", "dv")


def build(name, dtype):
    """(jitted forward + backward, its inputs, kv_lengths, the float64 o, lse, dq, dk, dv)."""
    make_mask, causal, b, tq, tk, hq, hkv, kv, traced, *d = CASES_BY_NAME[name]
    D = d[0] if d else 128
    scale = SCALES.get(name, 1 / np.sqrt(D))
    block_mask = make_mask()
    layout = jbs.Layout(block_mask, BS)
    kv = np.full(b, tk) if kv is None else np.asarray(kv)
    rng = np.random.default_rng([list(CASES_BY_NAME).index(name), 91])
    q, do = random(rng, (b, tq, hq, D), dtype), random(rng, (b, tq, hq, D), dtype)
    k, v = random(rng, (b, tk, hkv, D), dtype), random(rng, (b, tk, hkv, D), dtype)
    dlse = random(rng, (b, hq, tq), jnp.float32)  # a cotangent on the returned lse

    def f(q, k, v, do, dlse, kv_lengths, mask):
        m = jbs.BlockMask.from_mask(mask, BS) if traced else layout

        def fwd(q, k, v):
            return jbs.attention(q, k, v, m, causal=causal, scale=float(scale),
                                 kv_lengths=kv_lengths, return_lse=True)
        (o, lse), vjp = jax.vjp(fwd, q, k, v)
        return (o, lse, *vjp((do, dlse)))

    allowed = attention_mask64(layout, causal, tq, tk, kv)
    want = attention64(q, k, v, allowed, scale, do, dlse)
    args = (q, k, v, do, dlse, jnp.asarray(kv, jnp.int32), jnp.asarray(block_mask))
    return jax.jit(f), args, kv, want


def plant_nan(x, kv):
    """x [B, T, H, D] with NaN at every key position at or past kv[b]."""
    x = np.array(x)
    for b, n in enumerate(kv):
        x[b, n:] = np.nan
    return jnp.asarray(x)


def check(name, dtype, platform):
    f, args, kv, want = build(name, dtype)
    poison(platform)
    got = f(*args)
    for what, g, w in zip(NAMES, got, want):
        if what == "lse":
            assert g.dtype == jnp.float32
            assert lse_err(g, w) < LSE_TOLERANCE, what
            continue
        assert g.dtype == dtype, what
        assert np.all(np.isfinite(f64(g))), f"{what}: not finite"
        err = rel_err(g, w)
        assert err < ATTENTION_TOLERANCE[dtype], (what, err)
        assert np.all(f64(g)[w == 0] == 0), f"{what}: not zero where nothing contributes"
    poison(platform)
    again = f(*args)
    for what, g, a in zip(NAMES, got, again):
        np.testing.assert_array_equal(f64(a), f64(g), err_msg=f"{what}: not deterministic")
    tk = args[1].shape[1]
    for what, g in zip(("dk", "dv"), got[3:]):  # rows past kv_lengths: exactly 0
        for b, n in enumerate(kv):
            assert np.all(f64(g)[b, n:] == 0), f"{what}: rows past kv_lengths[{b}] not 0"
    if np.any(kv < tk):  # NaN past kv_lengths changes nothing
        q, k, v, *rest = args
        poison(platform)
        nan = f(q, plant_nan(k, kv), plant_nan(v, kv), *rest)
        for what, g, n in zip(NAMES, got, nan):
            assert not np.any(np.isnan(f64(n))), f"{what}: NaN past kv_lengths leaked"
            np.testing.assert_array_equal(f64(n), f64(g), err_msg=f"{what}: NaN past kv_lengths")


def run_cases(cases):
    """Checks each (case name, dtype name) after a `mark_case` line on stderr (called in a
    subprocess with the variant forced)."""
    platform = jax.devices()[0].platform
    for name, dtype in cases:
        mark_case(name + " " + dtype)
        check(name, DTYPES[dtype], platform)


def sm90():
    return getattr(jax.devices()[0], "compute_capability", None) == "9.0"


def assert_backward_is_fa3(stderr, cases, variant):
    logs = kernels_by_case(stderr)
    for case in cases:
        launches = logs.get(" ".join(case), [])
        backward = [kernel for op, kernel in launches if op == "attention_bwd"]
        assert backward, (case, launches)
        for kernel in backward:
            assert kernel == FA3_BWD[variant], (case, kernel)
    return logs


VARIANT3_CASES = ["local_causal", "random_empty_rows_cols", "gqa4_per_head_causal",
                  "tq_gt_tk_causal", "kv_lengths", "kv_lengths_gqa4_per_head_causal",
                  "traced_kv_lengths", "d64_local_causal", "d64_gqa4_per_head_kv_lengths"]


@pytest.mark.parametrize("variant,name", [("2", n) for n in CASES] +
                         [("3", n) for n in VARIANT3_CASES] + [("4", n) for n in CASES])
def test_fa3_backward(variant, name):
    if not sm90():
        pytest.skip("the FA3-design backward needs an sm_90 GPU (H100 / H200)")
    cases = [(name, "bf16"), (name, "f16")]
    stderr = run_python(f"import test_gpu_attention_bwd_sm90 as t; t.run_cases({cases!r})",
                        JAX_BLOCKSPARSE_DEBUG="1",
                        JAX_BLOCKSPARSE_ATTN_BWD_VARIANT=variant).stderr
    assert_backward_is_fa3(stderr, cases, variant)


@pytest.mark.parametrize("variant", ["", "4"])
def test_default_backward_by_layout(variant):
    """Unset (the default), where `_cuda.SM90_BACKWARD_DEFAULT` is 4, and =4 the backward
    runs variant 4, the one-pass kernel, on every mask: with 4 dQ slots on a sparse static
    layout with a global query row (diagonal_global_row, `_cuda.onepass_dq_slots`), 2 on
    the others (a local causal layout, a global key column, a traced mask). Values as
    test_fa3_backward checks them."""
    if not sm90():
        pytest.skip("the FA3-design backward needs an sm_90 GPU (H100 / H200)")
    from jax_blocksparse import _cuda
    from jax_blocksparse.attention_metadata import line_stats
    cases = [("local_causal", "bf16"), ("diagonal_global_column", "f16"),
             ("diagonal_global_row", "bf16"), ("traced_causal_per_head", "bf16")]
    for name, _ in cases[:3]:
        make_mask, causal, _, tq, tk = CASES[name][:5]
        stats = line_stats(jbs.Layout(make_mask(), BS), causal, tq, tk)
        slots = 4 if name == "diagonal_global_row" else 2
        assert _cuda.onepass_dq_slots(stats) == slots, (name, stats)
    stderr = run_python(f"import test_gpu_attention_bwd_sm90 as t; t.run_cases({cases!r})",
                        JAX_BLOCKSPARSE_DEBUG="1",
                        JAX_BLOCKSPARSE_ATTN_BWD_VARIANT=variant).stderr
    onepass = variant == "4" or _cuda.SM90_BACKWARD_DEFAULT == 4
    for case in cases:
        assert_backward_is_fa3(stderr, [case], "4" if onepass else "2")


@pytest.mark.parametrize("variant", ["2", "4"])
def test_fa3_backward_with_fa3_forward(variant):
    """Both Hopper kernels forced: the forward variant 2 and the backward variant 2 (or 4)."""
    if not sm90():
        pytest.skip("the FA3-design kernels need an sm_90 GPU (H100 / H200)")
    cases = [("local_causal", "bf16"), ("kv_lengths_gqa4_per_head_causal", "f16"),
             ("d64_gqa4_per_head_kv_lengths", "bf16")]
    stderr = run_python(f"import test_gpu_attention_bwd_sm90 as t; t.run_cases({cases!r})",
                        JAX_BLOCKSPARSE_DEBUG="1", JAX_BLOCKSPARSE_ATTN_BWD_VARIANT=variant,
                        JAX_BLOCKSPARSE_ATTN_FWD_VARIANT="2").stderr
    logs = assert_backward_is_fa3(stderr, cases, variant)
    for case in cases:
        forward = [k for op, k in logs[" ".join(case)] if op == "attention_fwd"]
        assert forward and all(k.startswith("fa3_forward") for k in forward), (case, forward)


@pytest.mark.parametrize("switch", ["", "1"])
def test_tiled64_switch(switch):
    """Block-64 static layouts without a mask source (causal, per-head, GQA 8, Tq < Tk,
    kv_lengths): JAX_BLOCKSPARSE_ATTN_BWD_TILED64 unset, the Hopper backward on 128 x 128
    tiles (the debug lines name mask_bs=64) where the layout fills its tiles
    (`tile_fill` >= `_cuda.TILED64_MIN_FILL`), else the FA2 backward's block-64 rows; =1,
    the tiles always; with the values of test_gpu_attention's check (o, lse, dq, dk, dv
    against float64). (=0, the FA2 rows always, is every other test's setting.)"""
    if not sm90():
        pytest.skip("the FA3-design backward needs an sm_90 GPU (H100 / H200)")
    import test_gpu_attention as g
    from jax_blocksparse import _cuda
    from jax_blocksparse.attention_metadata import tile_fill
    cases = [("local_causal_bs64_d64", "f16"), ("random_empty_rows_bs64_d64", "bf16"),
             ("per_head_causal_bs64_d128", "bf16"), ("gqa8_per_head_causal_bs64_d128", "f16"),
             ("tq_lt_tk_causal_bs64_d128", "bf16"), ("kv_lengths_causal_bs64_d64", "f16")]
    code = f"import test_gpu_attention as t; t.run_cases({cases!r})"
    stderr = run_python(code, JAX_BLOCKSPARSE_DEBUG="1", JAX_BLOCKSPARSE_ATTN_BWD_VARIANT="",
                        JAX_BLOCKSPARSE_ATTN_BWD_TILED64=switch).stderr
    tiled = set()
    for name, dtype in cases:
        layout, causal, _, tq, tk = g.CASES[name][:5]
        if switch or tile_fill(layout(), causal, tq, tk) >= _cuda.TILED64_MIN_FILL:
            tiled.add((name, dtype))
    assert 0 < len(tiled) < len(cases) or switch, tiled  # unset: both kinds of layout
    assert_backward_is_fa3(stderr, sorted(tiled), "2")
    logs = kernels_by_case(stderr)
    for case in set(cases) - tiled:
        backward = [k for op, k in logs.get(" ".join(case), []) if op == "attention_bwd"]
        assert backward and all(k.startswith("fa2_backward") for k in backward), (case, backward)
    lines = [line for line in stderr.splitlines() if "attention_bwd" in line and "kernel=" in line
             and "fa3_backward" in line]
    assert lines and all("mask_bs=64" in line for line in lines), lines[:4]


@pytest.mark.parametrize("variant", ["2", "4"])
def test_fa3_backward_falls_back_elsewhere(variant):
    """Variant 2 (or 4) at a block size it does not implement (64) runs the default
    backward, correctly."""
    cases = [("local_causal_bs64_d64", "f16"), ("per_head_causal_bs64_d128", "bf16")]
    code = f"import test_gpu_attention as t; t.run_cases({cases!r})"
    stderr = run_python(code, JAX_BLOCKSPARSE_DEBUG="1",
                        JAX_BLOCKSPARSE_ATTN_BWD_VARIANT=variant).stderr
    for case, launches in kernels_by_case(stderr).items():
        backward = [kernel for op, kernel in launches if op == "attention_bwd"]
        assert backward and all(k.startswith("fa2_backward") for k in backward), (case, launches)


# ------------------------------------ mask sources: the Hopper forward's document cases
DOC_CASES_BS128 = [name for name, case in DOC_CASES.items() if case[10] == BS]
DOC_CASES_BS64 = [name for name, case in DOC_CASES.items() if case[10] != BS]


def run_docs(variant, names):
    """Runs test_gpu_attention_sm90.check_docs on `names` (bf16 and f16) in a subprocess
    with the backward variant forced; returns the cases and their stderr."""
    cases = [(name, dtype) for name in names for dtype in ("bf16", "f16")]
    stderr = run_python(f"import test_gpu_attention_sm90 as t; t.run_doc_cases({cases!r})",
                        JAX_BLOCKSPARSE_DEBUG="1",
                        JAX_BLOCKSPARSE_ATTN_BWD_VARIANT=variant).stderr
    return cases, stderr


@pytest.mark.parametrize("variant,names", [("2", c) for c in chunks(DOC_CASES_BS128, 2)] +
                         [("3", ("docs_local_causal", "tail_docs_kv_lengths")),
                          ("3", ("qoff_docs_gqa4_d64", "per_batch_mask_causal_kv_lengths")),
                          ("4", ("docs_local_causal", "tail_docs_kv_lengths")),
                          ("4", ("qoff_docs_gqa4_d64", "per_batch_mask_causal_kv_lengths")),
                          ("4", ("docs_dense_kv_lengths", "docs_traced_per_head_causal"))],
                         ids=case_id)
def test_fa3_backward_documents(variant, names):
    """Segment ids, masks per batch entry, partial last tiles, q_offset (with and without
    ids): the Hopper backward takes them (every backward launch is the fa3 one; under
    variant 4, the one-pass kernel where the lengths are whole tiles, else the default
    variant 2's); dq, dk, dv against the float64 reference, deterministic, NaN past
    kv_lengths unread."""
    if not sm90():
        pytest.skip("the FA3-design backward needs an sm_90 GPU (H100 / H200)")
    cases, stderr = run_docs(variant, names)
    if variant != "4":
        assert_documents_backward(stderr, cases, variant)
        return
    # whole tiles: with q_offset (a 13th field) the queries reach the kernels in a buffer
    # of whole blocks (attention._positioned), so Tk decides alone
    whole = [case for case in cases
             if (DOC_CASES[case[0]][3] % 128 == 0 or len(DOC_CASES[case[0]]) > 12)
             and DOC_CASES[case[0]][4] % 128 == 0]
    assert_documents_backward(stderr, whole, "4")
    assert_documents_backward(stderr, [case for case in cases if case not in whole], "2")


@pytest.mark.parametrize("names", chunks(DOC_CASES_BS64, 3), ids=case_id)
def test_fa3_backward_documents_bs64(names):
    """Block size 64 with those mask sources under variant 2 (the FA2 backward takes none
    of them): the Hopper backward on 128 x 128 tiles with the blocks' bits (the debug
    line names mask_bs=64; head dim 256 on its own kernels), correctly."""
    if not sm90():
        pytest.skip("the FA3-design kernels need an sm_90 GPU (H100 / H200)")
    cases, stderr = run_docs("2", names)
    assert_documents_backward(stderr, cases, "2")
    fused = [line for line in stderr.splitlines() if "attention_bwd" in line and "kernel=" in line]
    assert all("mask_bs=64" in line for line in fused), fused[:4]


def assert_documents_backward(stderr, cases, variant):
    """The variant's fa3 backward ran each of `cases` (DOC_CASES names, dtypes), those at
    head dim 256 its head-dim-256 kernel; returns the launches by case."""
    d256 = [case for case in cases if DOC_CASES[case[0]][9] == 256]
    assert_backward_is_fa3(stderr, d256, variant + " d256")
    return assert_backward_is_fa3(stderr, [case for case in cases if case not in d256], variant)


@pytest.mark.parametrize("sections", ["1", "3", "3e", "8e"])
def test_head_sections_grid(sections):
    """Under JAX_BLOCKSPARSE_ATTN_HEAD_SECTIONS=N the Hopper forward and backward kernels
    take their grid's cells in sections of N (batch x head) columns (attention/common.cuh,
    CellOf; 1: one head's blocks back to back; 3: sections that do not divide the columns,
    the last one narrower; "e": with JAX_BLOCKSPARSE_ATTN_HEAD_SECTIONS_EVEN=1, sections of
    near-equal widths, one unit apart, the wider first): the same kernels run (the debug
    lines name them), and o, lse, dq, dk, dv match the float64 reference, deterministic,
    NaN past kv_lengths unread (`check`, `check_docs`), at head dims 128, 64 and 256, with
    GQA, per-head masks, lists per batch entry and segment ids."""
    if not sm90():
        pytest.skip("the FA3-design kernels need an sm_90 GPU (H100 / H200)")
    cases = [("gqa4_per_head_causal", "bf16"), ("d64_tq_gt_tk_causal", "f16"),
             ("d256_per_head_causal_kv_lengths", "bf16")]
    docs = [("per_batch_mask_causal_kv_lengths", "f16"), ("docs_local_causal", "bf16")]
    code = ("import test_gpu_attention_bwd_sm90 as b, test_gpu_attention_sm90 as t; "
            f"b.run_cases({cases!r}); t.run_doc_cases({docs!r})")
    even = "1" if "e" in sections else ""
    stderr = run_python(code, JAX_BLOCKSPARSE_DEBUG="1", JAX_BLOCKSPARSE_ATTN_BWD_VARIANT="2",
                        JAX_BLOCKSPARSE_ATTN_HEAD_SECTIONS=sections.rstrip("e"),
                        JAX_BLOCKSPARSE_ATTN_HEAD_SECTIONS_EVEN=even).stderr
    assert_backward_is_fa3(stderr, cases[2:], "2 d256")
    logs = assert_backward_is_fa3(stderr, cases[:2] + docs, "2")
    for case in cases + docs:
        forward = [kernel for op, kernel in logs[" ".join(case)] if op == "attention_fwd"]
        assert forward and all(k.startswith("fa3_forward") for k in forward), (case, forward)


# Cases with many key blocks adding into each query tile (the one-pass backward's dQ sums
# across CTAs): every run bitwise equal to the first.
REPEAT_CASES = {
    # name: (block mask, causal, B, Tq, Tk, Hq, Hkv, head dim)
    "dense_4096_gqa4": (np.ones((32, 32), bool), False, 2, 4096, 4096, 8, 2, 128),
    "causal_4096": (np.ones((32, 32), bool), True, 2, 4096, 4096, 4, 4, 128),
    "random_4096_per_head_d64": (random_mask(33, (4, 32, 32), 0.5, False, False), True,
                                 1, 4096, 4096, 4, 4, 64),
}


def repeat_case(name):
    """A REPEAT_CASES case: its jitted backward (dq, dk, dv of one forward) and its
    arguments (q, k, v, do: fresh bf16 values from a fixed seed)."""
    mask, causal, b, tq, tk, hq, hkv, d = REPEAT_CASES[name]
    layout = jbs.Layout(mask, BS)
    rng = np.random.default_rng([sorted(REPEAT_CASES).index(name), 92])
    q, do = (random(rng, (b, tq, hq, d), jnp.bfloat16) for _ in range(2))
    k, v = (random(rng, (b, tk, hkv, d), jnp.bfloat16) for _ in range(2))

    @jax.jit
    def grads(q, k, v, do):
        _, vjp = jax.vjp(lambda q, k, v: jbs.attention(q, k, v, layout, causal=causal),
                         q, k, v)
        return vjp(do)
    return grads, (q, k, v, do)


def run_repeats(names, runs):
    """Runs each case's forward + backward `runs` times; asserts every run's dq, dk, dv
    bitwise equal to the first (called in a subprocess with the variant forced)."""
    for name in names:
        mark_case(name)
        grads, args = repeat_case(name)
        first = [f64(x) for x in grads(*args)]
        for _ in range(runs - 1):
            for what, g, f in zip(("dq", "dk", "dv"), grads(*args), first):
                np.testing.assert_array_equal(f64(g), f,
                                              err_msg=f"{name} {what}: not deterministic")


def save_grads(names, path):
    """Each case's dq, dk, dv (float64 copies of the bf16 results) into the npz `path`, as
    "name/dq" etc. (called in a subprocess under the switches compared)."""
    saved = {}
    for name in names:
        mark_case(name)
        grads, args = repeat_case(name)
        saved.update({f"{name}/{what}": f64(g) for what, g in zip(("dq", "dk", "dv"),
                                                                  grads(*args))})
    np.savez(path, **saved)


ONEPASS = "JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_"
# Variant 4's switches (README.md: "the same results bit for bit"), label -> environment.
ONEPASS_SWITCHES = {"DQ_FIRST=0": {ONEPASS + "DQ_FIRST": "0"},
                    "GROUP=1": {ONEPASS + "GROUP": "1"},
                    "GROUP=3": {ONEPASS + "GROUP": "3"},
                    "GROUP=0": {ONEPASS + "GROUP": "0"},
                    "EARLY_CONVERT=0": {ONEPASS + "EARLY_CONVERT": "0"},
                    "PERSISTENT=0": {ONEPASS + "PERSISTENT": "0"},
                    "PERSISTENT_CTAS=3": {ONEPASS + "PERSISTENT_CTAS": "3"},
                    "PERSISTENT=0,STORE_TMA=0": {ONEPASS + "PERSISTENT": "0",
                                                 ONEPASS + "STORE_TMA": "0"}}
# ... and those that change the sums' order (deterministic, not the defaults' bits)
ONEPASS_ORDER_SWITCHES = {"DQ_SLOTS=4": {ONEPASS + "DQ_SLOTS": "4"},
                          "DQ_SLOTS=4,PERSISTENT=0": {ONEPASS + "DQ_SLOTS": "4",
                                                      ONEPASS + "PERSISTENT": "0"},
                          "DQ_SLOTS=8": {ONEPASS + "DQ_SLOTS": "8"},
                          "DQ_SLOTS=8,EARLY_CONVERT=0": {ONEPASS + "DQ_SLOTS": "8",
                                                         ONEPASS + "EARLY_CONVERT": "0"}}


def test_onepass_switches_same_bits(tmp_path):
    """The switches README.md calls "the same results bit for bit" (variant 4's DQ_FIRST,
    GROUP, EARLY_CONVERT, PERSISTENT, STORE_TMA) are: each case's dq, dk, dv under each of
    them bitwise equal to those of variant 4 under its defaults (the REPEAT_CASES: GQA,
    causal, per-head masks, head dims 128 and 64; every setting in its own process, the
    same inputs)."""
    if not sm90():
        pytest.skip("the one-pass backward needs an sm_90 GPU (H100 / H200)")
    names = list(REPEAT_CASES)
    got = {}
    for label, env in {"defaults": {}, **ONEPASS_SWITCHES}.items():
        path = str(tmp_path / f"{label}.npz")
        run_python(f"import test_gpu_attention_bwd_sm90 as t; t.save_grads({names!r}, {path!r})",
                   JAX_BLOCKSPARSE_ATTN_BWD_VARIANT="4", **env)
        got[label] = np.load(path)
    want = got.pop("defaults")
    for label, saved in got.items():
        assert sorted(saved.files) == sorted(want.files), label
        for key in want.files:
            np.testing.assert_array_equal(saved[key], want[key], err_msg=f"{label}: {key}")


def test_onepass_backward_deterministic_over_runs():
    if not sm90():
        pytest.skip("the one-pass backward needs an sm_90 GPU (H100 / H200)")
    names = list(REPEAT_CASES)
    stderr = run_python(f"import test_gpu_attention_bwd_sm90 as t; t.run_repeats({names!r}, 6)",
                        JAX_BLOCKSPARSE_DEBUG="1", JAX_BLOCKSPARSE_ATTN_BWD_VARIANT="4").stderr
    logs = kernels_by_case(stderr)
    for name in names:
        backward = [kernel for op, kernel in logs.get(name, []) if op == "attention_bwd"]
        assert backward and all(k == FA3_BWD["4"] for k in backward), (name, backward)


@pytest.mark.parametrize("switch", list(ONEPASS_SWITCHES) + list(ONEPASS_ORDER_SWITCHES))
def test_onepass_switches(switch):
    """Variant 4 under its switches: JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_DQ_FIRST=0 (the steps
    end in the other order than the default's: dK issued before the dS^T store, the dQ
    partial copied out after both products), JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_GROUP=1 / 3
    / 0 (the launch order takes the (batch, kv head) pairs 1 / 3 at a time: 3 leaves a
    shorter last group; 0: all in one group, the default 4's alternative),
    JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_EARLY_CONVERT=0 (dQ's conversion after the kernel
    ends, not the default's dependent launch that waits on the tiles' semaphores),
    JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_PERSISTENT=0 (one CTA per work item, not the
    default's persistent grid of one CTA per SM), ..._PERSISTENT_CTAS=3 (a persistent grid
    of 3 CTAs: each takes many work items, at these shapes of a few steps each, so the
    meta ring laps across items' ends and K, V are reloaded while dK, dV are stored) and
    PERSISTENT=0 with JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_STORE_TMA=0 (dK, dV stored from
    the registers, not through shared memory and TMA stores), and
    JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_DQ_SLOTS=4 (4 dQ slots: a long query line's adds,
    the causal cases' lower rows, in 3 ordered chains; persistent or not) and =8 (7
    chains; the convert early or after the kernel): dq, dk, dv
    against float64 (the VARIANT3_CASES: causal, empty rows, GQA, per head, Tq != Tk,
    kv_lengths, traced, head dim 64), bitwise deterministic over runs."""
    if not sm90():
        pytest.skip("the one-pass backward needs an sm_90 GPU (H100 / H200)")
    cases = [(name, ("bf16", "f16")[i % 2]) for i, name in enumerate(VARIANT3_CASES)]
    names = list(REPEAT_CASES)
    code = (f"import test_gpu_attention_bwd_sm90 as t; t.run_cases({cases!r}); "
            f"t.run_repeats({names!r}, 3)")
    stderr = run_python(code, JAX_BLOCKSPARSE_DEBUG="1", JAX_BLOCKSPARSE_ATTN_BWD_VARIANT="4",
                        **{**ONEPASS_SWITCHES, **ONEPASS_ORDER_SWITCHES}[switch]).stderr
    assert_backward_is_fa3(stderr, cases, "4")
    logs = kernels_by_case(stderr)
    for name in names:
        backward = [kernel for op, kernel in logs.get(name, []) if op == "attention_bwd"]
        assert backward and all(k == FA3_BWD["4"] for k in backward), (name, backward)


# ------------------------------ block sizes 16 and 32: the forward's fine cases, backward too
FINE_CASES_BWD = [name for name, case in FINE_CASES.items() if case[9] in (64, 128)]
FINE_CASES_PURE = [name for name, case in FINE_CASES.items() if case[9] not in (64, 128)]


def check_fine_backward(name, dtype, platform):
    """test_gpu_attention_sm90.check_docs on a FINE_CASES case (o, lse, dq, dk, dv against
    the float64 reference, deterministic, NaN past kv_lengths unread), then NaN in k and v
    at the keys no query attends (`unread_keys`, and past kv_lengths): every result bitwise
    unchanged (the dQ kernel zeroes their K rows; both kernels select P = 0, dS = 0)."""
    import test_gpu_attention_sm90 as t
    f, args, got = t.check_docs(name, dtype, platform)
    q, k, v, do, kv_lengths, *rest = args
    unread = t.unread_keys(name) | (np.arange(k.shape[1])[None, :, None] >=
                                    np.asarray(kv_lengths)[:, None, None])
    if not unread.any():
        return
    plant = lambda x: jnp.where(jnp.asarray(unread)[..., None], jnp.nan, x)
    poison(platform)
    nan = f(q, plant(k), plant(v), do, kv_lengths, *rest)
    for what, g, n in zip(("o", "lse", "dq", "dk", "dv"), got, nan):
        np.testing.assert_array_equal(f64(n), f64(g), err_msg=f"{what}: NaN in unread keys")


def run_fine(cases):
    import test_gpu_attention_sm90 as t
    t.run_each(check_fine_backward, cases)


@pytest.mark.parametrize("variant,names", [("2", c) for c in chunks(FINE_CASES_BWD, 2)] +
                         [("3", ("fine16_local_causal_gqa", "fine32_tail_d64_docs_kv_lengths")),
                          ("3", ("fine32_qoff_traced_docs",)),
                          ("4", ("fine16_local_causal_gqa",))], ids=case_id)
def test_fa3_backward_block_sizes_16_32(variant, names):
    """Block sizes 16 and 32 at head dims 64 and 128: every backward launch is the variant's
    fa3 backward (its debug line with mask_bs; under variant 4, which takes no tile bits,
    variant 2's); dq, dk, dv against the float64 reference; NaN at unread keys changes no
    result."""
    if not sm90():
        pytest.skip("the FA3-design backward needs an sm_90 GPU (H100 / H200)")
    cases = [(name, dtype) for name in names for dtype in ("bf16", "f16")]
    stderr = run_python(f"import test_gpu_attention_bwd_sm90 as t; t.run_fine({cases!r})",
                        JAX_BLOCKSPARSE_DEBUG="1",
                        JAX_BLOCKSPARSE_ATTN_BWD_VARIANT=variant).stderr
    assert_backward_is_fa3(stderr, cases, "2" if variant == "4" else variant)
    bs = {name: FINE_CASES[name][10] for name in names}
    lines = [line for line in stderr.splitlines() if "attention_bwd" in line]
    for name in names:  # the debug lines name the fine mask's block size
        assert any(f"mask_bs={bs[name]}" in line for line in lines), (name, lines[:4])


@pytest.mark.parametrize("names", chunks(FINE_CASES_PURE, 2), ids=case_id)
def test_fine_backward_other_head_dims_pure(names):
    """Block sizes 16 and 32 at head dims 96 and 256 under variant 2 and
    JAX_BLOCKSPARSE_ATTN_BWD_D256=0: at 96 the Hopper backward of head dim 128 on
    zero-padded operands, at 256 the pure-JAX backward (no fused backward launch),
    correctly either way."""
    if not sm90():
        pytest.skip("the FA3-design kernels need an sm_90 GPU (H100 / H200)")
    cases = [(name, dtype) for name in names for dtype in ("bf16", "f16")]
    stderr = run_python(f"import test_gpu_attention_bwd_sm90 as t; t.run_fine({cases!r})",
                        JAX_BLOCKSPARSE_DEBUG="1", JAX_BLOCKSPARSE_ATTN_BWD_VARIANT="2",
                        JAX_BLOCKSPARSE_ATTN_BWD_D256="0").stderr
    for case, launches in kernels_by_case(stderr).items():
        padded = FINE_CASES[case.split()[0]][9] == 96
        assert any(op == "attention_bwd" for op, _ in launches) == padded, (case, launches)


# ------------------------------------------------------------------------------ head dim 256
@pytest.mark.parametrize("variant,names", [("2", c) for c in chunks(list(D256_CASES), 2)] +
                         [("3", ("d256_dense_long", "d256_per_head_causal_kv_lengths")),
                          ("4", ("d256_local_causal_gqa4",))], ids=case_id)
def test_fa3_backward_d256(variant, names):
    """Head dim 256 runs its own Hopper backward
    (variant 2 or 3; under 4, which has no head-dim-256 row, variant 2's): every backward
    launch is that kernel; o, lse, dq, dk, dv against the float64 reference, deterministic,
    NaN past kv_lengths unread (`check`)."""
    if not sm90():
        pytest.skip("the FA3-design backward needs an sm_90 GPU (H100 / H200)")
    cases = [(name, dtype) for name in names for dtype in ("bf16", "f16")]
    stderr = run_python(f"import test_gpu_attention_bwd_sm90 as t; t.run_cases({cases!r})",
                        JAX_BLOCKSPARSE_DEBUG="1", JAX_BLOCKSPARSE_ATTN_BWD_VARIANT=variant).stderr
    assert_backward_is_fa3(stderr, cases, ("2" if variant == "4" else variant) + " d256")


def test_fa3_backward_d256_mask_sources():
    """The head-dim-256 cases of every mask source
    (the Hopper forward's DOC_CASES: segment ids, masks per batch entry, partial last tiles,
    q_offset, block size 64 on 128 x 128 tiles; the FINE_CASES of block sizes 16 and 32;
    a logit soft cap with partial tiles) run that backward (the debug lines name it, and
    mask_bs on the tiles); values against float64 (`check_docs`, `check_fine_backward`,
    test_attention_sinks_softcap's `gpu_forward_check`), deterministic, NaN unread."""
    if not sm90():
        pytest.skip("the FA3-design backward needs an sm_90 GPU (H100 / H200)")
    docs = [(n, t) for n, c in DOC_CASES.items() if c[9] == 256 for t in ("bf16", "f16")]
    fine = [(n, t) for n, c in FINE_CASES.items() if c[9] == 256 for t in ("bf16", "f16")]
    capped = ["fwd_partial_d256_bs128_bf16"]
    code = ("import test_gpu_attention_sm90 as t, test_gpu_attention_bwd_sm90 as b, "
            "test_attention_sinks_softcap as s; "
            f"t.run_doc_cases({docs!r}); b.run_fine({fine!r}); "
            f"s.run_gpu_forward_cases({capped!r})")
    stderr = run_python(code, JAX_BLOCKSPARSE_DEBUG="1", JAX_BLOCKSPARSE_ATTN_BWD_VARIANT="2").stderr
    assert "pure-JAX path" not in stderr, stderr[-3000:]
    assert docs and fine
    assert_backward_is_fa3(stderr, docs + fine + [(name,) for name in capped], "2 d256")
    lines = [line for line in stderr.splitlines() if "attention_bwd" in line and "kernel=" in line]
    for name in {n for n, _ in fine} | {n for n, _ in docs if DOC_CASES[n][10] != BS}:
        bs = FINE_CASES[name][10] if name in FINE_CASES else DOC_CASES[name][10]
        assert any(f"mask_bs={bs}" in line for line in lines), (name, lines[:4])


# ------------------------------------------------ a logit soft cap (issue 21): both variants
CAP_CASES = ("fwd_segments_d128_bs128_bf16", "fwd_bs16_partial_d128_f16",
             "fwd_bs32_segments_d64_bf16")


@pytest.mark.parametrize("variant", ["2", "3", "4", "4p0"])
def test_fa3_backward_soft_cap(variant):
    """A capped backward runs the variant's fa3 backward wherever an uncapped one would
    (segment ids and causality at block size 128 and head dim 128, block size 16 with
    partial last tiles and GQA, block size 32 with segment ids at head dim 64; under 4 the
    one-pass kernel the first, in its default persistent grid, "4p0" one CTA per item
    (JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_PERSISTENT=0), variant 2 the others, which it leaves
    out): P from the capped scores, dS with the factor 1 - tanh^2; dq, dk, dv against the
    float64 reference (test_attention_sinks_softcap.gpu_forward_check)."""
    if not sm90():
        pytest.skip("the FA3-design backward needs an sm_90 GPU (H100 / H200)")
    names = list(CAP_CASES)
    variant, persistent = variant[0], "0" if variant.endswith("p0") else ""
    stderr = run_python(
        f"import test_attention_sinks_softcap as t; t.run_gpu_forward_cases({names!r})",
        JAX_BLOCKSPARSE_DEBUG="1", JAX_BLOCKSPARSE_ATTN_BWD_VARIANT=variant,
        JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_PERSISTENT=persistent).stderr
    assert "pure-JAX path" not in stderr, stderr[-3000:]
    assert_backward_is_fa3(stderr, [(names[0],)], variant)
    from jax_blocksparse import _cuda
    assert_backward_is_fa3(stderr, [(name,) for name in names[1:]],
                           str(_cuda.SM90_BACKWARD_BEYOND_ONEPASS) if variant == "4" else variant)
