"""The CUDA matmul kernels on a GPU, against the float64 reference (values and gradients,
relative error; bitwise equal over two runs; exact zeros where the product has no block):
every op, transposition, dtype variant and block size on odd sizes, batched operands,
special layouts, large problems and zero-size dimensions. Then each kernel variant forced
in turn (a fresh process per switch, the kernel that ran read from JAX_BLOCKSPARSE_DEBUG's
launch log), and the custom calls inside an XLA command buffer (a CUDA graph).

A dense operand whose rows are not 16-byte aligned (a row length that is not a multiple of
8 elements in 16 bits: the UNALIGNED sizes below) takes the tile kernels' scalar-copy path
(cuda/matmul/tc_tile.cuh) and, at block sizes 64 and 128, the mma.sync kernel instead of wgmma.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_blocksparse as jbs
from reference import (REFERENCES, VARIANTS, f64, grads64, kernels_by_case, mark_case,
                       random, rel_err, run_python)
from test_matmul import TRANSPOSES, make_case, odd_layout, poison

pytestmark = pytest.mark.gpu

OPS = ("sdd", "dsd", "dds")
BLOCK_SIZES = (16, 32, 64, 128)
# the free dimension's size (K of sdd, N of dsd, M of dds): a multiple of 8 (with a tail
# for every tile), or odd
ALIGNED = {"sdd": 200, "dsd": 136, "dds": 200}
UNALIGNED = {"sdd": 77, "dsd": 50, "dds": 37}


def rows_aligned(op, trans, free):
    """Whether every dense operand's rows are 16-byte aligned in a 16-bit dtype (unbatched;
    `Vec()` in cuda/matmul/dispatch.cu): the free size is the row length of sdd's a unless
    transposed and of its b when transposed, of dsd's b unless transposed, of dds's a when
    transposed."""
    t1, t2 = trans
    ok = free % 8 == 0
    return {"sdd": (t1 or ok) and (not t2 or ok), "dsd": t2 or ok, "dds": not t1 or ok}[op]


def value_and_grads(fn):
    """`(x, y, cot) -> (fn(x, y), dx, dy)`, jitted: one program, three launches."""
    def f(x, y, cot):
        out, vjp = jax.vjp(fn, x, y)
        return (out, *vjp(cot))
    return jax.jit(f)


def build(op, trans, variant, layout, rng, free, lead=(), shared=None, grads=True):
    """(jitted program, its arguments, per result its float64 value and reach: `verify`) for
    one call of `op` on fresh random inputs: its value and, with `grads` and unbatched
    operands, the gradients of `vdot(op(x, y), cot)`. `lead`: batch dimensions of both
    operands, or of all but operand `shared` (0 or 1), which the batch then shares."""
    dtype, precision, _ = VARIANTS[variant]
    fn, args, _ = make_case(op, trans, dtype, layout, rng, lead=lead, free=free)
    fn = functools.partial(fn, precision=precision)
    if shared is not None:
        args = tuple(a[0] if i == shared else a for i, a in enumerate(args))
    cot = random(rng, jax.eval_shape(fn, *args).shape, dtype)
    with_grads = grads and not lead
    values = float64_results(op, args, layout, trans, cot, with_grads)
    reach = float64_results(op, [jnp.abs(a) for a in args], layout, trans, jnp.abs(cot),
                            with_grads)
    want = list(zip(values, reach))
    if not with_grads:
        return jax.jit(lambda x, y, cot: (fn(x, y),)), (*args, cot), want
    return value_and_grads(fn), (*args, cot), want


def float64_results(op, args, layout, trans, cot, grads):
    """`op`'s float64 value and, with `grads`, the gradients of `vdot(op(x, y), cot)`
    (`build` takes them on the inputs' absolute values)."""
    value = [REFERENCES[op](*args, layout, *trans)]
    return value + grads64(op, args, layout, trans, cot) if grads else value


def verify(got, want, variant, again=None):
    """`want`: per result, its float64 value and the same result on the inputs' absolute
    values, which is 0 exactly where no block contributes (a sum of non-negative terms; the
    value itself can be 0 by cancellation)."""
    tol = VARIANTS[variant][2]
    for name, g, (w, reach), a in zip(("value", "grad x", "grad y"), got, want,
                                      again or got):
        assert rel_err(g, w) < tol, name
        g = f64(g)
        assert np.all(g[reach == 0] == 0), f"{name}: not exactly zero where no block contributes"
        np.testing.assert_array_equal(g, f64(a), err_msg=f"{name}: not deterministic")


def check(op, trans, variant, layout, rng, free, lead=(), shared=None, grads=True,
          platform="gpu"):
    """Builds one case, runs it twice (freed memory filled with NaN first) and verifies."""
    f, args, want = build(op, trans, variant, layout, rng, free, lead, shared, grads)
    poison(platform)
    got = f(*args)
    verify(got, want, variant, again=f(*args))


# ----------------------------------------------------------------- the correctness sweep
@pytest.mark.parametrize("bs", BLOCK_SIZES)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("op", OPS)
def test_every_variant_transposition_and_block_size(op, variant, bs):
    """Block row 1 and column 2 empty; every transposition on the odd free size (aligned
    sizes: test_matmul.test_values and the tests below)."""
    rng = np.random.default_rng([OPS.index(op), bs, list(VARIANTS).index(variant)])
    layout = odd_layout(bs, seed=bs)
    for trans in TRANSPOSES:
        check(op, trans, variant, layout, rng, UNALIGNED[op])


@pytest.mark.parametrize("variant, bs", [("bf16", 16), ("bf16", 64), ("f16", 128),
                                         ("f32", 32), ("f32hi", 32)])
@pytest.mark.parametrize("op", OPS)
def test_batched_operands(op, variant, bs):
    """Both operands batched, or one of them shared by the batch (batch stride 0), with
    aligned and odd row lengths."""
    rng = np.random.default_rng([OPS.index(op), bs, 1])
    layout = odd_layout(bs, seed=1)
    for trans, free in (((False, False), ALIGNED[op]), ((True, True), UNALIGNED[op])):
        for shared in (None, 0, 1):
            check(op, trans, variant, layout, rng, free, lead=(3,), shared=shared)


SPECIAL_LAYOUTS = {
    "single": np.array([[0, 0], [0, 1], [0, 0]], bool),
    "all": np.ones((3, 2), bool),
    "none": np.zeros((3, 2), bool),
}


@pytest.mark.parametrize("kind", SPECIAL_LAYOUTS)
@pytest.mark.parametrize("op", OPS)
def test_special_layouts(op, kind):
    rng = np.random.default_rng([OPS.index(op), list(SPECIAL_LAYOUTS).index(kind)])
    for bs in (32, 128):
        layout = jbs.Layout(SPECIAL_LAYOUTS[kind], bs)
        for trans in ((False, False), (True, True), (False, True)):
            check(op, trans, "bf16", layout, rng, ALIGNED[op])


@pytest.mark.parametrize("variant", ["bf16", "f16", "f32"])
@pytest.mark.parametrize("op", OPS)
def test_large(op, variant):
    """Many row tiles and long lines (a free size of 1000: a tail in every tile) at block
    sizes 64 and 128, which 16-bit operands run on wgmma (sm_90a)."""
    rng = np.random.default_rng([OPS.index(op), list(VARIANTS).index(variant), 1000])
    for bs in (64, 128):
        mask = np.random.default_rng(bs).random((10, 9)) < 0.5
        mask[3, :] = mask[:, 4] = False  # an empty block row and column
        layout = jbs.Layout(mask, bs)
        for trans in TRANSPOSES if variant != "f32" else TRANSPOSES[:1]:
            check(op, trans, variant, layout, rng, 1000)


@pytest.mark.parametrize("op", OPS)
def test_zero_size_free_dimension(op):
    """K = 0 (sdd), N = 0 (dsd), M = 0 (dds): the gradients that contract over it are
    exact zeros."""
    rng = np.random.default_rng([OPS.index(op), 0])
    for bs in (16, 64):
        check(op, (False, False), "bf16", odd_layout(bs), rng, 0)


# ------------------------------------------------------------- kernel variants, forced
# Cases: (op, (trans_1, trans_2), variant, block size, free size), run in a subprocess by
# `run_cases` and checked there (values only: one launch of `op` each); the launch log
# says which kernel each one ran.
def run_cases(cases):
    """Checks each case's value on the default device after a `mark_case` line on
    stderr."""
    platform = jax.devices()[0].platform
    for i, (op, trans, variant, bs, free) in enumerate(cases):
        mark_case(repr((op, trans, variant, bs, free)))
        check(op, trans, variant, odd_layout(bs, seed=i), np.random.default_rng(i), free,
              grads=False, platform=platform)


def launched(cases, runner="test_gpu_kernels.run_cases", none_ok=lambda case: False, **env):
    """{case: [kernel names of its launches of op case[0]]}, each case run and checked in a
    fresh process by `runner` (module.function, given the cases) with
    JAX_BLOCKSPARSE_DEBUG=1 and `env`; a case launches op at least once unless
    `none_ok(case)`."""
    module, function = runner.rsplit(".", 1)
    stderr = run_python(f"import {module} as t; t.{function}({cases!r})",
                        JAX_BLOCKSPARSE_DEBUG="1", **env).stderr
    logs = kernels_by_case(stderr)
    out = {}
    for case in cases:
        names = [kernel for op, kernel in logs.get(repr(case), []) if op == case[0]]
        assert names or none_ok(case), f"no matmul launch logged for {case}:\n{stderr[-3000:]}"
        out[case] = names
    return out


def is_wgmma(kernel):
    return "wgmma" in kernel


def is_mma_sync(kernel):  # the sm_80 tensor-core kernels (TF32 for float32)
    return "mma" in kernel.replace("wgmma", "") and "simple" not in kernel


def is_simple(kernel):
    return "simple" in kernel


def cases_of(configs, transposes, frees):
    return [(op, trans, variant, bs, free[op]) for variant, bs in configs for op in OPS
            for trans in transposes for free in frees]


def test_default_kernels():
    """16-bit operands at block 64/128 with aligned rows run wgmma on an sm_90 device
    (mma.sync elsewhere), unaligned rows mma.sync; at block 16/32 so do dds and dsd (the
    small wgmma kernel: tests/test_gpu_matmul_small_wgmma.py), sdd runs mma.sync; float32
    mma.sync (TF32); float32 at precision=HIGHEST the simple kernels."""
    hopper = jax.devices("gpu")[0].compute_capability == "9.0"
    cases = (cases_of([("bf16", 64), ("f16", 128)], TRANSPOSES, (ALIGNED, UNALIGNED)) +
             cases_of([("bf16", 16), ("f16", 32), ("f32", 64), ("f32hi", 128)],
                      TRANSPOSES[:1], (UNALIGNED,)))
    for (op, trans, variant, bs, free), kernels in launched(cases).items():
        case = (op, trans, variant, bs, free)
        if variant == "f32hi":
            assert all(map(is_simple, kernels)), (case, kernels)
        elif variant in ("bf16", "f16") and hopper and rows_aligned(op, trans, free) and (
                bs >= 64 or op != "sdd"):  # bs 16/32: dds/dsd on the small wgmma kernel
            assert all(map(is_wgmma, kernels)), (case, kernels)
        else:
            assert all(map(is_mma_sync, kernels)), (case, kernels)


def test_no_wgmma_forces_mma_sync():
    cases = cases_of([("bf16", 64), ("f16", 128)], TRANSPOSES, (ALIGNED,))
    for case, kernels in launched(cases, JAX_BLOCKSPARSE_NO_WGMMA="1").items():
        assert all(map(is_mma_sync, kernels)), (case, kernels)


def test_simple_kernels_switch():
    cases = cases_of([("bf16", 16), ("f16", 64), ("f32", 128), ("bf16", 128)],
                     [(False, False), (True, True)], (UNALIGNED,)) + \
        cases_of([("bf16", 64)], [(False, True)], (ALIGNED,))
    for case, kernels in launched(cases, JAX_BLOCKSPARSE_SIMPLE_KERNELS="1").items():
        assert all(map(is_simple, kernels)), (case, kernels)


# ------------------------------------------------------------------------- CUDA graphs
# XLA records the custom calls into a command buffer when CUSTOM_CALL is among its command
# types ("+" adds one to the default list); min_graph_size=1 lets a lone call form one.
COMMAND_BUFFER_FLAGS = ("--xla_gpu_enable_command_buffer=+CUSTOM_CALL "
                        "--xla_gpu_graph_min_graph_size=1")
CAPTURED = "captured in a CUDA graph"  # JAX_BLOCKSPARSE_DEBUG=2, src/debug.h


def run_programs_on_new_inputs():
    """Each op's value and gradients, and attention's output and gradients (bf16 and f16,
    wgmma and mma.sync sizes), each one program run on three sets of fresh inputs (new
    buffers: the recorded graph is updated or recorded again), checked every time; then
    decode calls (contiguous, paged), each one program on three sets of fresh values,
    against float64."""
    import test_gpu_attention as att

    mark_case("command buffers")
    rng = np.random.default_rng(8)
    for op in OPS:
        for variant, bs, trans, free in (("bf16", 64, (False, False), ALIGNED[op]),
                                         ("f16", 32, (True, True), UNALIGNED[op])):
            layout = odd_layout(bs)
            f, args, _ = build(op, trans, variant, layout, rng, free)
            # for the failure message: whether the optimized HLO names a command buffer
            # (it does where XLA forms them as an HLO pass, not at the thunk level)
            print(op, variant, "command_buffer" in f.lower(*args).compile().as_text())
            for _ in range(3):
                _, args, want = build(op, trans, variant, layout, rng, free)
                verify(f(*args), want, variant)
    for name, dtype in (("local_causal_bs64_d64", jnp.bfloat16),
                        ("gqa2_local_causal_bs128_d64", jnp.float16)):
        f = att.build(name, dtype, 0)[0]
        for seed in (1, 2, 3):
            _, args, want = att.build(name, dtype, seed)
            att.verify(f(*args), want, dtype)
    import test_decode as dec  # the decode kernel (its combine a dependent launch)
    for case in (dec.CASES[0], dec.CASES[1]):  # contiguous, paged
        dec.check_case("gpu", case, repeats=3, traced_lengths=True)


def test_custom_calls_in_a_cuda_graph():
    """Correct results from inside an XLA command buffer; the launch log (level 2) shows
    every custom call captured into a CUDA graph."""
    result = run_python("import test_gpu_kernels as t; t.run_programs_on_new_inputs()",
                        JAX_BLOCKSPARSE_DEBUG="2", XLA_FLAGS=COMMAND_BUFFER_FLAGS)
    launches = kernels_by_case(result.stderr)["command buffers"]
    for op in OPS + ("attention_fwd", "attention_bwd", "attention_decode"):
        logged = [kernel for name, kernel in launches if name == op]
        assert any(CAPTURED in kernel for kernel in logged), (op, logged, result.stdout)
