"""The Hopper attention forward in the FlashAttention-3 design (cuda/attention/fwd_sm90.cu),
the default forward on an sm_90 GPU (JAX_BLOCKSPARSE_ATTN_FWD_VARIANT unset: variant 2,
consumer warpgroups ping-ponged; every case), also forced by the switch (=2, a subset; =3,
without the ping-pong, a subset): o and lse (and the dq of the backward that follows)
against the float64 reference on fresh random inputs (fixed seeds), bf16 and f16, block
sizes 128 and 64, head dims 128 and 64, and 96 and 256 (the FA3-design forward's only:
their backward runs the pure-JAX path, and with the FA2 forward forced their forward
too; cases "d96_*", "d256_*"), over causal and non-causal local / strided / random / dense layouts
with empty query rows and a single block, GQA (8 query heads on 2), scales other than
1/sqrt(D) (negative too), per-head masks, a traced BlockMask, Tq != Tk with causality
(rows without keys), kv_lengths that are not multiples of the block (0 included) with NaN
planted in k and v past them (the outputs must stay finite and bitwise equal to the clean
run); every result bitwise equal over two runs.

Then segment ids (packed documents), masks per batch entry (a traced BlockMask with
Bm = B), Tq, Tk that are not multiples of the block size (partial last tiles) and q_offset
(chunked prefill, per batch entry, with or without segment ids), which the
FA3-design forward takes (the backward, forced to variant 0 here by the tests' switches,
runs the pure-JAX path: dq, dk, dv are
checked too; with the FA2 forward forced, the forward too; the Hopper backward's run of
the same cases: test_gpu_attention_bwd_sm90.py), and the FA2 forward forced at negative
scales.

The cases run in subprocesses (a few per subprocess) with JAX_BLOCKSPARSE_DEBUG=1 and the
test asserts that the
debug line of every forward launch names the fa3 kernel (a silent fallback to the FA2
forward fails), and that the backward (still the FA2 kernels) runs after it (head dims 64
and 128, and 96 zero-padded to 128; at 256 no fused backward launches). Block size 64
(cases "bs64_*": 64-row CTAs, one kernel for variants 2 and 3) too; variant 0 forces the
FA2 forward (checked too).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_blocksparse as jbs
from jax_blocksparse import _cuda
from reference import (ATTENTION_TOLERANCE, LSE_TOLERANCE, attention64, attention_mask64, f64,
                       kernels_by_case, launch_lines_by_case, lse_err, mark_case, random,
                       rel_err, run_python)
from test_gpu_attention import random_mask
from test_matmul import poison


pytestmark = pytest.mark.gpu

FA3 = {"": "fa3_forward(wgmma, tma, ws, pingpong)", "2": "fa3_forward(wgmma, tma, ws, pingpong)",
       "3": "fa3_forward(wgmma, tma, ws)"}  # "": the switch unset (the default)
DTYPES = {"bf16": jnp.bfloat16, "f16": jnp.float16}
BS = 128


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
    "random_empty_rows": (lambda: random_mask(11, (8, 8), 0.4), False,
                          2, 1024, 1024, 4, 4, None, False),
    "random_empty_rows_causal": (lambda: random_mask(12, (8, 8), 0.6), True,
                                 2, 1024, 1024, 4, 4, None, False),
    "single_block": (lambda: one_block(8, 8, 5, 2), False, 2, 1024, 1024, 2, 2, None, False),
    "single_block_diagonal": (lambda: one_block(8, 8, 3, 3), True,
                              2, 1024, 1024, 2, 1, None, False),
    "one_block_sequence": (lambda: np.ones((1, 1), bool), True, 2, 128, 128, 2, 1, None, False),
    "gqa4_local_causal": (lambda: jbs.layouts.local(1024, BS, 384).mask, True,
                          2, 1024, 1024, 8, 2, None, False),
    "gqa4_per_head_causal": (lambda: random_mask(13, (8, 8, 8), 0.5), True,
                             2, 1024, 1024, 8, 2, None, False),
    "per_head_noncausal": (lambda: random_mask(14, (4, 8, 8), 0.5), False,
                           2, 1024, 1024, 4, 4, None, False),
    "tq_lt_tk_causal": (lambda: np.ones((8, 16), bool), True, 2, 1024, 2048, 4, 4, None, False),
    "tq_gt_tk_causal": (lambda: np.ones((16, 8), bool), True, 2, 2048, 1024, 4, 2, None, False),
    "kv_lengths": (lambda: random_mask(15, (8, 8), 0.7, False), False,
                   3, 1024, 1024, 4, 2, [1000, 77, 0], False),
    "kv_lengths_causal": (lambda: jbs.layouts.local(1024, BS, 512).mask, True,
                          2, 1024, 1024, 4, 4, [1024, 555], False),
    "kv_lengths_tq_lt_tk_per_head": (lambda: random_mask(16, (4, 8, 16), 0.6, False), True,
                                     2, 1024, 2048, 4, 4, [1900, 1283], False),
    "traced_causal_per_head": (lambda: random_mask(17, (4, 8, 8), 0.5), True,
                               2, 1024, 1024, 4, 2, None, True),
    "traced_kv_lengths": (lambda: random_mask(18, (8, 8), 0.6), False,
                          2, 1024, 1024, 4, 4, [700, 1024], True),
    "d64_local_causal": (lambda: jbs.layouts.local(2048, BS, 512).mask, True,
                         2, 2048, 2048, 4, 4, None, False, 64),
    "d64_random_empty_rows": (lambda: random_mask(19, (8, 8), 0.5), False,
                              2, 1024, 1024, 4, 2, None, False, 64),
    "d64_tq_gt_tk_causal": (lambda: np.ones((16, 8), bool), True,
                            2, 2048, 1024, 4, 2, None, False, 64),
    "d64_gqa4_per_head_kv_lengths": (lambda: random_mask(20, (8, 8, 8), 0.6, False), True,
                                     3, 1024, 1024, 8, 2, [1024, 333, 0], False, 64),
    "scale_0.3_causal": (lambda: jbs.layouts.local(1024, BS, 512).mask, True,
                         2, 1024, 1024, 4, 4, None, False),
    "negative_scale_causal_kv_lengths": (lambda: jbs.layouts.local(1024, BS, 512).mask, True,
                                         2, 1024, 1024, 4, 4, [1024, 600], False),
}
# Block size 64 (64-row CTAs, one consumer warpgroup): the names start with "bs64_".
BS64 = 64
CASES.update({
    "bs64_local_causal": (lambda: jbs.layouts.local(1024, BS64, 256).mask, True,
                          2, 1024, 1024, 4, 4, None, False),
    "bs64_random_empty_rows": (lambda: random_mask(21, (16, 16), 0.4), False,
                               2, 1024, 1024, 4, 2, None, False),
    "bs64_gqa4_per_head_causal_kv_lengths": (lambda: random_mask(22, (8, 16, 16), 0.5, False),
                                             True, 3, 1024, 1024, 8, 2, [1024, 333, 0], False),
    "bs64_tq_gt_tk_causal": (lambda: np.ones((16, 8), bool), True,
                             2, 1024, 512, 4, 2, None, False),
    "bs64_traced_kv_lengths": (lambda: random_mask(23, (16, 16), 0.6), False,
                               2, 1024, 1024, 4, 4, [700, 1024], True),
    "bs64_one_block_sequence": (lambda: np.ones((1, 1), bool), True,
                                2, 64, 64, 2, 1, None, False),
    "bs64_d64_local_causal": (lambda: jbs.layouts.local(1024, BS64, 256).mask, True,
                              2, 1024, 1024, 4, 4, None, False, 64),
    "bs64_d64_per_head_kv_lengths": (lambda: random_mask(24, (4, 16, 16), 0.6, False), False,
                                     2, 1024, 1024, 4, 2, [1000, 77], False, 64),
    "bs64_d64_tq_lt_tk_causal": (lambda: np.ones((8, 16), bool), True,
                                 2, 512, 1024, 4, 4, None, False, 64),
    "bs64_negative_scale_causal_kv_lengths": (lambda: jbs.layouts.local(1024, BS64, 256).mask,
                                              True, 2, 1024, 1024, 4, 4, [1024, 600], False),
})
# Head dims 96 (two 64-column slabs in shared memory, the last 32 columns zero) and 256
# (64-key tiles: two per 128-key block), the FA3-design forward's only.
CASES.update({
    "d96_local_causal": (lambda: jbs.layouts.local(1024, BS, 384).mask, True,
                         2, 1024, 1024, 4, 2, None, False, 96),
    "d96_per_head_kv_lengths": (lambda: random_mask(51, (4, 8, 8), 0.6, False), False,
                                3, 1024, 1024, 4, 4, [1000, 77, 0], False, 96),
    "d96_traced_tq_gt_tk_causal": (lambda: random_mask(52, (8, 4), 0.7), True,
                                   2, 1024, 512, 4, 2, [512, 300], True, 96),
    "d256_local_causal": (lambda: jbs.layouts.local(1024, BS, 384).mask, True,
                          2, 1024, 1024, 4, 2, None, False, 256),
    "d256_traced_per_head_causal_kv_lengths": (lambda: random_mask(53, (4, 8, 8), 0.6), True,
                                               2, 1024, 1024, 4, 4, [700, 1024], True, 256),
    "d256_random_empty_rows_tq_lt_tk": (lambda: random_mask(54, (4, 8), 0.4), False,
                                        2, 512, 1024, 4, 4, [1024, 333], False, 256),
    "bs64_d96_gqa4_per_head_causal_kv_lengths": (lambda: random_mask(55, (8, 16, 16), 0.5,
                                                                     False),
                                                 True, 3, 1024, 1024, 8, 2, [1024, 333, 0],
                                                 False, 96),
    "bs64_d96_traced_noncausal": (lambda: random_mask(56, (16, 16), 0.5), False,
                                  2, 1024, 1024, 4, 4, [1024, 901], True, 96),
    "bs64_d256_local_causal": (lambda: jbs.layouts.local(1024, BS64, 256).mask, True,
                               2, 1024, 1024, 4, 2, None, False, 256),
    "bs64_d256_per_head_kv_lengths": (lambda: random_mask(57, (4, 16, 16), 0.6, False), False,
                                      2, 1024, 1024, 4, 4, [1000, 77], False, 256),
})
SCALES = {"scale_0.3_causal": 0.3, "negative_scale_causal_kv_lengths": -0.06,
          "bs64_negative_scale_causal_kv_lengths": -0.06}  # else 1/sqrt(D)


def block_size(name):
    return BS64 if name.startswith("bs64_") else BS


def head_dim(name):
    case = CASES[name]
    return case[9] if len(case) > 9 else 128


def head_dims(family):
    """The head dims a kernel family ("forward": the FA2 forward; "backward") is built for."""
    return _cuda.attention_families(_cuda.ATTENTION_KERNELS)[family].head_dims


def fused_backward(d):
    """Whether the backward at head dim d runs the fused kernels (else the pure-JAX path),
    on its own head dim or zero-padded to a wider one (`_cuda.BACKWARD_PADDED_HEAD_DIMS`)."""
    dims = head_dims("backward")
    return d in dims or _cuda.BACKWARD_PADDED_HEAD_DIMS.get(d) in dims


def build(name, dtype):
    """(jitted forward + backward, its inputs, kv_lengths, the float64 o, lse and dq)."""
    make_mask, causal, b, tq, tk, hq, hkv, kv, traced = CASES[name][:9]
    D = head_dim(name)
    scale = SCALES.get(name, 1 / np.sqrt(D))
    bs = block_size(name)
    block_mask = make_mask()
    layout = jbs.Layout(block_mask, bs)
    kv = np.full(b, tk) if kv is None else np.asarray(kv)
    rng = np.random.default_rng([list(CASES).index(name), 90])
    q, do = random(rng, (b, tq, hq, D), dtype), random(rng, (b, tq, hq, D), dtype)
    k, v = random(rng, (b, tk, hkv, D), dtype), random(rng, (b, tk, hkv, D), dtype)

    def f(q, k, v, do, kv_lengths, mask):
        m = jbs.BlockMask.from_mask(mask, bs) if traced else layout

        def fwd(q, k, v):
            return jbs.attention(q, k, v, m, causal=causal, scale=float(scale),
                                 kv_lengths=kv_lengths, return_lse=True)
        (o, lse), vjp = jax.vjp(fwd, q, k, v)
        dq, _, _ = vjp((do, jnp.zeros_like(lse)))  # the backward runs after the forward
        return o, lse, dq

    allowed = attention_mask64(layout, causal, tq, tk, kv)
    zeros = np.zeros((b, hq, tq), np.float32)
    want_o, want_lse, want_dq = attention64(q, k, v, allowed, scale, do, zeros)[:3]
    args = (q, k, v, do, jnp.asarray(kv, jnp.int32), jnp.asarray(block_mask))
    return jax.jit(f), args, kv, (want_o, want_lse, want_dq)


def plant_nan(x, kv):
    """x [B, T, H, D] with NaN at every key position at or past kv[b]."""
    x = np.array(x)
    for b, n in enumerate(kv):
        x[b, n:] = np.nan
    return jnp.asarray(x)


def check(name, dtype, platform):
    f, args, kv, (want_o, want_lse, want_dq) = build(name, dtype)
    poison(platform)
    o, lse, dq = f(*args)
    assert o.dtype == dtype and lse.dtype == jnp.float32 and dq.dtype == dtype
    assert rel_err(o, want_o) < ATTENTION_TOLERANCE[dtype], "o"
    # dq too (whichever backward runs after this forward): a backward that returns zeros
    # or garbage fails here, not only in test_gpu_attention_bwd_sm90.py
    assert np.all(np.isfinite(f64(dq))), "dq: not finite"
    assert rel_err(dq, want_dq) < ATTENTION_TOLERANCE[dtype], ("dq", rel_err(dq, want_dq))
    assert lse_err(lse, want_lse) < LSE_TOLERANCE, "lse"
    assert np.all(f64(o)[want_o == 0] == 0), "o: not zero where no key contributes"
    assert np.all(np.isfinite(f64(o))), "o: not finite"
    o2, lse2, _ = f(*args)
    np.testing.assert_array_equal(f64(o2), f64(o), err_msg="o: not deterministic")
    np.testing.assert_array_equal(f64(lse2), f64(lse), err_msg="lse: not deterministic")
    if np.any(kv < args[1].shape[1]):  # NaN past kv_lengths changes nothing
        q, k, v, *rest = args
        o3, lse3, dq3 = f(q, plant_nan(k, kv), plant_nan(v, kv), *rest)
        assert np.all(np.isfinite(f64(o3))), "o: NaN past kv_lengths leaked"
        assert np.all(np.isfinite(f64(dq3))), "dq: NaN past kv_lengths leaked"
        np.testing.assert_array_equal(f64(o3), f64(o), err_msg="o: NaN past kv_lengths")
        np.testing.assert_array_equal(f64(lse3), f64(lse), err_msg="lse: NaN past kv_lengths")


def run_each(checker, cases):
    """`checker(name, dtype, platform)` on each (case name, dtype name) after a `mark_case`
    line on stderr (called in a subprocess with the variant forced)."""
    platform = jax.devices()[0].platform
    for name, dtype in cases:
        mark_case(name + " " + dtype)
        checker(name, DTYPES[dtype], platform)


def run_cases(cases):
    run_each(check, cases)


def sm90():
    return getattr(jax.devices()[0], "compute_capability", None) == "9.0"


VARIANT3_CASES = ["local_causal", "random_empty_rows", "gqa4_per_head_causal",
                  "tq_gt_tk_causal", "kv_lengths", "traced_kv_lengths", "d64_local_causal",
                  "d64_gqa4_per_head_kv_lengths", "bs64_local_causal", "d96_local_causal",
                  "d256_traced_per_head_causal_kv_lengths", "bs64_d256_local_causal"]
FA3_BS64 = "fa3_forward(wgmma, tma, ws, 64-row CTA)"  # variants 2 and 3 (and the default)


VARIANT2_CASES = ["local_causal", "kv_lengths", "d64_tq_gt_tk_causal", "bs64_local_causal",
                  "d256_local_causal", "bs64_d96_traced_noncausal"]


# The FA2 forward forced (0: 64-row CTAs, 1: 128-row CTAs at block 128) on the cases of
# negative scales (it masked before scaling: -inf scores became +inf, NaN outputs), and on
# head dims it lacks (96, 256: the pure-JAX forward then).
FA2_CASES = [("0", "negative_scale_causal_kv_lengths"), ("1", "negative_scale_causal_kv_lengths"),
             ("0", "bs64_negative_scale_causal_kv_lengths"), ("0", "d96_local_causal"),
             ("1", "bs64_d256_local_causal")]


def expected_forward(variant, name):
    """The forward kernel's name JAX_BLOCKSPARSE_DEBUG prints for this case and variant
    (None: no fused forward, the pure-JAX path)."""
    bs64 = block_size(name) == BS64
    if variant in ("0", "1") and head_dim(name) not in head_dims("forward"):
        return None  # a head dim the FA2 forward lacks
    if variant == "0" or (variant == "1" and bs64):
        return "fa2_forward(64-row CTA)"
    if variant == "1":
        return "fa2_forward(128-row CTA)"
    return FA3_BS64 if bs64 else FA3[variant]


def chunks(names, n):
    """`names` in tuples of n: the cases one subprocess runs (each costs a process start)."""
    names = list(names)
    return [tuple(names[i:i + n]) for i in range(0, len(names), n)]


def case_id(value):
    return "+".join(value) if isinstance(value, tuple) else (value or "default")


# Two or three cases per subprocess: device.sh runs pytest with --timeout 300 per test.
@pytest.mark.parametrize("variant,names", [("", c) for c in chunks(CASES, 2)] +
                         [("2", c) for c in chunks(VARIANT2_CASES, 2)] +
                         [("3", c) for c in chunks(VARIANT3_CASES, 3)] +
                         [(v, (n,)) for v, n in FA2_CASES], ids=case_id)
def test_fa3_forward(variant, names):
    if not sm90():
        pytest.skip("the FA3-design forward needs an sm_90 GPU (H100 / H200)")
    cases = [(name, dtype) for name in names for dtype in ("bf16", "f16")]
    stderr = run_python(f"import test_gpu_attention_sm90 as t; t.run_cases({cases!r})",
                        JAX_BLOCKSPARSE_DEBUG="1",
                        JAX_BLOCKSPARSE_ATTN_FWD_VARIANT=variant).stderr
    logs = kernels_by_case(stderr)
    for case in cases:
        launches = logs.get(" ".join(case), [])
        forward = [kernel for op, kernel in launches if op == "attention_fwd"]
        backward = any(op == "attention_bwd" for op, _ in launches)
        assert backward == fused_backward(head_dim(case[0])), (case, launches)
        want = expected_forward(variant, case[0])
        assert bool(forward) == (want is not None), (case, launches)
        for kernel in forward:
            assert kernel == want, (case, kernel)


def test_fa2_forward_forced():
    """JAX_BLOCKSPARSE_ATTN_FWD_VARIANT=0 runs the FA2 forward on Hopper too (block sizes
    64 and 128), correctly."""
    cases = [("local_causal_bs64_d64", "f16"), ("per_head_causal_bs64_d128", "bf16"),
             ("gqa2_local_causal_bs128_d64", "bf16")]
    code = f"import test_gpu_attention as t; t.run_cases({cases!r})"
    stderr = run_python(code, JAX_BLOCKSPARSE_DEBUG="1",
                        JAX_BLOCKSPARSE_ATTN_FWD_VARIANT="0").stderr
    logs = kernels_by_case(stderr)
    for case in cases:
        launches = logs.get(" ".join(case), [])
        forward = [kernel for op, kernel in launches if op == "attention_fwd"]
        assert forward and all(k == "fa2_forward(64-row CTA)" for k in forward), (case, launches)


# ------------------------------------------- segment ids, masks per batch entry (forward)
# name: (block mask (numpy [Rq, Rk], [Hm, Rq, Rk], or [B, Hm, Rq, Rk]: a BlockMask per batch
#        entry, traced), causal, B, Tq, Tk, Hq, Hkv, kv_lengths, traced, head dim, block
#        size, segment ids: "packed" (random document lengths packed back to back, the same
#        for queries and keys), "tail" (the queries are the last Tq keys, Tq < Tk), None)
DOC_CASES = {
    "docs_local_causal": (lambda: jbs.layouts.local(2048, 128, 1024).mask, True,
                          2, 2048, 2048, 4, 2, None, False, 128, 128, "packed"),
    "docs_dense_kv_lengths": (lambda: np.ones((8, 8), bool), False,
                              3, 1024, 1024, 4, 4, [1024, 700, 0], False, 128, 128, "packed"),
    "docs_traced_per_head_causal": (lambda: random_mask(31, (4, 8, 8), 0.6), True,
                                    2, 1024, 1024, 4, 2, [1024, 900], True, 128, 128, "packed"),
    "docs_tq_lt_tk_causal": (lambda: np.ones((8, 16), bool), True,
                             2, 1024, 2048, 4, 4, None, False, 128, 128, "tail"),
    "docs_bs64_d64_causal_kv_lengths": (lambda: jbs.layouts.local(1024, 64, 512).mask, True,
                                        2, 1024, 1024, 4, 2, [1024, 555], False, 64, 64,
                                        "packed"),
    "docs_bs64_traced_noncausal": (lambda: random_mask(32, (16, 16), 0.5), False,
                                   2, 1024, 1024, 4, 4, None, True, 128, 64, "packed"),
    "per_batch_mask_causal_kv_lengths": (lambda: random_mask(33, (2, 1, 8, 8), 0.6), True,
                                         2, 1024, 1024, 4, 2, [1024, 800], True, 128, 128,
                                         None),
    "per_batch_per_head_mask_bs64": (lambda: random_mask(34, (2, 4, 16, 16), 0.5), False,
                                     2, 1024, 1024, 4, 4, None, True, 64, 64, None),
    "docs_per_batch_mask_d64": (lambda: random_mask(35, (3, 1, 8, 8), 0.7, False), True,
                                3, 1024, 1024, 4, 4, [1024, 1000, 300], True, 64, 128,
                                "packed"),
    # Tq, Tk not multiples of the block size (partial last tiles: the FA3-design kernels
    # only)
    "tail_causal_tq_lt_tk": (lambda: np.ones((8, 9), bool), True,
                             2, 1000, 1100, 4, 2, None, False, 128, 128, None),
    "tail_docs_kv_lengths": (lambda: random_mask(41, (8, 8), 0.7, False), False,
                             2, 1000, 1000, 4, 4, [1000, 517], False, 128, 128, "packed"),
    "tail_bs64_d64_traced_causal": (lambda: random_mask(42, (16, 16), 0.6), True,
                                    2, 1000, 1000, 4, 4, None, True, 64, 64, None),
    "tail_short_queries_docs": (lambda: np.ones((1, 4), bool), True,
                                2, 50, 400, 4, 4, None, False, 128, 128, "tail"),
    "tail_bs64_gqa4_per_head_docs": (lambda: random_mask(43, (8, 16, 16), 0.5, False), True,
                                     2, 999, 999, 8, 2, [999, 300], False, 128, 64, "packed"),
    # q_offset (a 13th entry: the offsets [B]): query i of batch entry b at position
    # q_offset[b] + i of the mask's rows (chunked prefill); "offset" ids: the queries' ids
    # are those of the keys at their positions
    "qoff_causal_chunk": (lambda: np.tril(np.ones((16, 16), bool)), True,
                          2, 300, 2048, 4, 2, [1300, 2048], False, 128, 128, None, [1000, 1748]),
    "qoff_bs64_docs": (lambda: jbs.layouts.local(1024, 64, 512).mask, True,
                       2, 200, 1024, 4, 4, [300, 1024], False, 64, 64, "offset", [100, 824]),
    "qoff_traced_per_head_d128_bs64": (lambda: random_mask(44, (4, 16, 16), 0.6, False), True,
                                       2, 130, 1024, 4, 2, [630, 1000], True, 128, 64, None,
                                       [500, 870]),
    # head dims 96 and 256 (the FA3-design forward's only)
    "docs_d96_causal_kv_lengths": (lambda: jbs.layouts.local(1024, 128, 512).mask, True,
                                   2, 1024, 1024, 4, 2, [1024, 555], False, 96, 128, "packed"),
    "docs_d256_bs64_traced_per_head": (lambda: random_mask(61, (4, 16, 16), 0.6), True,
                                       2, 1024, 1024, 4, 4, [1024, 900], True, 256, 64,
                                       "packed"),
    "per_batch_mask_d256_causal": (lambda: random_mask(62, (2, 1, 8, 8), 0.6), True,
                                   2, 1024, 1024, 4, 2, [1024, 800], True, 256, 128, None),
    "tail_d96_bs64_traced_causal": (lambda: random_mask(63, (16, 16), 0.6), True,
                                    2, 1000, 1000, 4, 4, None, True, 96, 64, None),
    "tail_d256_docs_kv_lengths": (lambda: random_mask(64, (8, 8), 0.7, False), False,
                                  2, 1000, 1000, 4, 2, [1000, 517], False, 256, 128, "packed"),
    "qoff_d96_causal_chunk": (lambda: np.tril(np.ones((16, 16), bool)), True,
                              2, 300, 2048, 4, 2, [1300, 2048], False, 96, 128, None,
                              [1000, 1748]),
    "qoff_d256_bs64_docs": (lambda: jbs.layouts.local(1024, 64, 512).mask, True,
                            2, 200, 1024, 4, 4, [300, 1024], False, 256, 64, "offset",
                            [100, 824]),
    "qoff_docs_gqa4_d64": (lambda: jbs.layouts.local(2048, 128, 1024).mask, True,
                           2, 300, 2048, 8, 2, [1300, 2048], False, 64, 128, "offset",
                           [1000, 1748]),
    "qoff_traced_per_batch_noncausal": (lambda: random_mask(45, (2, 1, 8, 8), 0.6, False),
                                        False, 2, 200, 1024, 4, 4, [900, 1024], True, 128,
                                        128, None, [128, 700]),
}
NAMES = ("o", "lse", "dq", "dk", "dv")


def doc_case(name):
    """The entry of a DOC_CASES or FINE_CASES case."""
    return DOC_CASES[name] if name in DOC_CASES else FINE_CASES[name]


def build_docs(name, dtype):
    """(jitted forward + backward, its inputs, kv_lengths, the float64 o, lse, dq, dk,
    dv)."""
    from test_masks_from_data import allowed_pairs, packed_ids
    make_mask, causal, b, tq, tk, hq, hkv, kv, traced, D, bs, ids, *offsets = doc_case(name)
    offsets = np.asarray(offsets[0]) if offsets else None
    scale = 1 / np.sqrt(D)
    block_mask = make_mask()
    kv = np.full(b, tk) if kv is None else np.asarray(kv)
    rng = np.random.default_rng([list({**DOC_CASES, **FINE_CASES}).index(name), 91])
    q, do = random(rng, (b, tq, hq, D), dtype), random(rng, (b, tq, hq, D), dtype)
    k, v = random(rng, (b, tk, hkv, D), dtype), random(rng, (b, tk, hkv, D), dtype)
    q_ids = kv_ids = None
    if ids is not None:
        kv_ids = np.asarray(packed_ids(rng, b, tk, bs // 3, 5 * bs))
        q_ids = (kv_ids[:, tk - tq:] if offsets is None else
                 np.stack([kv_ids[i, o:o + tq] for i, o in enumerate(offsets)]))
    layout = None if traced else jbs.Layout(block_mask, bs)

    def f(q, k, v, do, kv_lengths, mask, q_ids, kv_ids):
        m = jbs.BlockMask.from_mask(mask, bs) if traced else layout

        def fwd(q, k, v):
            return jbs.attention(q, k, v, m, causal=causal, scale=float(scale),
                                 kv_lengths=kv_lengths, q_segment_ids=q_ids,
                                 kv_segment_ids=kv_ids, return_lse=True,
                                 q_offset=None if offsets is None else jnp.asarray(offsets))
        (o, lse), vjp = jax.vjp(fwd, q, k, v)
        return (o, lse, *vjp((do, jnp.zeros_like(lse))))

    if offsets is None:
        allowed = allowed_pairs(block_mask, bs, tq, tk, causal, kv, q_ids, kv_ids)
    else:  # the rows of the mask's full query axis at the queries' positions
        rows = np.shape(block_mask)[-2] * bs
        full = allowed_pairs(block_mask, bs, rows, tk, False, kv)
        full = np.broadcast_to(full, (b,) + full.shape[1:])
        pos = offsets[:, None] + np.arange(tq)  # [B, Tq]
        allowed = np.stack([full[i][:, pos[i]] for i in range(b)])
        if causal:
            allowed = allowed & (np.arange(tk) <= pos[:, None, :, None])
        if q_ids is not None:
            allowed = allowed & (q_ids[:, None, :, None] == kv_ids[:, None, None, :])
    zeros = np.zeros((b, hq, tq), np.float32)
    want = attention64(q, k, v, allowed, scale, do, zeros)
    as_ids = lambda x: None if x is None else jnp.asarray(x, jnp.int32)
    args = (q, k, v, do, jnp.asarray(kv, jnp.int32), jnp.asarray(block_mask), as_ids(q_ids),
            as_ids(kv_ids))
    return jax.jit(f), args, kv, want


def check_docs(name, dtype, platform):
    """o, lse, dq, dk, dv against the float64 reference; dk, dv rows past kv_lengths 0;
    every result bitwise equal over two runs and with NaN planted past kv_lengths. Returns
    (the jitted function, its inputs, its results)."""
    f, args, kv, want = build_docs(name, dtype)
    poison(platform)
    got = f(*args)
    # where nothing contributes: o and dq of rows with no allowed key (o exactly 0 in float64),
    # dk and dv of keys no query attends (dv exactly 0). Not `want == 0` for the gradients: a
    # query with one allowed key has dS = P (dP - delta) = 0 in exact arithmetic only.
    unattended = {"o": want[0] == 0, "dq": want[0] == 0, "dk": want[4] == 0, "dv": want[4] == 0}
    for what, g, w in zip(NAMES, got, want):
        if what == "lse":
            assert lse_err(g, w) < LSE_TOLERANCE, what
            continue
        assert np.all(np.isfinite(f64(g))), f"{what}: not finite"
        assert rel_err(g, w) < ATTENTION_TOLERANCE[dtype], (what, rel_err(g, w))
        assert np.all(f64(g)[unattended[what]] == 0), f"{what}: not zero where nothing contributes"
    for what, g in zip(("dk", "dv"), got[3:]):
        for b, n in enumerate(kv):
            assert np.all(f64(g)[b, n:] == 0), f"{what}: rows past kv_lengths[{b}] not 0"
    poison(platform)
    again = f(*args)
    for what, g, a in zip(NAMES, got, again):
        np.testing.assert_array_equal(f64(a), f64(g), err_msg=f"{what}: not deterministic")
    if np.any(kv < args[1].shape[1]):  # NaN past kv_lengths changes nothing
        q, k, v, *rest = args
        poison(platform)
        nan = f(q, plant_nan(k, kv), plant_nan(v, kv), *rest)
        for what, g, n in zip(NAMES, got, nan):
            np.testing.assert_array_equal(f64(n), f64(g), err_msg=f"{what}: NaN past kv_lengths")
    return f, args, got


def run_doc_cases(cases):
    run_each(check_docs, cases)


@pytest.mark.parametrize("variant,names", [("", c) for c in chunks(DOC_CASES, 2)] +
                         [("3", ("docs_local_causal", "tail_d256_docs_kv_lengths")),
                          ("0", ("docs_local_causal", "per_batch_mask_causal_kv_lengths")),
                          ("0", ("qoff_d96_causal_chunk",)),
                          ("0", ("tail_causal_tq_lt_tk", "qoff_bs64_docs"))],
                         ids=case_id)
def test_fa3_forward_documents(variant, names):
    """Segment ids and masks per batch entry: the FA3-design forward takes them (default and
    variant 3; the backward, variant 0 under the tests' switches, runs the pure-JAX path: no
    fused backward launch); with
    the FA2 forward forced (0) the forward runs the pure-JAX path too. Values, lse and
    gradients against the float64 reference either way."""
    if not sm90():
        pytest.skip("the FA3-design forward needs an sm_90 GPU (H100 / H200)")
    cases = [(name, dtype) for name in names for dtype in ("bf16", "f16")]
    stderr = run_python(f"import test_gpu_attention_sm90 as t; t.run_doc_cases({cases!r})",
                        JAX_BLOCKSPARSE_DEBUG="1",
                        JAX_BLOCKSPARSE_ATTN_FWD_VARIANT=variant).stderr
    logs = kernels_by_case(stderr)
    for case in cases:
        bs = DOC_CASES[case[0]][10]
        want = FA3_BS64 if bs == BS64 else FA3[variant if variant != "0" else ""]
        launches = logs.get(" ".join(case), [])
        assert not any(op == "attention_bwd" for op, _ in launches), (case, launches)
        forward = [kernel for op, kernel in launches if op == "attention_fwd"]
        if variant == "0":
            assert not forward, (case, launches)
        else:
            assert forward and all(k == want for k in forward), (case, launches)


# ------------------------------------------- block sizes 16 and 32 (forward, 128 x 128 tiles)
def fine_mask(seed, shape, density, empty_every=5):
    """A random block mask whose every `empty_every`-th key block column (from a random
    first one) is empty for every row: keys that no query attends, inside tiles that other
    columns list (the kernel zeroes their V rows; NaN planted there must change nothing)."""
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < density
    mask[..., rng.integers(empty_every)::empty_every] = False
    mask[..., rng.integers(shape[-2]), :] = False  # an empty query block row
    return mask


# The format of DOC_CASES; the block size (11th entry) 16 or 32: the FA3-design forward at
# block 128 on tiles of (128 / bs)^2 mask blocks (attention_metadata.tile_lists).
FINE_CASES = {
    "fine16_local_causal_gqa": (lambda: jbs.layouts.local(2048, 16, 256).mask, True,
                                2, 2048, 2048, 4, 2, None, False, 128, 16, None),
    "fine32_random_kv_lengths": (lambda: fine_mask(51, (32, 32), 0.4), False,
                                 3, 1024, 1024, 4, 4, [1024, 700, 0], False, 128, 32, None),
    "fine16_d64_traced_per_head_causal": (lambda: fine_mask(52, (4, 64, 64), 0.3), True,
                                          2, 1024, 1024, 4, 2, [1024, 900], True, 64, 16,
                                          None),
    "fine32_per_batch_traced_gqa4": (lambda: fine_mask(53, (2, 1, 32, 32), 0.3), True,
                                     2, 1024, 1024, 8, 2, [1000, 640], True, 128, 32, None),
    "fine32_dense_full_tiles": (lambda: np.ones((32, 32), bool), False,
                                2, 1024, 1024, 4, 4, None, False, 128, 32, None),
    "fine16_docs_causal": (lambda: jbs.layouts.local(1024, 16, 256).mask, True,
                           2, 1024, 1024, 4, 2, None, False, 128, 16, "packed"),
    "fine32_tail_d64_docs_kv_lengths": (lambda: fine_mask(54, (32, 35), 0.4), True,
                                        2, 1000, 1100, 4, 4, [1100, 517], False, 64, 32,
                                        "tail"),
    "fine16_tail_d64_traced_tq1000": (lambda: fine_mask(55, (63, 63), 0.3), True,
                                      2, 1000, 1000, 4, 2, None, True, 64, 16, None),
    "fine16_qoff_causal": (lambda: np.tril(np.ones((128, 128), bool)), True,
                           2, 300, 2048, 4, 2, [1300, 2048], False, 128, 16, None, [1000, 1748]),
    "fine32_qoff_traced_docs": (lambda: jbs.layouts.local(1024, 32, 256).mask, True,
                                2, 200, 1024, 4, 4, [300, 1024], True, 128, 32, "offset",
                                [100, 824]),
    # head dims 96 and 256 (D 256: each 128-key tile runs as two 64-key sub-tiles, the
    # bits' columns those of the 128-key tile)
    "fine16_d256_causal_kv_lengths": (lambda: fine_mask(56, (64, 64), 0.35), True,
                                      2, 1024, 1024, 4, 2, [1024, 777], False, 256, 16, None),
    "fine32_d96_traced_docs": (lambda: fine_mask(57, (32, 32), 0.4), False,
                               2, 1000, 1000, 4, 4, [1000, 600], True, 96, 32, "packed"),
    "fine32_d256_tail_traced_docs": (lambda: fine_mask(58, (32, 35), 0.4), True,
                                     2, 1000, 1100, 4, 4, [1100, 517], True, 256, 32, "tail"),
    "fine16_d256_qoff_docs": (lambda: jbs.layouts.local(1024, 16, 256).mask, True,
                              2, 200, 1024, 4, 2, [300, 1024], False, 256, 16, "offset",
                              [100, 824]),
}


def unread_keys(name):
    """bool `[B, Tk, Hkv]`: keys in block columns that no row of any query head of their kv
    head's group lists (`FINE_CASES`' mask; never read into arithmetic)."""
    make_mask, _, b, _, tk, hq, hkv, *_, bs = doc_case(name)[:11]
    mask = np.asarray(make_mask(), bool)
    mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)  # [Bm, Hm, R, Rk]
    mask = np.broadcast_to(mask, (b, hq) + mask.shape[2:])
    listed = mask.any(axis=2).reshape(b, hkv, hq // hkv, -1).any(axis=2)  # [B, Hkv, Rk]
    return ~np.repeat(listed, bs, axis=-1)[:, :, :tk].transpose(0, 2, 1)


def check_fine(name, dtype, platform):
    """check_docs, then NaN in K and V at keys no query attends (the unlisted block columns,
    inside listed tiles, and past kv_lengths): the output bitwise unchanged."""
    f, args, got = check_docs(name, dtype, platform)
    o, lse = got[:2]
    q, k, v, do, kv_lengths, *rest = args
    unread = unread_keys(name) | (np.arange(k.shape[1])[None, :, None] >=
                                  np.asarray(kv_lengths)[:, None, None])
    if not unread.any():
        return
    plant = lambda x: jnp.where(jnp.asarray(unread)[..., None], jnp.nan, x)
    poison(platform)
    o4, lse4, *_ = f(q, plant(k), plant(v), do, kv_lengths, *rest)
    np.testing.assert_array_equal(f64(o4), f64(o), err_msg="o: NaN in unread keys")
    np.testing.assert_array_equal(f64(lse4), f64(lse), err_msg="lse: NaN in unread keys")


def run_fine_cases(cases):
    run_each(check_fine, cases)


@pytest.mark.parametrize("variant,names", [("", c) for c in chunks(FINE_CASES, 2)] +
                         [("3", ("fine16_local_causal_gqa", "fine32_random_kv_lengths")),
                          ("0", ("fine16_docs_causal",))], ids=case_id)
def test_fa3_forward_block_sizes_16_32(variant, names):
    """Block sizes 16 and 32: the FA3-design forward (block 128 kernel, mask_bs in its
    debug line) takes them by default and with variant 3; the backward (variant 0 under the
    tests' switches) runs the pure-JAX path; with the FA2 forward forced (0) the forward too. Values, lse and dq against the
    float64 reference; NaN at unread keys changes nothing."""
    if not sm90():
        pytest.skip("the FA3-design forward needs an sm_90 GPU (H100 / H200)")
    cases = [(name, dtype) for name in names for dtype in ("bf16", "f16")]
    stderr = run_python(f"import test_gpu_attention_sm90 as t; t.run_fine_cases({cases!r})",
                        JAX_BLOCKSPARSE_DEBUG="1",
                        JAX_BLOCKSPARSE_ATTN_FWD_VARIANT=variant).stderr
    logs = kernels_by_case(stderr)
    for case in cases:
        launches = logs.get(" ".join(case), [])
        assert not any(op == "attention_bwd" for op, _ in launches), (case, launches)
        forward = [kernel for op, kernel in launches if op == "attention_fwd"]
        if variant == "0":
            assert not forward, (case, launches)
        else:
            assert forward and all(k == FA3[variant] for k in forward), (case, launches)
    if variant != "0":
        for name in names:
            assert f"mask_bs={doc_case(name)[10]}" in stderr, name


# ------------------------------------------- the persistent forward (opt-in switch)
# JAX_BLOCKSPARSE_ATTN_FWD_PERSISTENT=1: the same kernels as persistent CTAs looping over
# the (batch, head, query block) work items; JAX_BLOCKSPARSE_ATTN_FWD_PERSISTENT_CTAS=n
# caps the grid at n CTAs, so that on these small shapes each CTA runs many items (the
# mbarrier ring and the two Q buffers cross items; items without keys between others).
FA3_PERSISTENT = {"": "fa3_forward(wgmma, tma, ws, pingpong, persistent)",
                  "3": "fa3_forward(wgmma, tma, ws, persistent)"}
FA3_BS64_PERSISTENT = "fa3_forward(wgmma, tma, ws, 64-row CTA, persistent)"


def expected_persistent(variant, bs):
    """The forward kernel's debug name with the persistent switch set (bs: the kernel's
    block size, 128 for masks of block size 16 / 32)."""
    return FA3_BS64_PERSISTENT if bs == BS64 else FA3_PERSISTENT[variant]


def case_kind(name):
    """(checker runner, kernel block size) of a CASES, DOC_CASES or FINE_CASES case."""
    if name in CASES:
        return "run_cases", block_size(name)
    runner = "run_doc_cases" if name in DOC_CASES else "run_fine_cases"
    return runner, BS64 if doc_case(name)[10] == BS64 else BS


PERSISTENT_CASES = [
    "local_causal", "random_empty_rows", "gqa4_per_head_causal", "tq_gt_tk_causal",
    "kv_lengths_causal", "one_block_sequence", "d64_tq_gt_tk_causal", "d96_per_head_kv_lengths",
    "d256_traced_per_head_causal_kv_lengths", "bs64_local_causal",
    "bs64_gqa4_per_head_causal_kv_lengths", "bs64_d96_traced_noncausal", "bs64_d256_local_causal",
    "docs_local_causal", "docs_dense_kv_lengths", "tail_docs_kv_lengths", "qoff_causal_chunk",
    "tail_short_queries_docs", "docs_bs64_d64_causal_kv_lengths", "tail_bs64_gqa4_per_head_docs",
    "tail_d256_docs_kv_lengths", "docs_d256_bs64_traced_per_head", "qoff_d96_causal_chunk",
    "fine16_local_causal_gqa", "fine32_random_kv_lengths", "fine16_docs_causal",
    "fine16_tail_d64_traced_tq1000", "fine32_d96_traced_docs", "fine32_d256_tail_traced_docs"]
# (variant, CTA cap ("": one per SM, two at block 64), cases)
PERSISTENT_RUNS = ([("", "", c) for c in chunks(PERSISTENT_CASES, 3)] +
                   [("", "3", c) for c in chunks(PERSISTENT_CASES, 3)] +
                   [("3", "2", ("local_causal", "d256_traced_per_head_causal_kv_lengths",
                                "docs_dense_kv_lengths", "fine32_d256_tail_traced_docs"))])


def persistent_env(variant, ctas):
    env = {"JAX_BLOCKSPARSE_ATTN_FWD_PERSISTENT": "1", "JAX_BLOCKSPARSE_ATTN_FWD_VARIANT": variant}
    if ctas:
        env["JAX_BLOCKSPARSE_ATTN_FWD_PERSISTENT_CTAS"] = ctas
    return env


def run_forward_cases(names, **env):
    """Each of `names` in bf16 and f16 through its checker (case_kind), in one process with
    JAX_BLOCKSPARSE_DEBUG=1 and `env`: (the (name, dtype) cases, that process's stderr)."""
    cases = [(name, dtype) for name in names for dtype in ("bf16", "f16")]
    runners = {}
    for case in cases:
        runners.setdefault(case_kind(case[0])[0], []).append(case)
    code = "import test_gpu_attention_sm90 as t; " + "; ".join(
        f"t.{runner}({group!r})" for runner, group in runners.items())
    return cases, run_python(code, JAX_BLOCKSPARSE_DEBUG="1", **env).stderr


def assert_forward_kernels(stderr, cases, want_of):
    """Every forward launch of each case names want_of(case name)."""
    logs = kernels_by_case(stderr)
    for case in cases:
        launches = logs.get(" ".join(case), [])
        forward = [kernel for op, kernel in launches if op == "attention_fwd"]
        want = want_of(case[0])
        assert forward and all(k == want for k in forward), (case, want, launches)


@pytest.mark.parametrize("variant,ctas,names", PERSISTENT_RUNS,
                         ids=case_id)
def test_fa3_forward_persistent(variant, ctas, names):
    """The persistent forward on the cases of every mask source (each case's checker:
    values against the float64 reference, bitwise equal over two runs, NaN past kv_lengths
    or in unread keys changing nothing), with the default grid and with a few CTAs."""
    if not sm90():
        pytest.skip("the FA3-design forward needs an sm_90 GPU (H100 / H200)")
    cases, stderr = run_forward_cases(names, **persistent_env(variant, ctas))
    assert_forward_kernels(stderr, cases,
                           lambda name: expected_persistent(variant, case_kind(name)[1]))


# ------------------------------------------- the forward's softmax switches
# By default a row's running maximum moves only when a tile's exceeds it by more than 8
# (log2 units), and O is rescaled only in warps where one moved (every test above runs
# so). JAX_BLOCKSPARSE_ATTN_FWD_LAZY_RESCALE=0: every new maximum moves it (" eager-rescale").
# Plain and persistent (each case's checker as above: values and lse against the float64
# reference, bitwise equal over two runs).
SOFTMAX_SWITCHES = {"eager-rescale": {"JAX_BLOCKSPARSE_ATTN_FWD_LAZY_RESCALE": "0"}}
SOFTMAX_RUNS = ([("0", c) for c in chunks(PERSISTENT_CASES, 3)] +
                [("1", ("local_causal", "docs_dense_kv_lengths", "fine16_docs_causal"))])


def switch_id(switch):
    return switch or "default"


@pytest.mark.parametrize("switch", SOFTMAX_SWITCHES, ids=switch_id)
@pytest.mark.parametrize("persistent,names", SOFTMAX_RUNS, ids=case_id)
def test_fa3_forward_softmax_switches(persistent, names, switch):
    if not sm90():
        pytest.skip("the FA3-design forward needs an sm_90 GPU (H100 / H200)")
    cases, stderr = run_forward_cases(names, JAX_BLOCKSPARSE_ATTN_FWD_PERSISTENT=persistent,
                                      **SOFTMAX_SWITCHES[switch])
    plain = lambda name: FA3_BS64 if case_kind(name)[1] == BS64 else FA3[""]
    kernel = lambda name: (expected_persistent("", case_kind(name)[1]) if persistent == "1"
                           else plain(name))
    assert_forward_kernels(stderr, cases, lambda name: f"{kernel(name)} {switch}")


def check_growing_scores(dtype, causal):
    """Scores that grow along the keys, in steps per 128-key tile of 4 (5.8 in log2 units:
    the lazy rescale holds the maximum) and then 9 (13: it moves), so that both of its paths
    run on every row: o and lse against the float64 reference."""
    b, t, h, d = 1, 1024, 2, 128
    rng = np.random.default_rng(91)
    w = rng.standard_normal(d)
    w *= np.sqrt(d) / np.linalg.norm(w)  # |w|^2 = D: q = w, k = beta / sqrt(D) w give beta
    beta = np.repeat(np.array([0, 4, 8, 12, 21, 30, 39, 48], float), t // 8)
    q = w + 0.1 * rng.standard_normal((b, t, h, d))
    k = (beta[:, None, None] / np.sqrt(d) * w) + 0.1 * rng.standard_normal((b, t, h, d))
    v = rng.standard_normal((b, t, h, d))
    q, k, v = (jnp.asarray(x, dtype) for x in (q, k, v))
    layout = jbs.Layout(np.ones((t // BS, t // BS), bool), BS)
    scale = 1 / np.sqrt(d)
    f = jax.jit(lambda q, k, v: jbs.attention(q, k, v, layout, causal=causal, scale=scale,
                                              return_lse=True))
    o, lse = f(q, k, v)
    allowed = attention_mask64(layout, causal, t, t, [t])
    zeros = np.zeros((b, t, h, d)), np.zeros((b, h, t))
    want_o, want_lse = attention64(q, k, v, allowed, scale, *zeros)[:2]
    assert rel_err(o, want_o) < ATTENTION_TOLERANCE[dtype], ("o", rel_err(o, want_o))
    assert lse_err(lse, want_lse) < LSE_TOLERANCE, ("lse", lse_err(lse, want_lse))


def run_growing(cases):
    """check_growing_scores on each (dtype name, causal) after a `mark_case` line."""
    for dtype, causal in cases:
        mark_case(f"growing {dtype} {causal}")
        check_growing_scores(DTYPES[dtype], causal)


@pytest.mark.parametrize("switch", ("", *SOFTMAX_SWITCHES), ids=switch_id)
def test_fa3_forward_growing_scores(switch):
    """The forward (the default, the eager rescale) on scores that grow along the keys by
    less and by more than the lazy rescale's slack."""
    if not sm90():
        pytest.skip("the FA3-design forward needs an sm_90 GPU (H100 / H200)")
    cases = [(dtype, causal) for dtype in ("bf16", "f16") for causal in (False, True)]
    stderr = run_python(f"import test_gpu_attention_sm90 as t; t.run_growing({cases!r})",
                        JAX_BLOCKSPARSE_DEBUG="1", **SOFTMAX_SWITCHES.get(switch, {})).stderr
    logs = kernels_by_case(stderr)
    for dtype, causal in cases:
        forward = [k for op, k in logs.get(f"growing {dtype} {causal}", [])
                   if op == "attention_fwd"]
        want = FA3[""] + (f" {switch}" if switch else "")
        assert forward and all(k == want for k in forward), (dtype, causal, forward)


def save_forward(cases, path):
    """o and lse of each (case name, dtype) into the npz `path` (float64)."""
    platform = jax.devices()[0].platform
    out = {}
    for name, dtype in cases:
        mark_case(name + " " + dtype)
        make = build if name in CASES else build_docs
        f, args, *_ = make(name, DTYPES[dtype])
        poison(platform)
        o, lse = f(*args)[:2]
        out[f"{name} {dtype} o"], out[f"{name} {dtype} lse"] = f64(o), f64(lse)
    np.savez(path, **out)


BITWISE_CASES = ["gqa4_per_head_causal", "d256_traced_per_head_causal_kv_lengths",
                 "bs64_gqa4_per_head_causal_kv_lengths", "docs_dense_kv_lengths",
                 "tail_bs64_gqa4_per_head_docs", "fine16_docs_causal"]


@pytest.mark.parametrize("names", chunks(BITWISE_CASES, 3), ids=case_id)
def test_fa3_forward_persistent_bitwise(tmp_path, names):
    """o and lse of the persistent forward on one CTA, on the default grid and of the plain
    forward: bitwise equal (each output tile is computed by one CTA, the same code, in the
    same order, whichever CTA runs it)."""
    if not sm90():
        pytest.skip("the FA3-design forward needs an sm_90 GPU (H100 / H200)")
    cases = [(name, dtype) for name in names for dtype in ("bf16", "f16")]
    runs = {"plain": {}, "persistent": persistent_env("", ""),
            "one_cta": persistent_env("", "1")}
    results = {}
    for label, env in runs.items():
        path = str(tmp_path / f"{label}.npz")
        stderr = run_python(f"import test_gpu_attention_sm90 as t; t.save_forward({cases!r}, "
                            f"{path!r})", JAX_BLOCKSPARSE_DEBUG="1", **env).stderr
        persistent = label != "plain"
        assert_forward_kernels(
            stderr, cases,
            lambda name: (expected_persistent("", case_kind(name)[1]) if persistent else
                          FA3_BS64 if case_kind(name)[1] == BS64 else FA3[""]))
        results[label] = dict(np.load(path))
    for label in ("persistent", "one_cta"):
        for key, value in results["plain"].items():
            np.testing.assert_array_equal(results[label][key], value, err_msg=f"{label}: {key}")


def sections_forward(path):
    """`test_fa3_forward_head_sections_by_layout`'s forwards (B 1, S 8192, 8 heads, D 128,
    bf16: 4 MB of K/V per head, more than half the L2 of an H100 / H200 holds for all 8,
    so "l2" sections split them): a strided layout (no global query row: sections asked
    for), a layout with global query rows (none asked for) and the strided one as a traced
    `BlockMask` (none); o and lse of each saved to `path`, each case's launches marked."""
    rng = np.random.default_rng(61)
    q, k, v = (random(rng, (1, 8192, 8, 128), jnp.bfloat16) for _ in range(3))
    strided = jbs.layouts.strided(8192, BS, 1024)
    rows = np.eye(64, dtype=bool)
    rows[::8] = True  # a global query row every 8 blocks: under a quarter visited
    calls = {"strided": (strided, True), "global_rows": (jbs.Layout(rows, BS), False),
             "block_mask": (jbs.BlockMask.from_mask(jnp.asarray(strided.mask), BS), True)}
    out = {}
    for name, (mask, causal) in calls.items():
        mark_case(name)
        o, lse = jax.jit(lambda q, k, v: jbs.attention(q, k, v, mask, causal=causal,
                                                       return_lse=True))(q, k, v)
        out[name + "_o"], out[name + "_lse"] = np.asarray(o.astype(jnp.float32)), np.asarray(lse)
    np.savez(path, **out)


def test_fa3_forward_head_sections_by_layout(tmp_path):
    """With JAX_BLOCKSPARSE_ATTN_HEAD_SECTIONS unset, the forward of a static layout without
    global query rows asks for L2-sized sections of heads (`_cuda.forward_head_sections`;
    its launch line names `head-sections`), one with global query rows and a traced
    `BlockMask` do not; the outputs are bitwise those of one section
    (JAX_BLOCKSPARSE_ATTN_HEAD_SECTIONS=0, which decides for every call) and of "l2"
    sections for every call, and finite."""
    if not sm90():
        pytest.skip("the FA3-design forward needs an sm_90 GPU (H100 / H200)")
    results = {}
    for label, setting in (("unset", None), ("one", "0"), ("l2", "l2")):
        path = str(tmp_path / f"{label}.npz")
        stderr = run_python(f"import test_gpu_attention_sm90 as t; t.sections_forward({path!r})",
                            JAX_BLOCKSPARSE_DEBUG="1",
                            JAX_BLOCKSPARSE_ATTN_HEAD_SECTIONS=setting).stderr
        for name, lines in launch_lines_by_case(stderr).items():
            forward = [line for line in lines if " attention_fwd " in line]
            assert forward and all("kernel=fa3_forward" in line for line in forward), lines
            asked = all(" head-sections" in line for line in forward)
            assert asked == (name == "strided") and (asked or not any(
                " head-sections" in line for line in forward)), (label, name, forward)
        results[label] = dict(np.load(path))
    for key, value in results["unset"].items():
        assert np.isfinite(value).all(), key
        for label in ("one", "l2"):
            np.testing.assert_array_equal(results[label][key], value, err_msg=f"{label}: {key}")
