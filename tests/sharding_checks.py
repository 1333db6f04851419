"""Sharding checks, run by test_sharding.py in a fresh process with 8 devices (on a CPU:
`XLA_FLAGS=--xla_force_host_platform_device_count=8`). Each check compares a sharded
`jit` (or `shard_map`) with the same function on one device, values and gradients, and
counts the collectives in the compiled program."""

import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import jax_blocksparse as jbs

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all",
               "collective-permute")


def mesh(shape=(4, 2), names=("data", "model")):
    return Mesh(np.array(jax.devices()[:int(np.prod(shape))]).reshape(shape), names)


def collectives(fn, *args):
    """{collective: how many} in the compiled program of `jax.jit(fn)(*args)`; checks that
    the program partitions through this package's rules (not XLA's own view of the
    pure-JAX lowering)."""
    lowered = jax.jit(fn).lower(*args)
    assert "CustomSPMDPartitioning" in lowered.as_text(), "no custom partitioning"
    text = lowered.compile().as_text()
    return {c: len(re.findall(r" " + c + r"(-start)?\(", text)) for c in COLLECTIVES}


def put(x, m, *spec):
    return jax.device_put(x, NamedSharding(m, P(*spec)))


def close(got, want, tol=1e-5):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    err = np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30)
    assert err < tol, err


def same(fn, args, sharded_args):
    """fn's values and gradients, sharded and not, agree; returns the sharded result."""
    grad = jax.jit(jax.value_and_grad(fn, argnums=tuple(range(len(args)))))
    (v1, g1), (v8, g8) = grad(*args), grad(*sharded_args)
    close(v8, v1)
    for a, b in zip(g8, g1):
        close(a, b)
    return grad


def arr(rng, *shape):
    return jnp.asarray(rng.standard_normal(shape), jnp.float32)


def check_matmul_data_parallel():
    """matmul (dds), dsd and sdd with the dense operand sharded on its rows (batch) and the
    blocks replicated: no all-gather; the weight gradient is one all-reduce."""
    m = mesh((8,), ("data",))
    rng = np.random.default_rng(0)
    layout = jbs.layouts.random(64, 96, 16, 0.4, seed=0)
    x, w = arr(rng, 16, 8, 64), arr(rng, layout.nnz, 16, 16)
    loss = lambda x, w: jnp.sum(jnp.sin(jbs.matmul(x, w, layout)))
    grad = same(loss, (x, w), (put(x, m, "data"), put(w, m)))
    counts = collectives(grad, put(x, m, "data"), put(w, m))
    assert counts["all-gather"] == 0 and counts["all-to-all"] == 0, counts
    assert counts["all-reduce"] == 1, counts  # dW (with the loss's sum, fused)
    # dsd: S @ b with b [K, N] sharded on its columns N
    s, b = arr(rng, layout.nnz, 16, 16), arr(rng, 96, 64)
    f = lambda s, b: jnp.sum(jnp.sin(jbs.dsd(s, b, layout)))
    grad = same(f, (s, b), (put(s, m), put(b, m, None, "data")))
    assert collectives(grad, put(s, m), put(b, m, None, "data"))["all-gather"] == 0
    # sdd: a [P, K] @ b [K, Q] with the inner dimension K sharded: one reduction
    a, b = arr(rng, 64, 128), arr(rng, 128, 96)
    f = lambda a, b: jnp.sum(jnp.sin(jbs.sdd(a, b, layout)))
    sharded = (put(a, m, None, "data"), put(b, m, "data"))
    same(f, (a, b), sharded)
    counts = collectives(lambda a, b: jbs.sdd(a, b, layout), *sharded)
    assert counts["all-gather"] == 0 and counts["all-reduce"] == 1, counts


def check_attention_batch_and_heads():
    """attention sharded over batch (data) and kv heads (model), with kv_lengths, segment
    ids and a BlockMask per batch entry: values and gradients; no all-gather."""
    m = mesh()
    rng = np.random.default_rng(1)
    b, t, hq, hkv, d, bs = 4, 128, 8, 4, 16, 32
    q, k, v = arr(rng, b, t, hq, d), arr(rng, b, t, hkv, d), arr(rng, b, t, hkv, d)
    lengths = jnp.asarray([128, 100, 77, 5], jnp.int32)
    ids = jnp.asarray(np.cumsum(rng.random((b, t)) < 0.05, axis=1), jnp.int32)
    blocks = (rng.random((b, 1, t // bs, t // bs)) < 0.6) | np.eye(t // bs, dtype=bool)
    masks = {"layout": jbs.layouts.local(t, bs, 64), "block_mask": jbs.BlockMask.from_mask(
        jnp.asarray(blocks), bs)}
    spec = ("data", None, "model")
    for name, mask in masks.items():
        def loss(q, k, v, lengths, ids, mask=mask):
            o = jbs.attention(q, k, v, mask, causal=True, kv_lengths=lengths,
                              q_segment_ids=ids)
            return jnp.sum(jnp.sin(o))
        f = lambda q, k, v: loss(q, k, v, put(lengths, m, "data"), put(ids, m, "data"))
        grad = same(f, (q, k, v), tuple(put(x, m, *spec) for x in (q, k, v)))
        counts = collectives(grad, *(put(x, m, *spec) for x in (q, k, v)))
        assert counts["all-gather"] == 0 and counts["all-to-all"] == 0, (name, counts)
    # attention sinks [Hq] (an operand of the forward primitive): replicated, or sharded
    # with the query heads
    sinks = arr(rng, hq)
    f = lambda q, k, v, s: jnp.sum(jnp.sin(jbs.attention(q, k, v, masks["layout"], causal=True,
                                                         sinks=s)))
    for sinks_spec in ((), ("model",)):
        sharded = (*(put(x, m, *spec) for x in (q, k, v)), put(sinks, m, *sinks_spec))
        grad = same(f, (q, k, v, sinks), sharded)
        counts = collectives(grad, *sharded)
        assert counts["all-gather"] == 0 and counts["all-to-all"] == 0, (sinks_spec, counts)


def check_decode():
    """Decoding one token per sequence, contiguous and paged caches, sharded over batch
    and kv heads: equal to one device, no collective."""
    m = mesh()
    rng = np.random.default_rng(2)
    b, t, hq, hkv, d, bs, page = 4, 128, 8, 4, 16, 32, 16
    layout = jbs.layouts.local(t, bs, 64)
    q, k, v = arr(rng, b, 1, hq, d), arr(rng, b, t, hkv, d), arr(rng, b, t, hkv, d)
    n = jnp.asarray([128, 64, 30, 1], jnp.int32)
    spec = ("data", None, "model")
    f = lambda q, k, v: jbs.attention(q, k, v, layout, causal=True, q_offset=n - 1,
                                      kv_lengths=n)
    sharded = tuple(put(x, m, *spec) for x in (q, k, v))
    close(jax.jit(f)(*sharded), jax.jit(f)(q, k, v))
    assert not any(collectives(f, *sharded).values())
    table = jnp.asarray(rng.permutation(b * t // page).reshape(b, -1), jnp.int32)
    pools = [jnp.zeros((b * t // page, page, hkv, d)).at[table.reshape(-1)].set(
        x.reshape(-1, page, hkv, d)) for x in (k, v)]
    g = lambda q, kp, vp, table: jbs.attention(q, kp, vp, layout, causal=True,
                                               q_offset=n - 1, kv_lengths=n,
                                               page_table=table)
    args = (put(q, m, *spec), put(pools[0], m, None, None, "model"),
            put(pools[1], m, None, None, "model"), put(table, m, "data"))
    close(jax.jit(g)(*args), f(q, k, v))
    assert collectives(g, *args)["all-gather"] == 0
    # an fp8 cache with a scale per kv head, sharded with the kv heads
    k8, v8 = (x.astype(jnp.float8_e4m3fn) for x in (k, v))
    ks = jnp.asarray(rng.uniform(0.5, 2.0, hkv), jnp.float32)
    h = lambda q, k, v, s: jbs.attention(q, k, v, layout, causal=True, q_offset=n - 1,
                                         kv_lengths=n, k_scale=s, v_scale=0.5)
    args = (put(q, m, *spec), put(k8, m, *spec), put(v8, m, *spec), put(ks, m, "model"))
    close(jax.jit(h)(*args), jax.jit(h)(q, k8, v8, ks))
    assert not any(collectives(h, *args).values())


def check_shard_map():
    """Every primitive inside shard_map, gradients of replicated inputs included."""
    m = mesh((8,), ("data",))
    rng = np.random.default_rng(3)
    layout = jbs.layouts.random(64, 96, 16, 0.4, seed=0)
    x, w = arr(rng, 16, 8, 64), arr(rng, layout.nnz, 16, 16)

    def local_loss(x, w):  # the loss of one device's rows
        y = jbs.matmul(x, w, layout)
        blocks = jbs.sdd(x.reshape(-1, 64).T, y.reshape(-1, 96), layout)  # dW-like
        z = jbs.dsd(blocks, y.reshape(-1, 96).T, layout)
        return jnp.sum(jnp.sin(y)) + jnp.sum(jnp.cos(z))

    mapped = jax.shard_map(lambda x, w: jax.lax.psum(local_loss(x, w), "data"), mesh=m,
                           in_specs=(P("data"), P()), out_specs=P())
    want = lambda x, w: sum(local_loss(x[i:i + 2], w) for i in range(0, 16, 2))
    got_v, got_g = jax.jit(jax.value_and_grad(mapped, argnums=(0, 1)))(x, w)
    want_v, want_g = jax.jit(jax.value_and_grad(want, argnums=(0, 1)))(x, w)
    close(got_v, want_v)
    for a, b in zip(got_g, want_g):
        close(a, b)
    # attention and decode
    rng = np.random.default_rng(4)
    q, k = arr(rng, 8, 64, 4, 16), arr(rng, 8, 64, 2, 16)
    lay = jbs.layouts.local(64, 16, 32)
    att = lambda q, k: jnp.sum(jnp.sin(jbs.attention(q, k, k, lay, causal=True)))
    mapped = jax.shard_map(lambda q, k: jax.lax.psum(att(q, k), "data"), mesh=m,
                           in_specs=(P("data"), P("data")), out_specs=P())
    got = jax.jit(jax.value_and_grad(mapped, argnums=(0, 1)))(q, k)
    want = jax.jit(jax.value_and_grad(att, argnums=(0, 1)))(q, k)
    close(got[0], want[0])
    for a, b in zip(got[1], want[1]):
        close(a, b)
    n = jnp.full((8,), 40, jnp.int32)
    dec = lambda q, k, n: jbs.attention(q[:, :1], k, k, lay, causal=True, q_offset=n - 1,
                                        kv_lengths=n)
    mapped = jax.shard_map(dec, mesh=m, in_specs=(P("data"), P("data"), P("data")),
                           out_specs=P("data"))
    close(jax.jit(mapped)(q, k, n), dec(q, k, n))


def check_tensor_parallel():
    """Column- and row-parallel block-sparse matmuls over the `model` axis (and data over
    `data`) equal the matmul on one device, values and gradients; split/merge of the
    blocks round-trips."""
    from jax_blocksparse.tensor_parallel import (merge_blocks, parallel_matmul,
                                                 split_blocks, split_layout)
    m = mesh()
    rng = np.random.default_rng(5)
    mask = rng.random((8, 12)) < 0.3
    mask[:, 4:6] = False  # a device's columns with no block at all (column split, n=2: no)
    layout = jbs.Layout(mask, 16)
    x, w = arr(rng, 8, 6, 128), arr(rng, layout.nnz, 16, 16)
    want = lambda x, w: jnp.sum(jnp.sin(jbs.matmul(x, w, layout)))
    for by, x_spec, out_spec in (("columns", P("data"), P("data", None, "model")),
                                 ("rows", P("data", None, "model"), P("data"))):
        split = split_layout(layout, 2, by)
        np.testing.assert_array_equal(np.asarray(merge_blocks(split_blocks(w, split), split)),
                                      np.asarray(w))
        f = jax.shard_map(lambda x, s, split=split: parallel_matmul(x, s, split, "model"),
                          mesh=m, in_specs=(x_spec, P("model")), out_specs=out_spec)
        got = lambda x, w, f=f, split=split: jnp.sum(jnp.sin(f(x, split_blocks(w, split))))
        gv, gg = jax.jit(jax.value_and_grad(got, argnums=(0, 1)))(x, w)
        wv, wg = jax.jit(jax.value_and_grad(want, argnums=(0, 1)))(x, w)
        close(gv, wv)
        for a, b in zip(gg, wg):
            close(a, b)
    empty = split_layout(jbs.Layout(np.eye(4, dtype=bool) & (np.arange(4) < 2), 16), 2,
                         "columns")
    assert empty.parts[1].nnz == 0
    f = jax.shard_map(lambda x, s: parallel_matmul(x, s, empty, "model"), mesh=m,
                      in_specs=(P(), P("model")), out_specs=P(None, "model"))
    x = arr(rng, 3, 64)
    w = arr(rng, empty.layout.nnz, 16, 16)
    close(jax.jit(f)(x, split_blocks(w, empty)), jbs.matmul(x, w, empty.layout))
    # gradients through the empty band's branch (x replicated: jax 0.10 gave dx garbage
    # there, different each run, until x was made varying before the switch), jit and not
    got = jax.value_and_grad(lambda x, w: jnp.sum(jnp.sin(f(x, split_blocks(w, empty)))),
                             argnums=(0, 1))
    want = jax.value_and_grad(lambda x, w: jnp.sum(jnp.sin(jbs.matmul(x, w, empty.layout))),
                              argnums=(0, 1))(x, w)
    for run in (got, jax.jit(got)) * 2:
        value, grads = run(x, w)
        close(value, want[0])
        for a, b in zip(grads, want[1]):
            close(a, b)


def check_partially_manual_shard_map():
    """parallel_matmul in a shard_map manual over `model` only (`data` automatic), on
    meshes (1, 2) and (4, 2), with Shardy and with GSPMD: values and gradients equal to
    one device (the primitives lower without custom_partitioning there)."""
    from jax_blocksparse.tensor_parallel import parallel_matmul, split_blocks, split_layout
    rng = np.random.default_rng(9)
    layout = jbs.Layout(rng.random((4, 8)) < 0.5, 16)
    x, w = arr(rng, 8, 64), arr(rng, layout.nnz, 16, 16)
    want = jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(jnp.sin(jbs.matmul(x, w, layout))),
                                      argnums=(0, 1)))(x, w)
    for shardy in (True, False):
        jax.config.update("jax_use_shardy_partitioner", shardy)
        for shape in ((1, 2), (4, 2)):
            m = mesh(shape)
            for by, x_spec, out_spec in (("columns", P(), P(None, "model")),
                                         ("rows", P(None, "model"), P())):
                split = split_layout(layout, 2, by)
                f = jax.shard_map(lambda x, s, split=split: parallel_matmul(x, s, split, "model"),
                                  mesh=m, in_specs=(x_spec, P("model")), out_specs=out_spec,
                                  axis_names={"model"})
                loss = lambda x, w, f=f, split=split: jnp.sum(jnp.sin(f(x, split_blocks(w, split))))
                got = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(put(x, m, "data"), w)
                for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
                    close(a, b)
    jax.config.update("jax_use_shardy_partitioner", True)


def check_parallel_dense_module():
    """linen BlockSparseDense with parallel="columns" then "rows" (Megatron's MLP pair),
    data over `data`, on meshes (4, 2), (2, 1) and (1, 2), and (4, 2) of Explicit axes:
    equal to the same weights in unsplit layers, values and gradients."""
    from jax.sharding import AxisType
    for shape in ((4, 2), (2, 1), (1, 2)):
        _parallel_dense_module(mesh(shape))
    explicit = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    with jax.set_mesh(explicit):
        _parallel_dense_module(explicit)


def _parallel_dense_module(m):
    import flax.linen as nn

    from jax_blocksparse.tensor_parallel import merge_blocks
    rng = np.random.default_rng(6)
    up = jbs.Layout(rng.random((4, 8)) < 0.4, 16)
    down = jbs.Layout(rng.random((8, 4)) < 0.4, 16)

    class Mlp(nn.Module):
        parallel: bool

        @nn.compact
        def __call__(self, x):
            kw = dict(mesh=m, axis="model") if self.parallel else {}
            h = jbs.nn.BlockSparseDense(up, parallel="columns" if self.parallel else None,
                                        name="up", **kw)(x)
            return jbs.nn.BlockSparseDense(down, parallel="rows" if self.parallel else None,
                                           name="down", **kw)(jax.nn.gelu(h))

    x = arr(rng, 8, 5, 64)
    params = Mlp(True).init(jax.random.key(0), x)
    split = jbs._layers.split_for
    plain = jax.tree.map(lambda a: a, params)
    for name, layout, by in (("up", up, "columns"), ("down", down, "rows")):
        plain["params"][name]["kernel"] = merge_blocks(params["params"][name]["kernel"],
                                                       split(layout, m, "model", by))
    loss = lambda p, x, parallel: jnp.sum(jnp.sin(Mlp(parallel).apply(p, x)))
    got = jax.jit(jax.value_and_grad(lambda p, x: loss(p, x, True)))(
        params, put(x, m, "data"))
    want = jax.jit(jax.value_and_grad(lambda p, x: loss(p, x, False)))(plain, x)
    close(got[0], want[0])
    for name, layout, by in (("up", up, "columns"), ("down", down, "rows")):
        g = got[1]["params"][name]
        close(merge_blocks(g["kernel"], split(layout, m, "model", by)),
              want[1]["params"][name]["kernel"])
        close(g["bias"], want[1]["params"][name]["bias"])


def check_explicit_sharding_mode():
    """A mesh of `AxisType.Explicit` axes (JAX's explicit sharding mode): the outputs carry
    the shardings their operands imply (batch and heads), values and gradients equal."""
    from jax.sharding import AxisType
    m = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    rng = np.random.default_rng(7)
    layout = jbs.layouts.random(64, 96, 16, 0.4, seed=0)
    x, w = arr(rng, 16, 8, 64), arr(rng, layout.nnz, 16, 16)
    q = arr(rng, 4, 64, 4, 16)
    att = jbs.layouts.local(64, 16, 32)
    n = jnp.full((4,), 40, jnp.int32)
    mm = lambda x, w: jnp.sum(jnp.sin(jbs.matmul(x, w, layout)))
    at = lambda q: jnp.sum(jnp.sin(jbs.attention(q, q, q, att, causal=True)))
    dec = lambda q: jbs.attention(q[:, :1], q, q, att, causal=True, q_offset=n - 1,
                                  kv_lengths=n)
    want = [jax.jit(jax.value_and_grad(mm, argnums=(0, 1)))(x, w),
            jax.jit(jax.value_and_grad(at))(q), jax.jit(dec)(q)]
    with jax.set_mesh(m):
        xs, ws = put(x, m, "data"), put(w, m)
        qs = put(q, m, "data", None, "model")
        y = jax.jit(lambda x, w: jbs.matmul(x, w, layout))(xs, ws)
        assert y.sharding.spec == P("data", None, None), y.sharding.spec
        got = [jax.jit(jax.value_and_grad(mm, argnums=(0, 1)))(xs, ws),
               jax.jit(jax.value_and_grad(at))(qs), jax.jit(dec)(qs)]
        o = jax.jit(lambda q: jbs.attention(q, q, q, att, causal=True))(qs)
        assert o.sharding.spec == P("data", None, "model", None), o.sharding.spec
        assert got[2].sharding.spec == P("data", None, "model", None), got[2].sharding.spec
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        close(a, b)


def check_parallel_linear_nnx():
    """NNX BlockSparseLinear with parallel="columns": equal to the unsplit module with the
    same seed (the slabs split the same initial blocks), values and gradients."""
    from flax import nnx

    from jax_blocksparse.tensor_parallel import merge_blocks
    m = mesh()
    rng = np.random.default_rng(8)
    layout = jbs.Layout(rng.random((4, 8)) < 0.4, 16)
    x = arr(rng, 8, 64)
    par = jbs.nnx.BlockSparseLinear(layout, parallel="columns", mesh=m, axis="model",
                                    rngs=nnx.Rngs(0))
    one = jbs.nnx.BlockSparseLinear(layout, rngs=nnx.Rngs(0))
    close(merge_blocks(par.kernel.value, par.split), one.kernel.value)
    loss = lambda module, x: jnp.sum(jnp.sin(module(x)))
    got = nnx.value_and_grad(loss)(par, put(x, m, "data"))
    want = nnx.value_and_grad(loss)(one, x)
    close(got[0], want[0])
    close(merge_blocks(got[1].kernel.value, par.split), want[1].kernel.value)


def _explicit_cases(fn, args, cases, argnums, context=True, tol=1e-5):
    """`fn`'s value and gradients (w.r.t. `argnums`) on an Explicit (4, 2) mesh, with the
    arguments sharded as each case says (`{name: {arg index: spec}}`, the others
    replicated), equal to one device; each gradient carries its argument's sharding.
    `context`: under `jax.set_mesh` (else jit finds the mesh in the arguments)."""
    import contextlib

    from jax.sharding import AxisType
    m = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    grad = jax.jit(jax.value_and_grad(fn, argnums=argnums))
    want = grad(*args)
    failed = []
    with jax.set_mesh(m) if context else contextlib.nullcontext():
        for name, specs in cases.items():
            sharded = [put(a, m, *specs.get(i, ())) for i, a in enumerate(args)]
            try:
                value, grads = grad(*sharded)
                close(value, want[0], 1e-4)  # a sum of sines: cancellation
                for i, a, b in zip(argnums, grads, want[1]):
                    close(a, b, tol)
                    assert a.sharding.is_equivalent_to(sharded[i].sharding, a.ndim), (
                        i, a.sharding.spec)
            except Exception as e:  # every case's outcome, then fail
                failed.append(f"{name}: {type(e).__name__}: {str(e)[:300]}")
    assert not failed, "\n".join(failed)


def check_explicit_matmul_grads():
    """dds (matmul), sdd, dsd and softmax on an Explicit mesh, each dimension of each
    operand sharded in turn (batch, rows, features, the block axis, the blocks' rows and
    columns, sdd's inner dimension): values and gradients equal to one device."""
    rng = np.random.default_rng(10)
    mask = np.zeros((4, 6), bool)
    mask.flat[rng.permutation(24)[:16]] = True  # 16 blocks: the block axis splits 4 ways
    layout = jbs.Layout(mask, 16)
    x, w = arr(rng, 8, 8, 64), arr(rng, 16, 16, 16)
    sin = lambda y: jnp.sum(jnp.sin(y))
    _explicit_cases(lambda x, w: sin(jbs.matmul(x, w, layout)), (x, w), {
        "batch": {0: ("data",)}, "sequence": {0: (None, "data")},
        "features": {0: (None, None, "model")}, "blocks": {1: ("data",)},
        "block rows": {1: (None, "model")}, "block columns": {1: (None, None, "model")},
        "batch and blocks": {0: ("data",), 1: ("model",)}}, (0, 1))
    x4 = x.reshape(2, 4, 8, 64)
    _explicit_cases(lambda x, w: sin(jbs.matmul(x, w, layout)), (x4, w), {
        "inner dimensions": {0: (None, "model", "data")}}, (0, 1), context=False)
    a, b = arr(rng, 64, 128), arr(rng, 128, 96)
    _explicit_cases(lambda a, b: sin(jbs.sdd(a, b, layout)), (a, b), {
        "rows": {0: ("data",)}, "inner": {0: (None, "data"), 1: ("data",)},
        "inner of a": {0: (None, "model")}, "columns": {1: (None, "model")}}, (0, 1),
        context=False)
    s, b = arr(rng, 16, 16, 16), arr(rng, 96, 64)
    _explicit_cases(lambda s, b: sin(jbs.dsd(s, b, layout)), (s, b), {
        "blocks": {0: ("data",)}, "block rows": {0: (None, "model")},
        "inner": {1: ("data",)}, "columns": {1: (None, "model")}}, (0, 1))
    # batched operands (dds's G), read transposed; the block-sparse softmax
    square = jbs.Layout(np.tril(np.ones((4, 4), bool)), 16)  # 10 blocks
    a, w = arr(rng, 4, 64, 64), arr(rng, 4, square.nnz, 16, 16)
    _explicit_cases(lambda a, w: sin(jbs.dds(a, w, square, trans_a=True, trans_w=True)),
                    (a, w), {"batch": {0: ("data",), 1: ("data",)},
                             "batch and rows": {0: ("data", None, "model"), 1: ("data",)}},
                    (0, 1))
    _explicit_cases(lambda w: sin(jbs.softmax(w, square, scale=0.5, causal=True)), (w,),
                    {"batch": {0: ("data",)}, "blocks": {0: (None, "model")}}, (0,),
                    tol=1e-3)  # tiny gradients (a softmax's sum to zero): rounding


def check_explicit_attention_grads():
    """attention (the fused primitives' operands; with a BlockMask, kv_lengths and segment
    ids; at q_offset; second order), decode (Tq = 1 with q_offset and kv_lengths) and
    paged decode on an Explicit mesh, batch, sequence, heads and head dim sharded in turn:
    values and gradients equal to one device."""
    rng = np.random.default_rng(11)
    b, t, hq, hkv, d = 4, 64, 4, 2, 16
    q, k, v = arr(rng, b, t, hq, d), arr(rng, b, t, hkv, d), arr(rng, b, t, hkv, d)
    layout = jbs.layouts.local(t, 16, 32)
    sin = lambda y: jnp.sum(jnp.sin(y))
    each = lambda *spec: {i: spec for i in range(3)}
    dims = {"batch": each("data"), "sequence": each(None, "data"),
            "heads": each(None, None, "model"), "head dim": each(None, None, None, "model"),
            "batch and heads": each("data", None, "model")}
    _explicit_cases(lambda q, k, v: sin(jbs.attention(q, k, v, layout, causal=True)),
                    (q, k, v), dims, (0, 1, 2))
    # a BlockMask per batch entry, kv_lengths and segment ids; queries at q_offset
    lengths = jnp.asarray([64, 50, 33, 5], jnp.int32)
    ids = jnp.asarray(np.cumsum(rng.random((b, t)) < 0.05, axis=1), jnp.int32)
    blocks = (rng.random((b, 1, t // 16, t // 16)) < 0.6) | np.eye(t // 16, dtype=bool)
    mask = jbs.BlockMask.from_mask(jnp.asarray(blocks), 16)
    masked = lambda q, k, v: sin(jbs.attention(q, k, v, mask, causal=True, kv_lengths=lengths,
                                               q_segment_ids=ids))
    _explicit_cases(masked, (q, k, v), {n: dims[n] for n in ("batch", "sequence")}, (0, 1, 2))
    offset = jnp.asarray([0, 8, 16, 32], jnp.int32)
    shifted = lambda q, k, v: sin(jbs.attention(q[:, :32], k, v, layout, causal=True,
                                                q_offset=offset))
    _explicit_cases(shifted, (q, k, v), {n: dims[n] for n in ("batch", "sequence", "heads")},
                    (0, 1, 2))
    # attention sinks [Hq]: replicated, or sharded with the heads
    sinks = arr(rng, hq)
    with_sinks = lambda q, k, v, s: sin(jbs.attention(q, k, v, layout, causal=True, sinks=s))
    _explicit_cases(with_sinks, (q, k, v, sinks), {
        "batch": dims["batch"], "sequence": dims["sequence"],
        "batch and heads": {**dims["batch and heads"], 3: ("model",)}}, (0, 1, 2, 3))
    # second order (the tangent and backward primitives' JVP: the pure-JAX reference)
    grad_norm = lambda q, k, v: jnp.sum(jax.grad(
        lambda q: sin(jbs.attention(q, k, v, layout, causal=True)))(q) ** 2)
    _explicit_cases(grad_norm, (q, k, v), {"sequence": dims["sequence"],
                                           "batch and heads": dims["batch and heads"]}, (0,))
    n = jnp.asarray([64, 40, 17, 1], jnp.int32)
    dec = lambda q, k, v: sin(jbs.attention(q, k, v, layout, causal=True, q_offset=n - 1,
                                            kv_lengths=n))
    _explicit_cases(dec, (q[:, :1], k, v), dict(dims, sequence={1: (None, "data"),
                                                                2: (None, "data")}),
                    (0, 1, 2))
    page = 8
    table = jnp.asarray(rng.permutation(b * t // page).reshape(b, -1), jnp.int32)
    pools = [jnp.zeros((b * t // page, page, hkv, d)).at[table.reshape(-1)].set(
        x.reshape(-1, page, hkv, d)) for x in (k, v)]
    paged = lambda q, kp, vp: sin(jbs.attention(q, kp, vp, layout, causal=True,
                                                q_offset=n - 1, kv_lengths=n,
                                                page_table=table))
    _explicit_cases(paged, (q[:, :1], *pools), {
        "batch": {0: ("data",)}, "pages": {1: ("data",), 2: ("data",)},
        "page rows": {1: (None, "data"), 2: (None, "data")},
        "heads": each(None, None, "model"), "head dim": each(None, None, None, "model")},
        (0, 1, 2), context=False)
