"""Values, gradients, vmap and jit of the matmul family against the float64 reference.

Every test runs on the CPU (the pure-JAX path) and, marked `gpu`, on an NVIDIA GPU (the CUDA
kernels). On the GPU each call is preceded by filling freed device memory with NaN, so a
kernel that skips writing part of its output fails.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jax_blocksparse as jbs
from reference import (REFERENCES, TOLERANCE, TOLERANCE_HIGHEST, dds64, dsd64, grads64,
                       random, rel_err, sdd64, to_dense64)

PLATFORMS = ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)]
DTYPES = [jnp.float32, jnp.float16, jnp.bfloat16]
TRANSPOSES = [(False, False), (False, True), (True, False), (True, True)]


@pytest.fixture(params=PLATFORMS)
def platform(request):
    with jax.default_device(jax.devices(request.param)[0]):
        yield request.param


def poison(platform, value=jnp.nan):
    """Leave `value` (NaN unless given) in freed device memory, where the next outputs are
    likely allocated."""
    if platform == "gpu":
        jnp.full((64 << 20,), value, jnp.float32).block_until_ready().delete()


def odd_layout(bs, seed=0):
    """4 x 5 blocks, random, with block row 1 and block column 2 empty."""
    mask = np.random.default_rng(seed).random((4, 5)) < 0.6
    mask[1, :] = False
    mask[:, 2] = False
    mask[0, 0] = mask[3, 4] = True
    return jbs.Layout(mask, bs)


LAYOUT_KINDS = {
    "odd": odd_layout,
    "single": lambda bs: jbs.Layout(np.eye(1, 3, 2, dtype=bool).reshape(1, 3), bs),
    "all": lambda bs: jbs.Layout(np.ones((2, 3), bool), bs),
    "empty": lambda bs: jbs.Layout(np.zeros((2, 3), bool), bs),
    "one_by_one": lambda bs: jbs.Layout(np.ones((1, 1), bool), bs),
}


def make_case(op, trans, dtype, layout, rng, lead=(), free=24):
    """Arguments and float64 reference of one call. `free` is the size of the dimension
    the layout does not fix (K for sdd, N for dsd, M for dds)."""
    t1, t2 = trans
    p, q = layout.shape
    bs, nnz = layout.block_size, layout.nnz

    def dense(rows, cols, t):
        return random(rng, lead + ((cols, rows) if t else (rows, cols)), dtype)

    if op == "sdd":
        args = (dense(p, free, t1), dense(free, q, t2))
        fn = functools.partial(jbs.sdd, layout=layout, trans_a=t1, trans_b=t2)
        ref = sdd64(*args, layout, t1, t2)
    elif op == "dsd":
        k = p if t1 else q
        args = (random(rng, lead + (nnz, bs, bs), dtype), dense(k, free, t2))
        fn = functools.partial(jbs.dsd, layout=layout, trans_s=t1, trans_b=t2)
        ref = dsd64(*args, layout, t1, t2)
    else:
        k = q if t2 else p
        args = (dense(free, k, t1), random(rng, lead + (nnz, bs, bs), dtype))
        fn = functools.partial(jbs.dds, layout=layout, trans_a=t1, trans_w=t2)
        ref = dds64(*args, layout, t1, t2)
    return fn, args, ref


def float64_enabled():
    """A context enabling float64 (`jax.enable_x64` moved out of experimental in 0.7)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64
    return enable_x64()


def run(platform, fn, *args):
    poison(platform)
    return jax.jit(fn)(*args)


# ---------------------------------------------------------------------------- values
@pytest.mark.parametrize("bs", [16, 32, 64, 128])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("trans", TRANSPOSES, ids=lambda t: "".join("TN"[not x] for x in t))
@pytest.mark.parametrize("op", ["sdd", "dsd", "dds"])
def test_values(platform, op, trans, dtype, bs):
    rng = np.random.default_rng([["sdd", "dsd", "dds"].index(op), TRANSPOSES.index(trans), bs])
    fn, args, ref = make_case(op, trans, dtype, odd_layout(bs, seed=bs), rng, free=40)
    assert rel_err(run(platform, fn, *args), ref) < TOLERANCE[dtype]


@pytest.mark.parametrize("kind", sorted(LAYOUT_KINDS))
@pytest.mark.parametrize("op", ["sdd", "dsd", "dds"])
def test_layout_kinds(platform, op, kind):
    rng = np.random.default_rng(7)
    layout = LAYOUT_KINDS[kind](16)
    for trans in TRANSPOSES:
        fn, args, ref = make_case(op, trans, jnp.float32, layout, rng)
        out = run(platform, functools.partial(fn, precision="highest"), *args)
        assert rel_err(out, ref) < TOLERANCE_HIGHEST, trans


@pytest.mark.parametrize("op", ["sdd", "dsd", "dds"])
def test_empty_rows_and_columns_are_exact_zeros(platform, op):
    rng = np.random.default_rng(3)
    layout = odd_layout(32)
    fn, args, _ = make_case(op, (False, False), jnp.bfloat16, layout, rng)
    out = np.asarray(run(platform, fn, *args).astype(jnp.float32))
    if op == "dsd":  # output rows of empty block row 1
        assert np.all(out[32:64] == 0)
    elif op == "dds":  # output columns of empty block column 2
        assert np.all(out[:, 64:96] == 0)
    else:
        assert np.all(np.isfinite(out))


@pytest.mark.parametrize("free", [1, 17, 200])
@pytest.mark.parametrize("op", ["sdd", "dsd", "dds"])
def test_free_dimension_sizes(platform, op, free):
    rng = np.random.default_rng(free)
    for trans in TRANSPOSES:
        fn, args, ref = make_case(op, trans, jnp.float32, odd_layout(16), rng, free=free)
        out = run(platform, functools.partial(fn, precision="highest"), *args)
        assert rel_err(out, ref) < TOLERANCE_HIGHEST


@pytest.mark.parametrize("op", ["sdd", "dsd", "dds"])
def test_leading_batch_dimensions(platform, op):
    rng = np.random.default_rng(11)
    layout = odd_layout(16)
    for trans in TRANSPOSES:
        fn, args, ref = make_case(op, trans, jnp.float32, layout, rng, lead=(2, 3))
        out = run(platform, functools.partial(fn, precision="highest"), *args)
        assert out.shape[:2] == (2, 3)
        assert rel_err(out, ref) < TOLERANCE_HIGHEST
        # one operand shared by the whole batch: equal to calling on each entry
        f = functools.partial(fn, precision="highest")
        for shared in (0, 1):
            one = list(args)
            one[shared] = args[shared][0, 0]
            got = run(platform, f, *one)
            each = [[f(*[a if s == shared else a[i, j] for s, a in enumerate(one)])
                     for j in range(3)] for i in range(2)]
            assert rel_err(got, np.asarray(each, np.float64)) < TOLERANCE_HIGHEST


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_matmul_leading_dims(platform, dtype):
    rng = np.random.default_rng(5)
    layout = jbs.layouts.random(64, 96, 32, 0.5, seed=2)
    x = random(rng, (2, 3, 64), dtype)
    w = random(rng, (layout.nnz, 32, 32), dtype)
    out = run(platform, functools.partial(jbs.matmul, layout=layout), x, w)
    assert out.shape == (2, 3, 96) and out.dtype == dtype
    assert rel_err(out, dds64(x, w, layout)) < TOLERANCE[dtype]


def test_precision_highest_is_exact_float32(platform):
    rng = np.random.default_rng(9)
    layout = jbs.layouts.random(128, 128, 32, 0.5, seed=3)
    x = random(rng, (64, 128), jnp.float32)
    w = random(rng, (layout.nnz, 32, 32), jnp.float32)
    out = run(platform, functools.partial(jbs.matmul, layout=layout, precision="highest"), x, w)
    assert rel_err(out, dds64(x, w, layout)) < TOLERANCE_HIGHEST


@pytest.mark.parametrize("generator", ["dense", "random", "barabasi_albert", "watts_strogatz"])
def test_weight_layout_generators(platform, generator):
    rng = np.random.default_rng(13)
    make = getattr(jbs.layouts, generator)
    layout = make(128, 128, 16) if generator == "dense" else make(128, 128, 16, 0.3, seed=1)
    x = random(rng, (33, 128), jnp.float32)
    w = random(rng, (layout.nnz, 16, 16), jnp.float32)
    out = run(platform, functools.partial(jbs.matmul, layout=layout, precision="highest"), x, w)
    assert rel_err(out, dds64(x, w, layout)) < TOLERANCE_HIGHEST


# ------------------------------------------------------------------------- gradients
# The ops are bilinear, so first-order central differences are exact for any step, and
# order 2 (whose checked function is cubic) is exact up to O(eps^2): a step of 1e-2 keeps
# float32 rounding, which grows as 1/eps, out of the comparison.
def test_matmul_check_grads_order_2(platform):
    rng = np.random.default_rng(17)
    layout = odd_layout(16)
    x = random(rng, (5, layout.shape[0]), jnp.float32)
    w = random(rng, (layout.nnz, 16, 16), jnp.float32)
    f = functools.partial(jbs.matmul, layout=layout, precision="highest")
    check_grads(f, (x, w), order=2, modes=["fwd", "rev"], eps=1e-2, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("trans", TRANSPOSES, ids=lambda t: "".join("TN"[not x] for x in t))
@pytest.mark.parametrize("op", ["sdd", "dsd", "dds"])
def test_family_check_grads(platform, op, trans):
    rng = np.random.default_rng(19)
    fn, args, _ = make_case(op, trans, jnp.float32, odd_layout(16), rng, free=8)
    f = functools.partial(fn, precision="highest")
    check_grads(f, args, order=2, modes=["fwd", "rev"], eps=1e-2, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("trans", TRANSPOSES, ids=lambda t: "".join("TN"[not x] for x in t))
@pytest.mark.parametrize("op", ["sdd", "dsd", "dds"])
def test_family_check_grads_float64(op, trans):
    """The JVP/transpose rules to second order, tightly, in float64 on the reference path
    (the primitives themselves, below the public ops)."""
    from jax_blocksparse import matmul_primitives as mp

    with float64_enabled(), jax.default_device(jax.devices("cpu")[0]):
        rng = np.random.default_rng(43)
        layout = odd_layout(16)
        _, args, _ = make_case(op, trans, jnp.float32, layout, rng, free=8)
        args = [a.astype(jnp.float64) for a in args]
        flags = {"sdd": ("trans_a", "trans_b"), "dsd": ("trans_s", "trans_b"),
                 "dds": ("trans_a", "trans_w")}[op]
        prim = getattr(mp, f"{op}_p")
        f = lambda x, y: prim.bind(x, y, layout=layout, precision=None,
                                   **dict(zip(flags, trans)))
        check_grads(f, args, order=2, modes=["fwd", "rev"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("trans", TRANSPOSES, ids=lambda t: "".join("TN"[not x] for x in t))
@pytest.mark.parametrize("op", ["sdd", "dsd", "dds", "matmul"])
def test_float64_values_and_gradients(op, trans):
    """With x64 on, every op of the family computes float64 in float64 (the pure-JAX path,
    which a GPU runs too): values and gradients equal the float64 numpy reference to
    float64 rounding (float32 anywhere on the way would be ~1e-7 off)."""
    if op == "matmul" and trans != (False, False):
        pytest.skip("matmul has no transposition flags")
    with float64_enabled(), jax.default_device(jax.devices("cpu")[0]):
        rng = np.random.default_rng(47)
        layout = odd_layout(16)
        kind = "dds" if op == "matmul" else op
        fn, args, _ = make_case(kind, trans, jnp.float64, layout, rng, free=8)
        args = [a + jnp.asarray(rng.standard_normal(a.shape), jnp.float64) * 1e-3
                for a in args]  # values no float32 holds
        if op == "matmul":
            fn = lambda x, w: jbs.matmul(x, w, layout)
        assert all(a.dtype == jnp.float64 for a in args) and jbs.DTYPES[-1] == jnp.float64
        out = jax.jit(fn)(*args)
        assert out.dtype == jnp.float64
        want = REFERENCES[kind](*args, layout, *trans)
        assert rel_err(out, want) < 1e-13
        cot = jnp.asarray(rng.standard_normal(out.shape), jnp.float64)
        grads = jax.jit(jax.grad(lambda x, y: jnp.vdot(fn(x, y), cot), argnums=(0, 1)))(*args)
        for got, want in zip(grads, grads64(kind, args, layout, trans, cot)):
            assert got.dtype == jnp.float64 and rel_err(got, want) < 1e-13


@pytest.mark.parametrize("trans", TRANSPOSES, ids=lambda t: "".join("TN"[not x] for x in t))
@pytest.mark.parametrize("op", ["sdd", "dsd", "dds"])
def test_gradients_match_dense_reference(platform, op, trans):
    """Gradients equal those of the dense masked product, taken at the blocks."""
    rng = np.random.default_rng(23)
    layout = odd_layout(16)
    fn, args, _ = make_case(op, trans, jnp.float32, layout, rng, free=24)
    t1, t2 = trans
    mask = jnp.asarray(to_dense64(np.ones((layout.nnz, 16, 16)), layout), jnp.float32)
    tr = lambda x, t: jnp.swapaxes(x, -1, -2) if t else x
    hp = dict(precision="highest")

    def dense_fn(x, y):  # the same function on dense matrices
        if op == "sdd":
            return jbs.from_dense(jnp.matmul(tr(x, t1), tr(y, t2), **hp) * mask, layout)
        if op == "dsd":
            return jnp.matmul(tr(jbs.to_dense(x, layout), t1), tr(y, t2), **hp)
        return jnp.matmul(tr(x, t1), tr(jbs.to_dense(y, layout), t2), **hp)

    cot = random(rng, jax.eval_shape(dense_fn, *args).shape, jnp.float32)
    poison(platform)
    got = jax.jit(jax.grad(lambda x, y: jnp.vdot(fn(x, y, **hp), cot), argnums=(0, 1)))(*args)
    want = jax.grad(lambda x, y: jnp.vdot(dense_fn(x, y), cot), argnums=(0, 1))(*args)
    for g, w in zip(got, want):
        assert rel_err(g, np.asarray(w, np.float64)) < 1e-5


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_matmul_grad_dtypes(platform, dtype):
    rng = np.random.default_rng(29)
    layout = jbs.layouts.random(64, 64, 16, 0.5, seed=4)
    x = random(rng, (3, 7, 64), dtype)
    w = random(rng, (layout.nnz, 16, 16), dtype)
    cot = random(rng, (3, 7, 64), dtype)
    poison(platform)
    dx, dw = jax.jit(jax.grad(
        lambda x, w: jnp.vdot(jbs.matmul(x, w, layout).astype(jnp.float32),
                              cot.astype(jnp.float32)), argnums=(0, 1)))(x, w)
    assert dx.dtype == dtype and dw.dtype == dtype
    assert rel_err(dx, dds64(cot, w, layout, False, True)) < TOLERANCE[dtype]
    assert rel_err(dw, sdd64(x.reshape(21, 64), cot.reshape(21, 64), layout, True, False)) \
        < TOLERANCE[dtype]


def test_transformations(platform):
    """jvp, linearize, linear_transpose, hessian and checkpoint all go through the rules."""
    rng = np.random.default_rng(31)
    layout = odd_layout(16)
    x = random(rng, (4, layout.shape[0]), jnp.float32)
    w = random(rng, (layout.nnz, 16, 16), jnp.float32)
    f = functools.partial(jbs.matmul, layout=layout, precision="highest")
    w_dense = to_dense64(w, layout)
    y, ydot = jax.jvp(f, (x, w), (x, w))
    assert rel_err(ydot, 2 * dds64(x, w, layout)) < TOLERANCE_HIGHEST
    _, lin = jax.linearize(lambda x: f(x, w), x)
    assert rel_err(lin(x), dds64(x, w, layout)) < TOLERANCE_HIGHEST
    (xt,) = jax.linear_transpose(lambda x: f(x, w), x)(y)
    assert rel_err(xt, np.asarray(y, np.float64) @ w_dense.T) < TOLERANCE_HIGHEST
    hess = jax.jit(jax.hessian(lambda x: jnp.sum(f(x, w) ** 2)))(x[0])
    assert rel_err(hess, 2 * w_dense @ w_dense.T) < TOLERANCE_HIGHEST
    g1 = jax.grad(lambda w: jnp.sum(jax.checkpoint(f)(x, w) ** 2))(w)
    g2 = jax.grad(lambda w: jnp.sum(f(x, w) ** 2))(w)
    np.testing.assert_allclose(g1, g2, rtol=1e-6)


# ------------------------------------------------------------------------------ vmap
@pytest.mark.parametrize("in_axes", [(0, None), (None, 0), (0, 0), (1, 2)])
@pytest.mark.parametrize("op", ["sdd", "dsd", "dds"])
def test_vmap(platform, op, in_axes):
    rng = np.random.default_rng(37)
    for trans in [(False, False), (True, True)]:
        fn, args, _ = make_case(op, trans, jnp.float32, odd_layout(16), rng, free=12)
        f = functools.partial(fn, precision="highest")
        stacked = [jnp.stack([a, 2 * a + 1], axis=ax) if ax is not None else a
                   for a, ax in zip(args, in_axes)]
        got = jax.jit(jax.vmap(f, in_axes=in_axes))(*stacked)
        want = np.stack([f(*[jnp.take(a, i, axis=ax) if ax is not None else a
                             for a, ax in zip(stacked, in_axes)]) for i in range(2)])
        assert rel_err(got, want) < TOLERANCE_HIGHEST


def test_vmap_of_batched_and_grad_of_vmap(platform):
    rng = np.random.default_rng(41)
    layout = odd_layout(16)
    fn, args, _ = make_case("dds", (False, False), jnp.float32, layout, rng, lead=(3,))
    f = functools.partial(fn, precision="highest")
    w_shared = args[1][0]
    stacked_w = jnp.stack([w_shared, -w_shared])
    got = jax.vmap(lambda w: f(args[0], w))(stacked_w)  # a has G=3, w mapped: [2, 3, M, N]
    assert got.shape[:2] == (2, 3)
    assert rel_err(got[1], -np.asarray(f(args[0], w_shared), np.float64)) < TOLERANCE_HIGHEST
    g = jax.grad(lambda w: jnp.sum(jax.vmap(lambda a: f(a, w))(args[0]) ** 2))(w_shared)
    g_ref = jax.grad(lambda w: jnp.sum(f(args[0], w) ** 2))(w_shared)
    assert rel_err(g, np.asarray(g_ref, np.float64)) < 1e-5


# ---------------------------------------------------------------------------- errors
def test_bad_input_raises_value_error_naming_the_argument():
    layout = jbs.layouts.random(64, 96, 32, 0.5, seed=0)
    x = jnp.ones((4, 64))
    w = jnp.ones((layout.nnz, 32, 32))
    cases = [
        (lambda: jbs.matmul(jnp.ones((4, 63)), w, layout), r"x must be \[\.\.\., 64\]"),
        (lambda: jbs.matmul(x, w[1:], layout), r"w has \d+ blocks; the layout has"),
        (lambda: jbs.matmul(x, jnp.ones((layout.nnz, 16, 16)), layout), r"w must be"),
        (lambda: jbs.matmul(x.astype(jnp.int32), w, layout), r"x has dtype int32"),
        (lambda: jbs.matmul(x, w.astype(jnp.float16), layout), r"same dtype"),
        (lambda: jbs.matmul(x, w, "layout"), r"layout must be a jax_blocksparse.Layout"),
        (lambda: jbs.matmul(jnp.ones((4, 64)), jnp.ones((6, 8, 8)),
                            jbs.layouts.random(64, 64, 8, 0.1)), r"block_size must be one of"),
        (lambda: jbs.matmul(x, w, jbs.Layout(np.ones((2, 2, 3), bool), 32)), r"2-D"),
        (lambda: jbs.sdd(jnp.ones((64, 8)), jnp.ones((9, 96)), layout), r"inner sizes differ"),
        (lambda: jbs.sdd(jnp.ones((60, 8)), jnp.ones((8, 96)), layout), r"a has 60 rows"),
        (lambda: jbs.dsd(w, jnp.ones((64, 5)), layout), r"b has 64 rows"),
        (lambda: jbs.dds(jnp.ones((2, 4, 64)), jnp.ones((3,) + w.shape), layout),
         r"leading dimensions"),
        (lambda: jbs.matmul(x, w, layout, precision="fastest-ish"), r"precision"),
        (lambda: jbs.layouts.random(60, 64, 32, 0.5), r"rows=60 must be a positive multiple"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            jax.jit(call)()


def test_errors_raise_at_trace_time():
    layout = jbs.layouts.random(64, 64, 32, 0.5, seed=0)
    with pytest.raises(ValueError, match="blocks"):
        jax.eval_shape(lambda w: jbs.matmul(jnp.ones((2, 64)), w, layout),
                       jax.ShapeDtypeStruct((layout.nnz + 1, 32, 32), jnp.float32))


# ------------------------------------------------- half precision on every platform
BATCH_COMBINATIONS = {"none": ((), ()), "first": ((3,), ()), "second": ((), (3,)),
                      "both": ((2,), (2,))}


@pytest.mark.parametrize("lead", sorted(BATCH_COMBINATIONS))
@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("op", ["sdd", "dsd", "dds"])
def test_half_precision_every_batch_combination_eager_and_jit(platform, op, dtype, lead):
    """float16/bfloat16 with one operand shared and the other batched (the CPU once had
    no bf16 x bf16 -> f32 dot for it), eager and jitted, values and gradients."""
    rng = np.random.default_rng(211)
    layout = jbs.layouts.random(128, 96, 32, 0.5, seed=3)
    lead_x, lead_y = BATCH_COMBINATIONS[lead]
    fn, (x, y), _ = make_case(op, (True, False), dtype, layout, rng, free=8)
    x, y = random(rng, lead_x + x.shape, dtype), random(rng, lead_y + y.shape, dtype)
    ref = {"sdd": sdd64, "dsd": dsd64, "dds": dds64}[op](x, y, layout, True, False)
    for call in (fn, jax.jit(fn)):
        poison(platform)
        got = call(x, y)
        assert got.dtype == dtype
        assert rel_err(got, ref) < TOLERANCE[dtype]
    cot = random(rng, ref.shape, dtype)
    loss = lambda x, y: jnp.vdot(fn(x, y).astype(jnp.float32), cot.astype(jnp.float32))
    for grad in (jax.grad(loss, argnums=(0, 1)), jax.jit(jax.grad(loss, argnums=(0, 1)))):
        poison(platform)
        gx, gy = grad(x, y)
        assert gx.dtype == dtype and gy.dtype == dtype
        with float64_enabled(), jax.default_device(jax.devices("cpu")[0]):
            up = lambda z: jnp.asarray(np.asarray(z.astype(jnp.float32)), jnp.float64)
            _, vjp = jax.vjp(lambda x, y: jnp.vdot(
                _dense_family(op, x, y, layout), up(cot)), up(x), up(y))
            want = vjp(jnp.float64(1.0))
        assert rel_err(gx, np.asarray(want[0])) < TOLERANCE[dtype]
        assert rel_err(gy, np.asarray(want[1])) < TOLERANCE[dtype]


def _dense_family(op, x, y, layout):
    """The family's ops (first operand transposed) written densely in jnp (float64)."""
    bs = layout.block_size
    keep = jnp.asarray(np.kron(layout.mask, np.ones((bs, bs))))
    t = lambda z: jnp.swapaxes(z, -1, -2)
    if op == "sdd":
        return jbs.from_dense(jnp.matmul(t(x), y) * keep, layout)
    if op == "dsd":
        return jnp.matmul(t(jbs.to_dense(x, layout)), y)
    return jnp.matmul(t(x), jbs.to_dense(y, layout))


# --------------------------------------------- the pure-JAX path works on blocks only
@pytest.mark.parametrize("op", ["matmul", "dsd", "dds_transposed"])
def test_values_reach_only_the_outputs_the_layout_connects(platform, op):
    """A NaN in one block line of the dense operand reaches exactly the outputs that
    the layout connects to it, as in the kernels (no dense weight is ever formed)."""
    rng = np.random.default_rng(223)
    layout = jbs.layouts.random(128, 192, 32, 0.3, seed=5)
    mask = layout.mask
    w = random(rng, (layout.nnz, 32, 32), jnp.float32)
    if op == "matmul":  # x @ W: x's columns 0:32 feed W's block row 0
        x = random(rng, (6, 128), jnp.float32).at[:, 0:32].set(jnp.nan)
        out, reached = jbs.matmul(x, w, layout), mask[0]
        out_lines = np.isnan(np.asarray(out)).reshape(6, -1, 32).any(axis=(0, 2))
    elif op == "dsd":  # S @ b: b's rows 0:32 feed S's block column 0
        b = random(rng, (192, 5), jnp.float32).at[0:32].set(jnp.nan)
        out, reached = jbs.dsd(w, b, layout), mask[:, 0]
        out_lines = np.isnan(np.asarray(out)).reshape(-1, 32, 5).any(axis=(1, 2))
    else:  # a @ W.T: a's columns 0:32 feed W's block column 0
        a = random(rng, (4, 192), jnp.float32).at[:, 0:32].set(jnp.nan)
        out, reached = jbs.dds(a, w, layout, trans_w=True), mask[:, 0]
        out_lines = np.isnan(np.asarray(out)).reshape(4, -1, 32).any(axis=(0, 2))
    assert 0 < reached.sum() < len(reached)
    np.testing.assert_array_equal(out_lines, reached)


def test_pure_jax_path_never_forms_the_dense_weight():
    """The compiled CPU program holds no array of the dense weight's shape."""
    layout = jbs.layouts.random(256, 384, 32, 0.1, seed=6)
    x = jnp.ones((8, 256))
    w = jnp.ones((layout.nnz, 32, 32))
    programs = [
        jax.jit(lambda x, w: jbs.matmul(x, w, layout)).lower(x, w).as_text(),
        jax.jit(jax.grad(lambda x, w: jbs.matmul(x, w, layout).sum(), argnums=(0, 1))
                ).lower(x, w).as_text(),
        jax.jit(lambda w, b: jbs.dsd(w, b, layout)).lower(w, jnp.ones((384, 8))).as_text(),
    ]
    for text in programs:
        assert "256x384x" not in text and "384x256x" not in text


def test_transposition_flags_must_be_static_bools():
    layout = jbs.layouts.random(64, 64, 16, 0.5, seed=7)
    a = jnp.ones((64, 64))
    w = jnp.ones((layout.nnz, 16, 16))
    with pytest.raises(ValueError, match="sdd: trans_a must be a Python bool"):
        jbs.sdd(a, a, layout, trans_a=1)
    with pytest.raises(ValueError, match="dsd: trans_b must be a Python bool"):
        jbs.dsd(w, a, layout, trans_b="yes")
    with pytest.raises(ValueError, match="dds: trans_w must be a Python bool"):
        jax.jit(lambda t: jbs.dds(a, w, layout, trans_w=t))(True)


@pytest.mark.parametrize("op", ["sdd", "dsd", "dds"])
def test_zero_size_free_dimension(platform, op):
    """K (sdd), N (dsd) or M (dds) of size 0: empty or all-zero results, and gradients."""
    rng = np.random.default_rng(227)
    fn, args, ref = make_case(op, (False, False), jnp.float32, odd_layout(16), rng, free=0)
    poison(platform)
    out = jax.jit(fn)(*args)
    assert out.shape == ref.shape
    np.testing.assert_array_equal(np.asarray(out), 0)
    grads = jax.jit(jax.grad(lambda x, y: fn(x, y).sum(), argnums=(0, 1)))(*args)
    for g, a in zip(grads, args):
        assert g.shape == a.shape
        np.testing.assert_array_equal(np.asarray(g), 0)
