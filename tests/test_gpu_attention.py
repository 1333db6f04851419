"""The fused attention kernels on a GPU against the float64 reference: o, lse, dq, dk, dv
(with cotangents of both o and lse) on fresh random inputs, over local causal layouts,
random masks with empty query rows, per-head masks, GQA 2 and 8, Tq != Tk with causality,
kv_lengths shorter than Tk (0 included); bitwise equal over two runs; exact zeros where
no key (or no query) contributes (the forward is the default one: on an sm_90 GPU the
FA3-design forward at block size 128). Then the forward chosen by each value of its
switch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_blocksparse as jbs
from reference import (ATTENTION_TOLERANCE, LSE_TOLERANCE, attention64, attention_mask64, f64,
                       kernels_by_case, lse_err, mark_case, random, rel_err, run_python)
from test_matmul import poison

pytestmark = pytest.mark.gpu

DTYPES = {"bf16": jnp.bfloat16, "f16": jnp.float16}


def random_mask(seed, shape, density, empty_row=True):
    """A random block mask; with `empty_row`, one query block row (per head) is empty."""
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < density
    if empty_row:
        mask[..., rng.integers(shape[-2]), :] = False
    return mask


CASES = {
    # name: (layout, causal, B, Tq, Tk, Hq, Hkv, D, dtype, kv_lengths)
    "local_causal_bs128_d128": (lambda: jbs.layouts.local(1024, 128, 384), True,
                                2, 1024, 1024, 4, 4, 128, "bf16", None),
    "local_causal_bs64_d64": (lambda: jbs.layouts.local(512, 64, 192), True,
                              2, 512, 512, 4, 4, 64, "f16", None),
    "random_empty_rows_bs64_d64": (lambda: jbs.Layout(random_mask(1, (8, 8), 0.4), 64), False,
                                   2, 512, 512, 4, 4, 64, "f16", None),
    "random_empty_rows_bs128_d128": (lambda: jbs.Layout(random_mask(2, (4, 4), 0.5), 128),
                                     False, 2, 512, 512, 4, 4, 128, "bf16", None),
    "per_head_causal_bs64_d128": (lambda: jbs.Layout(random_mask(3, (4, 8, 8), 0.5), 64),
                                  True, 2, 512, 512, 4, 4, 128, "bf16", None),
    "gqa2_local_causal_bs128_d64": (lambda: jbs.layouts.local(512, 128, 256), True,
                                    2, 512, 512, 4, 2, 64, "bf16", None),
    "gqa8_per_head_causal_bs64_d128": (lambda: jbs.Layout(random_mask(4, (8, 8, 8), 0.5), 64),
                                       True, 1, 512, 512, 8, 1, 128, "f16", None),
    "gqa8_shared_bs128_d128": (lambda: jbs.Layout(random_mask(5, (4, 4), 0.6), 128), True,
                               1, 512, 512, 8, 1, 128, "bf16", None),
    "tq_lt_tk_causal_bs64_d128": (lambda: jbs.Layout(np.ones((4, 12), bool), 64), True,
                                  2, 256, 768, 4, 4, 128, "bf16", None),
    "tq_gt_tk_causal_bs128_d64": (lambda: jbs.Layout(np.ones((4, 2), bool), 128), True,
                                  2, 512, 256, 4, 2, 64, "bf16", None),
    "kv_lengths_bs128_d128": (lambda: jbs.Layout(random_mask(6, (4, 4), 0.7, False), 128),
                              False, 3, 512, 512, 4, 4, 128, "bf16", [512, 300, 0]),
    "kv_lengths_causal_bs64_d64": (lambda: jbs.layouts.local(512, 64, 256), True,
                                   3, 512, 512, 4, 2, 64, "f16", [200, 511, 64]),
    "tq_lt_tk_causal_kv_lengths_per_head_bs128_d128": (
        lambda: jbs.Layout(random_mask(7, (4, 2, 6), 0.7, False), 128), True,
        2, 256, 768, 4, 4, 128, "bf16", [700, 384]),
}


def build(name, dtype=None, seed=0):
    """(jitted program, its arguments, the float64 results it must give) for case `name`
    on fresh random inputs: o, lse and the gradients for cotangents do (of o) and dlse (of
    lse)."""
    make_layout, causal, b, tq, tk, hq, hkv, d, case_dtype, kv = CASES[name]
    dtype = dtype or DTYPES[case_dtype]
    layout = make_layout()
    kv = np.full(b, tk) if kv is None else np.asarray(kv)
    kv_lengths = jnp.asarray(kv, jnp.int32)
    rng = np.random.default_rng([list(CASES).index(name), seed])
    q, do = random(rng, (b, tq, hq, d), dtype), random(rng, (b, tq, hq, d), dtype)
    k, v = random(rng, (b, tk, hkv, d), dtype), random(rng, (b, tk, hkv, d), dtype)
    dlse = random(rng, (b, hq, tq), jnp.float32)

    def f(q, k, v, do, dlse):
        (o, lse), vjp = jax.vjp(lambda q, k, v: jbs.attention(
            q, k, v, layout, causal=causal, kv_lengths=kv_lengths, return_lse=True), q, k, v)
        return (o, lse, *vjp((do, dlse)))

    allowed = attention_mask64(layout, causal, tq, tk, kv)
    want = attention64(q, k, v, allowed, 1 / np.sqrt(d), do, dlse)
    return jax.jit(f), (q, k, v, do, dlse), want


def verify(got, want, dtype, again=None):
    for name, g, w, a in zip(("o", "lse", "dq", "dk", "dv"), got, want, again or got):
        assert g.dtype == (jnp.float32 if name == "lse" else dtype), name
        if name == "lse":
            assert lse_err(g, w) < LSE_TOLERANCE, name
        else:
            assert rel_err(g, w) < ATTENTION_TOLERANCE[dtype], name
            assert np.all(f64(g)[w == 0] == 0), f"{name}: not zero where nothing contributes"
        np.testing.assert_array_equal(f64(g), f64(a), err_msg=f"{name}: not deterministic")


def check(name, dtype=None, platform="gpu"):
    f, args, want = build(name, dtype)
    poison(platform)
    got = f(*args)
    verify(got, want, dtype or DTYPES[CASES[name][8]], again=f(*args))


@pytest.mark.parametrize("name", CASES)
def test_fused_attention(name):
    check(name)


# ------------------------------------------------------------ the forward variant, forced
def run_cases(cases):
    """Checks each (case name, dtype name) on the default device after a `mark_case`
    line on stderr (called in a subprocess)."""
    platform = jax.devices()[0].platform
    for name, dtype in cases:
        mark_case(name + " " + dtype)
        check(name, DTYPES[dtype], platform)


def sm90():
    return getattr(jax.devices()[0], "compute_capability", None) == "9.0"


FA3_DEFAULT = "fa3_forward(wgmma, tma, ws, pingpong)"


@pytest.mark.parametrize("variant", ["", "0", "1"])
def test_forward_variant_switch(variant):
    """The forward each value of JAX_BLOCKSPARSE_ATTN_FWD_VARIANT runs at block size 128,
    correctly, both dtypes and head dims: unset, the FA3-design forward with ping-pong on
    an sm_90 GPU (the FA2 forward with 64-row CTAs elsewhere); 0, the FA2 forward with
    64-row CTAs (on Hopper too); 1, the FA2 forward with 128-row CTAs."""
    cases = [("local_causal_bs128_d128", "bf16"), ("gqa2_local_causal_bs128_d64", "f16"),
             ("tq_gt_tk_causal_bs128_d64", "bf16"),
             ("tq_lt_tk_causal_kv_lengths_per_head_bs128_d128", "f16")]
    stderr = run_python(f"import test_gpu_attention as t; t.run_cases({cases!r})",
                        JAX_BLOCKSPARSE_DEBUG="1", JAX_BLOCKSPARSE_ATTN_FWD_VARIANT=variant).stderr
    want = {"": FA3_DEFAULT if sm90() else "fa2_forward(64-row CTA)",
            "0": "fa2_forward(64-row CTA)", "1": "fa2_forward(128-row CTA)"}[variant]
    logs = kernels_by_case(stderr)
    for name, dtype in cases:
        launches = logs.get(name + " " + dtype, [])
        forward = [kernel for op, kernel in launches if op == "attention_fwd"]
        assert forward and any(op == "attention_bwd" for op, _ in launches), (name, launches)
        for kernel in forward:
            assert kernel == want, (name, kernel)


@pytest.mark.parametrize("backward", ["0", ""])
def test_delta_tiles_switch(backward):
    """Under JAX_BLOCKSPARSE_ATTN_DELTA_TILES=0 the backwards' delta comes from DeltaKernel
    (a warp a row; attention/fa2.cuh), not the default DeltaTileKernel (32 rows of one head
    a CTA, which every other backward test runs): o, lse, dq, dk, dv
    against float64 and bitwise deterministic, with the FA2 backward
    (JAX_BLOCKSPARSE_ATTN_BWD_VARIANT=0, the only one on GPUs before sm_90) and the default
    one (the one-pass Hopper backward on an sm_90 GPU), head dims 128 and 64, GQA, Tq < Tk
    with kv_lengths and per-head masks, and a cotangent on lse."""
    cases = [("local_causal_bs128_d128", "bf16"), ("gqa2_local_causal_bs128_d64", "f16"),
             ("tq_lt_tk_causal_kv_lengths_per_head_bs128_d128", "bf16")]
    stderr = run_python(f"import test_gpu_attention as t; t.run_cases({cases!r})",
                        JAX_BLOCKSPARSE_DEBUG="1", JAX_BLOCKSPARSE_ATTN_DELTA_TILES="0",
                        JAX_BLOCKSPARSE_ATTN_BWD_VARIANT=backward).stderr
    logs = kernels_by_case(stderr)
    for name, dtype in cases:
        launches = logs.get(name + " " + dtype, [])
        assert any(op == "attention_bwd" for op, _ in launches), (name, launches)
