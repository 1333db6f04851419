"""Flax modules (linen and NNX): init/apply/grad against the ops they are built from, the
flax conventions they follow, and an orbax save/restore."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen
from flax import nnx

import jax_blocksparse as jbs
from jax_blocksparse import nn as bnn
from jax_blocksparse import nnx as bnnx
from test_matmul import PLATFORMS, rel_err


@pytest.fixture(params=PLATFORMS)
def platform(request):
    with jax.default_device(jax.devices(request.param)[0]):
        yield request.param


def assign(variable, value):
    """Set an nnx variable (`set_value` in new flax, `.value` before it)."""
    if hasattr(variable, "set_value"):
        variable.set_value(value)
    else:
        variable.value = value


def read(variable):
    return variable.get_value() if hasattr(variable, "get_value") else variable.value


def normal(seed, shape, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def test_dense_linen_and_nnx(platform):
    layout = jbs.layouts.barabasi_albert(256, 256, 32, 0.3, seed=0)
    x = normal(0, (3, 5, 256))
    module = bnn.BlockSparseDense(layout, precision="highest")
    params = module.init(jax.random.key(0), x)["params"]
    assert params["kernel"].shape == (layout.nnz, 32, 32) and params["bias"].shape == (256,)
    bias = normal(1, (256,))
    params = {"kernel": params["kernel"], "bias": bias}
    want = jbs.matmul(x, params["kernel"], layout, precision="highest") + bias
    got = module.apply({"params": params}, x)
    assert rel_err(got, np.asarray(want, np.float64)) < 1e-6
    grads = jax.grad(lambda p: module.apply({"params": p}, x).sum())(params)
    np.testing.assert_allclose(grads["bias"], np.full(256, 15.0), rtol=1e-6)
    dense_grad = np.asarray(x).reshape(15, 256).T @ np.ones((15, 256))
    assert rel_err(grads["kernel"], jbs.from_dense(dense_grad, layout)) < 1e-5

    linear = bnnx.BlockSparseLinear(layout, precision="highest", rngs=nnx.Rngs(0))
    assign(linear.kernel, params["kernel"])
    assign(linear.bias, bias)
    assert rel_err(linear(x), np.asarray(want, np.float64)) < 1e-6
    grads = nnx.grad(lambda m: m(x).sum())(linear)
    assert rel_err(read(grads.kernel), jbs.from_dense(dense_grad, layout)) < 1e-5


def test_kernel_init_scales_by_true_fan_in():
    mask = np.zeros((16, 4), bool)
    mask[:, 0] = True  # column block 0: fan-in 16 * 32 = 512
    mask[:2, 1] = True  # column block 1: fan-in 64
    mask[0, 2:] = True  # columns 2, 3: fan-in 32
    layout = jbs.Layout(mask, 32)
    kernel = bnn.BlockSparseDense(layout).init(jax.random.key(0), jnp.ones((1, 512)))[
        "params"]["kernel"]
    cols = np.nonzero(mask)[1]
    for col, fan in [(0, 512), (1, 64), (2, 32)]:
        std = float(np.std(np.asarray(kernel)[cols == col]))
        assert abs(std * np.sqrt(fan) - 1) < 0.1, (col, std)


@pytest.mark.parametrize("padding,strides", [("SAME", (1, 1)), ("VALID", (2, 2))])
def test_conv_matches_dense_convolution(platform, padding, strides):
    layout = jbs.layouts.random(64, 96, 16, 0.5, seed=1)
    x = normal(2, (2, 9, 9, 64))
    module = bnn.BlockSparseConv(layout, kernel_size=(3, 3), strides=strides, padding=padding,
                                 precision="highest")
    params = module.init(jax.random.key(0), x)["params"]
    kernel = params["kernel"]
    assert kernel.shape == (3, 3, layout.nnz, 16, 16)
    dense_kernel = jbs.to_dense(kernel, layout)  # [3, 3, 64, 96]
    want = jax.lax.conv_general_dilated(x, dense_kernel, strides, padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision="highest") + params["bias"]
    got = module.apply({"params": params}, x)
    assert rel_err(got, np.asarray(want, np.float64)) < 1e-5
    conv = bnnx.BlockSparseConv(layout, (3, 3), strides=strides, padding=padding,
                                precision="highest", rngs=nnx.Rngs(0))
    assign(conv.kernel, kernel)
    assert rel_err(conv(x), np.asarray(want, np.float64)) < 1e-5
    g = jax.grad(lambda k: module.apply({"params": {"kernel": k, "bias": params["bias"]}},
                                        x).sum())(kernel)
    g_dense = jax.grad(lambda k: jax.lax.conv_general_dilated(
        x, k, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision="highest").sum())(dense_kernel)
    assert rel_err(g, np.asarray(jbs.from_dense(g_dense, layout), np.float64)) < 1e-5


def test_conv_kernel_size_and_strides_may_be_ints():
    """`kernel_size=3` means `(3, 3)` (the modules are 2-D only), `strides=2` `(2, 2)`,
    `padding=1` `((1, 1), (1, 1))`, in linen and NNX."""
    layout = jbs.layouts.random(32, 32, 16, 0.5, seed=1)
    x = normal(6, (1, 7, 7, 32))
    ints = bnn.BlockSparseConv(layout, kernel_size=3, strides=2, padding=1)
    pairs = bnn.BlockSparseConv(layout, kernel_size=(3, 3), strides=(2, 2),
                                padding=((1, 1), (1, 1)))
    params = ints.init(jax.random.key(0), x)
    assert params["params"]["kernel"].shape == (3, 3, layout.nnz, 16, 16)
    np.testing.assert_array_equal(ints.apply(params, x), pairs.apply(params, x))
    assert ints.apply(params, x).shape == (1, 4, 4, 32)
    conv = bnnx.BlockSparseConv(layout, 3, strides=2, padding=1, rngs=nnx.Rngs(0))
    assert read(conv.kernel).shape == (3, 3, layout.nnz, 16, 16)
    assign(conv.kernel, params["params"]["kernel"])
    np.testing.assert_array_equal(conv(x), pairs.apply(params, x))
    assert bnnx.BlockSparseConv(layout, kernel_size=1, rngs=nnx.Rngs(0))(x).shape == x.shape
    with pytest.raises(ValueError, match="kernel_size must be a positive int or two"):
        bnn.BlockSparseConv(layout, kernel_size=(3, 3, 3)).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="strides"):
        bnnx.BlockSparseConv(layout, 3, strides=0, rngs=nnx.Rngs(0))


def test_flax_submodules_load_lazily(tmp_path):
    """`import jax_blocksparse` does not import flax; `jbs.nn` and `jbs.nnx` load on use."""
    code = ("import sys; import jax_blocksparse as jbs; assert 'flax' not in sys.modules; "
            "assert 'nn' in dir(jbs); print(jbs.nn.BlockSparseDense.__name__, "
            "jbs.nnx.BlockSparseLinear.__name__, 'flax' in sys.modules)")
    root = os.path.dirname(os.path.dirname(jbs.__file__))  # where this jax_blocksparse is
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["BlockSparseDense", "BlockSparseLinear", "True"]
    assert jbs.nn is bnn and jbs.nnx is bnnx
    with pytest.raises(AttributeError, match="no attribute 'not_a_module'"):
        jbs.not_a_module


def test_attention_matches_flax_mha_with_the_layout_as_mask(platform):
    """Same parameter tree as linen.MultiHeadDotProductAttention; same output when flax is
    given the layout (and causality) as its mask."""
    t, features, heads = 128, 32, 4
    layout = jbs.layouts.local(t, 64, 70)
    x = normal(3, (2, t, features))
    ours = bnn.BlockSparseMultiHeadAttention(num_heads=heads, layout=layout, causal=True,
                                            qkv_features=256, precision="highest")
    params = ours.init(jax.random.key(0), x)
    theirs = linen.MultiHeadDotProductAttention(num_heads=heads, qkv_features=256,
                                                precision="highest")
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(
        jnp.shape, theirs.init(jax.random.key(0), x))
    mask = np.kron(layout.mask, np.ones((64, 64), bool)) & np.tri(t, dtype=bool)
    want = theirs.apply(params, x, mask=jnp.asarray(mask)[None, None])
    got = ours.apply(params, x)
    assert rel_err(got, np.asarray(want, np.float64)) < 1e-4


def test_attention_gqa_sparse_projections_linen_and_nnx(platform):
    t, features = 128, 128
    layout = jbs.layouts.causal(t, 64)
    proj = jbs.layouts.random(128, 256, 32, 0.5, seed=0)
    kv_proj = jbs.layouts.random(128, 128, 32, 0.5, seed=1)
    out_proj = jbs.layouts.random(256, 128, 32, 0.5, seed=2)
    x = normal(4, (2, t, features))
    kw = dict(causal=True, num_kv_heads=2, qkv_features=256, q_layout=proj,
              kv_layout=kv_proj, out_layout=out_proj)
    module = bnn.BlockSparseMultiHeadAttention(num_heads=4, layout=layout, **kw)
    params = module.init(jax.random.key(0), x)
    assert params["params"]["query"]["kernel"].shape == (proj.nnz, 32, 32)
    out = module.apply(params, x)
    p = params["params"]
    dense = lambda name, lay, y: bnn.BlockSparseDense(lay).apply({"params": p[name]}, y)
    q = dense("query", proj, x).reshape(2, t, 4, 64)
    k = dense("key", kv_proj, x).reshape(2, t, 2, 64)
    v = dense("value", kv_proj, x).reshape(2, t, 2, 64)
    o = jbs.attention(q, k, v, layout, causal=True).reshape(2, t, 256)
    assert rel_err(out, np.asarray(dense("out", out_proj, o), np.float64)) < 1e-5
    g = jax.grad(lambda p: module.apply(p, x).sum())(params)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(g))

    m = bnnx.BlockSparseMultiHeadAttention(4, features, layout, rngs=nnx.Rngs(0), **kw)
    for name in ("query", "key", "value", "out"):
        assign(getattr(m, name).kernel, p[name]["kernel"])
        assign(getattr(m, name).bias, p[name]["bias"])
    assert rel_err(m(x), np.asarray(out, np.float64)) < 1e-5


def test_attention_modules_give_kernel_init_to_every_projection():
    """`kernel_init` reaches the block-sparse projections too (their blocks), linen and
    nnx; without it the dense ones take lecun normal and the block-sparse ones the fan-in
    init (not all equal)."""
    bs, f = 16, 32
    layout = jbs.Layout(np.array([[1, 0], [1, 1]], bool), bs)
    full = jbs.Layout(np.ones((2, 2), bool), bs)
    x = jnp.ones((1, 32, f))
    sparse = dict(q_layout=full, out_layout=full)
    for init, want in ((jax.nn.initializers.ones, True), (None, False)):
        extra = {} if init is None else dict(kernel_init=init)
        linen_params = bnn.BlockSparseMultiHeadAttention(
            num_heads=2, layout=layout, **sparse, **extra).init(jax.random.key(0), x)["params"]
        module = bnnx.BlockSparseMultiHeadAttention(2, f, layout, **sparse, **extra,
                                                    rngs=nnx.Rngs(0))
        kernels = [linen_params[n]["kernel"] for n in ("query", "key", "value", "out")]
        kernels += [getattr(module, n).kernel[...] for n in ("query", "key", "value", "out")]
        assert [bool((k == 1).all()) for k in kernels] == [want] * 8


def test_attention_projection_layouts_agree_with_the_features():
    """A projection layout decides the width it stands for when the features are not
    given (out_layout: out_features, q_layout: qkv_features); one that contradicts the
    given features or the inputs raises ValueError naming it (linen and NNX), instead of
    out_features or qkv_features being ignored."""
    t, features = 32, 32
    layout = jbs.layouts.causal(t, 16)
    x = normal(6, (2, t, features))
    square = jbs.Layout(np.ones((2, 2), bool), 16)  # 32 x 32
    wide = jbs.Layout(np.ones((2, 3), bool), 16)    # 32 x 48
    make = {"linen": lambda **kw: (lambda m: m.apply(m.init(jax.random.key(0), x), x))(
                bnn.BlockSparseMultiHeadAttention(num_heads=4, layout=layout, **kw)),
            "nnx": lambda **kw: bnnx.BlockSparseMultiHeadAttention(
                4, features, layout, rngs=nnx.Rngs(0), **kw)(x)}
    for kind, run in make.items():
        assert run(out_layout=wide).shape == (2, t, 48), kind  # the layout's width
        assert run(out_layout=wide, out_features=48).shape == (2, t, 48), kind
        assert run(q_layout=wide, kv_layout=wide, out_layout=jbs.Layout(
            np.ones((3, 2), bool), 16)).shape == (2, t, 32), kind  # qkv_features 48
        bad = [(dict(out_layout=wide, out_features=16), "out_layout covers a 32 x 48"),
               (dict(q_layout=square, kv_layout=square, qkv_features=64), "q_layout covers"),
               (dict(q_layout=wide, kv_layout=square), "kv_layout covers a 32 x 32"),
               (dict(out_layout=wide, qkv_features=64), "out_layout covers")]
        for kw, message in bad:
            with pytest.raises(ValueError, match=f"BlockSparseMultiHeadAttention: {message}"):
                run(**kw)


def test_orbax_save_and_restore(tmp_path):
    import orbax.checkpoint as ocp

    layout = jbs.layouts.random(64, 64, 16, 0.5, seed=0)
    model = bnn.BlockSparseDense(layout)
    x = normal(5, (4, 64))
    params = model.init(jax.random.key(1), x)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "ckpt", params)
        checkpointer.wait_until_finished()
        restored = checkpointer.restore(tmp_path / "ckpt", jax.tree.map(jnp.zeros_like, params))
    np.testing.assert_array_equal(model.apply(restored, x), model.apply(params, x))


def test_attention_modules_take_segment_ids_and_a_block_mask_at_call_time(platform):
    """linen and NNX: `segment_ids` and a call-time `block_mask` reach `attention`."""
    t, features, heads = 128, 64, 2
    layout = jbs.layouts.causal(t, 64)
    x = normal(5, (2, t, features))
    ids = jnp.asarray(np.repeat([[0, 1, 2, 3], [0, 0, 1, 1]], 32, axis=1), jnp.int32)
    block_mask = jbs.BlockMask.from_mask(np.array([[[[1, 0], [0, 1]]]], bool), 64)
    module = bnn.BlockSparseMultiHeadAttention(num_heads=heads, layout=layout, causal=True,
                                              precision="highest")
    params = module.init(jax.random.key(0), x)
    p = params["params"]
    project = lambda name, y: jnp.einsum("btf,fhd->bthd", y, p[name]["kernel"],
                                         precision="highest") + p[name]["bias"]
    q, k, v = (project(n, x) for n in ("query", "key", "value"))

    def expected(**kwargs):
        o = jbs.attention(q, k, v, kwargs.pop("mask", layout), causal=True, **kwargs)
        return jnp.einsum("bthd,hdf->btf", o, p["out"]["kernel"],
                          precision="highest") + p["out"]["bias"]

    got_ids = module.apply(params, x, segment_ids=ids)
    want_ids = expected(q_segment_ids=ids)
    assert rel_err(got_ids, np.asarray(want_ids, np.float64)) < 1e-5
    assert rel_err(module.apply(params, x), np.asarray(want_ids, np.float64)) > 1e-2
    got_mask = module.apply(params, x, block_mask=block_mask)
    assert rel_err(got_mask, np.asarray(expected(mask=block_mask), np.float64)) < 1e-5
    no_layout = bnn.BlockSparseMultiHeadAttention(num_heads=heads, layout=None, causal=True,
                                                 precision="highest")
    assert rel_err(no_layout.apply(params, x, block_mask=block_mask),
                   np.asarray(got_mask, np.float64)) < 1e-6
    with pytest.raises(ValueError, match="give it a layout, or a block_mask"):
        no_layout.apply(params, x)

    m = bnnx.BlockSparseMultiHeadAttention(heads, features, layout, causal=True,
                                           precision="highest", rngs=nnx.Rngs(0))
    for name in ("query", "key", "value", "out"):
        assign(getattr(m, name).kernel, p[name]["kernel"])
        assign(getattr(m, name).bias, p[name]["bias"])
    assert rel_err(m(x, segment_ids=ids), np.asarray(want_ids, np.float64)) < 1e-5
    assert rel_err(m(x, block_mask=block_mask), np.asarray(got_mask, np.float64)) < 1e-5


def test_modules_holding_a_layout_copy_and_pickle():
    """`copy.deepcopy` of an NNX model (EMA or teacher copies) and pickling a linen module."""
    import copy
    import pickle

    layout = jbs.layouts.random(64, 64, 16, 0.5, seed=2)
    x = normal(7, (3, 64))
    linear = bnnx.BlockSparseLinear(layout, rngs=nnx.Rngs(0))
    twin = copy.deepcopy(linear)
    assert twin.layout == linear.layout and hash(twin.layout) == hash(linear.layout)
    np.testing.assert_array_equal(twin(x), linear(x))
    module = bnn.BlockSparseDense(layout)
    params = module.init(jax.random.key(0), x)
    restored = pickle.loads(pickle.dumps(module))
    assert restored.layout == layout
    np.testing.assert_array_equal(restored.apply(params, x), module.apply(params, x))


def test_modules_name_their_bad_arguments():
    layout = jbs.layouts.random(32, 32, 16, 0.5, seed=1)
    with pytest.raises(ValueError, match=r"BlockSparseConv: x must be \[N, H, W, 32\]"):
        bnn.BlockSparseConv(layout).init(jax.random.key(0), normal(0, (7, 7, 32)))
    conv = bnnx.BlockSparseConv(layout, 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"BlockSparseConv: x must be \[N, H, W, 32\]"):
        conv(normal(0, (1, 7, 7, 16)))
    with pytest.raises(ValueError, match="parallel must be None, 'columns' or 'rows'; "
                                         "got 'diagonal'"):
        bnnx.BlockSparseLinear(layout, parallel="diagonal", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="parallel must be None, 'columns' or 'rows'"):
        bnn.BlockSparseDense(layout, parallel="diagonal").init(jax.random.key(0),
                                                              normal(0, (2, 32)))
    heads = jbs.Layout(np.ones((2, 2, 2), bool), 16)  # a per-head mask: no weight layout
    bad = [(lambda: bnn.BlockSparseDense(heads).init(jax.random.key(0), normal(0, (2, 32))),
            "BlockSparseDense: layout must be a jax_blocksparse.Layout with a 2-D mask"),
           (lambda: bnnx.BlockSparseConv(heads, 3, rngs=nnx.Rngs(0)), "BlockSparseConv: layout"),
           (lambda: bnnx.BlockSparseLinear(np.ones((2, 2), bool), rngs=nnx.Rngs(0)),
            "BlockSparseLinear: layout must be .* got ndarray"),
           (lambda: bnnx.BlockSparseLinear(layout, param_dtype=jnp.int32, rngs=nnx.Rngs(0)),
            "BlockSparseLinear: param_dtype must be a floating dtype; got int32"),
           (lambda: bnn.BlockSparseConv(layout, dtype=jnp.int8).init(
               jax.random.key(0), normal(0, (1, 7, 7, 32))), "BlockSparseConv: dtype"),
           (lambda: bnnx.BlockSparseConv(layout, 3, padding="FOO", rngs=nnx.Rngs(0)),
            "BlockSparseConv: padding must be 'SAME', 'SAME_LOWER', 'VALID'"),
           (lambda: bnnx.BlockSparseConv(layout, 3, padding=((1, 1),), rngs=nnx.Rngs(0)),
            "BlockSparseConv: padding"),
           (lambda: bnnx.BlockSparseConv(layout, 3, padding=((1, 1.5), (0, 0)),
                                         rngs=nnx.Rngs(0)), "BlockSparseConv: padding")]
    for make, message in bad:
        with pytest.raises(ValueError, match=message):
            make()


def test_modules_run_float64_with_x64():
    """linen and NNX layers take float64 inputs and parameters (x64 on) and compute in
    float64: values and kernel gradients against float64 numpy."""
    from reference import from_dense64, to_dense64
    from test_matmul import float64_enabled

    with float64_enabled(), jax.default_device(jax.devices("cpu")[0]):
        layout = jbs.layouts.random(64, 96, 16, 0.5, seed=3)
        x = normal(8, (3, 64), jnp.float64)
        module = bnn.BlockSparseDense(layout, param_dtype=jnp.float64)
        params = module.init(jax.random.key(0), x)["params"]
        kernel = params["kernel"] + normal(9, params["kernel"].shape, jnp.float64)
        params = {"kernel": kernel, "bias": normal(10, (96,), jnp.float64)}
        got = module.apply({"params": params}, x)
        want = np.asarray(x) @ to_dense64(kernel, layout) + np.asarray(params["bias"])
        assert got.dtype == jnp.float64 and rel_err(got, want) < 1e-13
        grad = jax.grad(lambda k: module.apply({"params": {**params, "kernel": k}}, x).sum())(
            kernel)
        want_grad = from_dense64(np.asarray(x).T @ np.ones((3, 96)), layout)
        assert grad.dtype == jnp.float64 and rel_err(grad, want_grad) < 1e-13
        linear = bnnx.BlockSparseLinear(layout, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
        assign(linear.kernel, kernel)
        assign(linear.bias, params["bias"])
        assert rel_err(linear(x), want) < 1e-13
        images = normal(11, (2, 5, 5, 64), jnp.float64)
        conv = bnnx.BlockSparseConv(layout, 3, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
        taps = read(conv.kernel) + normal(12, read(conv.kernel).shape, jnp.float64)
        assign(conv.kernel, taps)
        want = jax.lax.conv_general_dilated(images, jbs.to_dense(taps, layout), (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        got = conv(images)
        assert got.dtype == jnp.float64 and rel_err(got, np.asarray(want)) < 1e-13


def test_attention_modules_learn_their_sinks_under_a_soft_cap(platform):
    """`use_sinks`: a `[num_heads]` param named "sinks", zeros at init, that gets a non-zero
    gradient; linen and NNX give the op's output (`sinks=`, `logits_soft_cap=`)."""
    t, features, heads = 64, 64, 4
    layout = jbs.layouts.causal(t, 16)
    x = normal(9, (2, t, features))
    kw = dict(causal=True, num_kv_heads=2, use_sinks=True, logits_soft_cap=5.0)
    module = bnn.BlockSparseMultiHeadAttention(num_heads=heads, layout=layout, **kw)
    params = module.init(jax.random.key(0), x)
    sinks = params["params"]["sinks"]
    assert sinks.shape == (heads,) and np.all(np.asarray(sinks) == 0)
    p = jax.tree.map(lambda a: a, params)
    p["params"]["sinks"] = normal(3, (heads,))
    g = jax.grad(lambda p: (module.apply(p, x) ** 2).sum())(p)["params"]["sinks"]
    assert g.shape == (heads,) and np.all(np.asarray(g) != 0)
    q, k, v = (linen.DenseGeneral((h, 16)).apply({"params": p["params"][name]}, x)
               for name, h in (("query", heads), ("key", 2), ("value", 2)))
    o = jbs.attention(q, k, v, layout, causal=True, sinks=p["params"]["sinks"],
                      logits_soft_cap=5.0)
    want = linen.DenseGeneral(features, axis=(-2, -1)).apply({"params": p["params"]["out"]}, o)
    assert rel_err(module.apply(p, x), np.asarray(want, np.float64)) < 1e-5

    m = bnnx.BlockSparseMultiHeadAttention(heads, features, layout, rngs=nnx.Rngs(0), **kw)
    assert np.all(np.asarray(read(m.sinks)) == 0)
    for name in ("query", "key", "value", "out"):
        assign(getattr(m, name).kernel, p["params"][name]["kernel"])
        assign(getattr(m, name).bias, p["params"][name]["bias"])
    assign(m.sinks, p["params"]["sinks"])
    assert rel_err(m(x), np.asarray(want, np.float64)) < 1e-5
    grads = nnx.grad(lambda m: (m(x) ** 2).sum())(m)
    assert rel_err(read(grads.sinks), np.asarray(g, np.float64)) < 1e-4
