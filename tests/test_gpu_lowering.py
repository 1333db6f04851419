"""On a GPU the primitives lower to this package's CUDA custom calls, never to a dense dot."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_blocksparse as jbs
from jax_blocksparse.attention_metadata import tile_fill
from reference import TOLERANCE, dds64, rel_err


def _compiled_text(fn, *args):
    return jax.jit(fn).lower(*args).compile().as_text()


@pytest.mark.gpu
def test_forward_backward_and_vmap_use_the_kernels():
    layout = jbs.layouts.random(256, 512, 32, 0.25, seed=0)
    x = jnp.ones((8, 256), jnp.bfloat16)
    w = jnp.ones((layout.nnz, 32, 32), jnp.bfloat16)
    loss = lambda x, w: jnp.sum(jbs.matmul(x, w, layout).astype(jnp.float32) ** 2)
    for fn, args in [(lambda x, w: jbs.matmul(x, w, layout), (x, w)),
                     (jax.grad(loss, argnums=(0, 1)), (x, w)),
                     (jax.vmap(lambda w: jbs.matmul(x, w, layout)), (jnp.stack([w, w]),))]:
        text = _compiled_text(fn, *args)
        assert "jax_blocksparse_dds" in text
        assert " dot(" not in text, "a dense dot in the compiled program"
    grad_text = _compiled_text(jax.grad(loss, argnums=(0, 1)), x, w)
    assert "jax_blocksparse_sdd" in grad_text


@pytest.mark.gpu
def test_eager_call_runs_the_kernel_and_matches():
    rng = np.random.default_rng(0)
    layout = jbs.layouts.barabasi_albert(512, 512, 64, 0.1, seed=1)
    x = jnp.asarray(rng.standard_normal((100, 512)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((layout.nnz, 64, 64)), jnp.bfloat16)
    assert rel_err(jbs.matmul(x, w, layout), dds64(x, w, layout)) < TOLERANCE[jnp.bfloat16]


@pytest.mark.gpu
def test_deterministic_bitwise():
    rng = np.random.default_rng(1)
    layout = jbs.layouts.barabasi_albert(1024, 1024, 32, 0.1, seed=2)
    x = jnp.asarray(rng.standard_normal((300, 1024)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((layout.nnz, 32, 32)), jnp.bfloat16)
    grad = jax.jit(jax.grad(lambda x, w: jnp.sum(jbs.matmul(x, w, layout).astype(
        jnp.float32) ** 2), argnums=(0, 1)))
    first = [np.asarray(g.astype(jnp.float32)) for g in grad(x, w)]
    for _ in range(3):
        again = [np.asarray(g.astype(jnp.float32)) for g in grad(x, w)]
        for a, b in zip(first, again):
            np.testing.assert_array_equal(a, b)


@pytest.mark.gpu
def test_attention_forward_and_grad_use_the_fused_kernels():
    layout = jbs.layouts.local(512, 128, 200)
    q = jnp.ones((1, 512, 2, 64), jnp.bfloat16)
    f = lambda q: jbs.attention(q, q, q, layout, causal=True)
    assert "jax_blocksparse_attention_fwd" in _compiled_text(f, q)
    grad_text = _compiled_text(jax.grad(lambda q: f(q).astype(jnp.float32).sum()), q)
    assert "jax_blocksparse_attention_bwd" in grad_text
    assert " dot(" not in grad_text


def cuda_text(fn, *args):
    """The program of `jax.jit(fn)(*args)` lowered for the "cuda" platform (any machine)."""
    return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


@pytest.mark.skipif(not jbs.cuda_built(), reason="the CUDA extension is not built")
def test_cuda_lowering_without_a_gpu():
    """Lowering for the "cuda" platform works on any machine: each op becomes its custom
    call with the data operands followed by the layout's int32 metadata."""
    layout = jbs.layouts.random(64, 128, 32, 0.5)
    f = jax.jit(lambda x, w: jbs.matmul(x, w, layout))
    text = f.trace(jnp.ones((8, 64), jnp.bfloat16), jnp.ones((layout.nnz, 32, 32), jnp.bfloat16)
                   ).lower(lowering_platforms=("cuda",)).as_text()
    calls = [line for line in text.splitlines() if "custom_call" in line]
    assert len(calls) == 1 and "@jax_blocksparse_dds(" in calls[0]
    # a, w, ptr/idx/blk/order, the group records (a placeholder: block size 32 without an
    # sm_90a device, `_cuda._group_columns`)
    assert calls[0].split("(", 1)[1].split(")")[0].count("%") == 2 + 5
    assert "group_columns = 0 : i32" in calls[0]
    att = jbs.layouts.local(256, 64, 100)
    g = jax.jit(jax.grad(lambda q: jbs.attention(q, q, q, att, causal=True).astype(
        jnp.float32).sum()))
    text = g.trace(jnp.ones((1, 256, 2, 64), jnp.bfloat16)).lower(
        lowering_platforms=("cuda",)).as_text()
    assert "@jax_blocksparse_attention_fwd(" in text and "@jax_blocksparse_attention_bwd(" in text
    operands = {line.split("@")[1].split("(")[0]: line.split("(", 1)[1].split(")")[0].count("%")
                for line in text.splitlines() if "custom_call" in line}
    # forward: q, k, v, sinks (a placeholder [0] here), kv_lengths, q_positions, by-query
    # lists (4) with their batch axis, segment ids (2), the tiles' bits (a placeholder
    # here); backward: q, k, v, o, lse, dO, dlse, kv_lengths, q_positions, both lists (8)
    # with their batch axis, segment ids (2), both directions' tile bits (placeholders here)
    assert operands == {"jax_blocksparse_attention_fwd": 13, "jax_blocksparse_attention_bwd": 21}
    calls = [line for line in text.splitlines() if "custom_call" in line]
    assert all("tensor<1x1x4x3xi32>" in call for call in calls)  # lists [Bm, Hm, Rq, width]


@pytest.mark.skipif(not jbs.cuda_built(), reason="the CUDA extension is not built")
@pytest.mark.parametrize("switch,columns", [("", 64), ("matmul_small_records", 0),
                                            ("matmul_group_wgmma", 256),
                                            ("matmul_group_wgmma", 128)])
@pytest.mark.parametrize("bs", (16, 32))
def test_dds_dsd_carry_the_group_records_their_kernel_reads(monkeypatch, switch, columns, bs):
    """At block sizes 16/32 on an sm_90a device (faked here), dds (a matmul's forward and
    its dx) carries the layout's group records of the width their kernel reads
    (`_cuda._group_columns`): 64 columns by default (wgmma_small.cuh), none under
    JAX_BLOCKSPARSE_MATMUL_SMALL_RECORDS=0 (a one-int placeholder, group_columns 0), 256
    under JAX_BLOCKSPARSE_MATMUL_GROUP_WGMMA=1 and 128 under =128 (wgmma_group.cuh):
    exactly `Layout.group_steps(by, columns)`'s ints; float32 calls never do."""
    from jax_blocksparse import _cuda
    for name in ("JAX_BLOCKSPARSE_MATMUL_SMALL_RECORDS", "JAX_BLOCKSPARSE_MATMUL_GROUP_WGMMA"):
        monkeypatch.delenv(name, raising=False)
    defaults = _cuda._read_switches()  # as the environment without those switches says
    assert defaults.matmul_small_records and not defaults.matmul_group_wgmma
    switches = defaults._replace(**({switch: columns} if switch else {}))
    monkeypatch.setattr(_cuda, "SWITCHES", switches)
    monkeypatch.setattr(_cuda, "_sm90a_device", lambda: True)
    layout = jbs.layouts.random(96, 160, bs, 0.3, seed=2)
    for dtype in (jnp.bfloat16, jnp.float32):
        x = jnp.ones((8, 96), dtype)
        w = jnp.ones((layout.nnz, bs, bs), dtype)
        grad = jax.value_and_grad(
            lambda x, w: jbs.matmul(x, w, layout).astype(jnp.float32).sum(), argnums=(0, 1))
        text = cuda_text(grad, x, w)
        calls = [line for line in text.splitlines() if "custom_call" in line
                 and ("@jax_blocksparse_dds(" in line or "@jax_blocksparse_dsd(" in line)]
        assert len(calls) == 2, calls  # the forward dds and dx's dds (trans_w)
        want = columns if dtype == jnp.bfloat16 else 0
        for call in calls:
            assert f"group_columns = {want} : i32" in call, call
        sizes = {int(n) for n in re.findall(r"tensor<(\d+)xi32>", text)}
        if want:
            for by in ("row", "col"):
                assert len(layout.group_steps(by, want)) in sizes, (by, sizes)



def test_placeholder_bits_stay_a_constant():
    """The tile bits' placeholder is a constant XLA keeps in memory: a constant whose
    elements are all equal becomes a broadcast, one more kernel launched on every call
    (checked here on the CPU compiler, beside such a constant)."""
    from jax_blocksparse import _cuda
    x = jax.device_put(jnp.ones(3), jax.devices("cpu")[0])

    def compiled(constant):
        keep = lambda x: jax.lax.optimization_barrier((x, constant))
        return jax.jit(keep).lower(x).compile().as_text()
    assert "broadcast" not in compiled(_cuda.PLACEHOLDER_BITS)
    assert "broadcast" in compiled(np.zeros_like(_cuda.PLACEHOLDER_BITS))


@pytest.mark.skipif(not jbs.cuda_built(), reason="the CUDA extension is not built")
@pytest.mark.parametrize("causal", [False, True])
def test_default_kv_lengths_stay_a_constant(causal):
    """Without `kv_lengths` the forward kernel gets every key as lengths `Tk + b` (any
    length >= Tk: the kernels clamp), a constant whose entries differ, which XLA keeps in
    memory; one whose entries are all equal becomes a broadcast kernel on every call
    (`test_placeholder_bits_stay_a_constant`)."""
    att = jbs.layouts.local(256, 64, 100)
    f = jax.jit(lambda q: jbs.attention(q, q, q, att, causal=causal))
    text = f.trace(jnp.ones((2, 256, 2, 64), jnp.bfloat16)).lower(
        lowering_platforms=("cuda",)).as_text().splitlines()
    call = next(line for line in text if "@jax_blocksparse_attention_fwd(" in line)
    kv_lengths = call.split("@jax_blocksparse_attention_fwd(")[1].split(", ")[4]
    definition = next(line for line in text if line.strip().startswith(kv_lengths + " = "))
    assert "stablehlo.constant dense<[256, 257]> : tensor<2xi32>" in definition, definition


def test_float64_matmul_lowers_to_pure_jax_on_a_gpu():
    """The matmul kernels take float32, float16 and bfloat16: the "cuda" lowering of the
    family (`_cuda._matmul_lowering`) sends float64 (x64 on) to the pure-JAX
    implementation, forward and backward, and float32 to the kernel rule. Checked on any
    machine in a fresh process, with a kernel rule that records its calls."""
    import subprocess
    import sys
    import textwrap
    script = textwrap.dedent("""
        import jax, jax.numpy as jnp
        jax.config.update("jax_enable_x64", True)
        import jax_blocksparse as jbs
        from jax_blocksparse import _cuda, _jax_internals as jint, matmul_primitives as mp
        from jax_blocksparse._partitioning import LOCAL
        calls = []
        def kernel_rule(prim):
            def rule(ctx, x, y, **params):
                calls.append((prim.name, str(ctx.avals_in[0].dtype)))
                return jint.lower_fun(mp._REFERENCES[prim])(ctx, x, y, **params)
            return rule
        for prim in (mp.sdd_p, mp.dsd_p, mp.dds_p):
            jint.register_lowering_rule(LOCAL[prim],
                                        _cuda._matmul_lowering(prim, kernel_rule(prim)), "cuda")
        layout = jbs.layouts.random(64, 128, 32, 0.5)
        loss = lambda x, w: jbs.matmul(x, w, layout).sum()
        for dtype in (jnp.float64, jnp.float32):
            args = (jnp.ones((8, 64), dtype), jnp.ones((layout.nnz, 32, 32), dtype))
            jax.jit(jax.grad(loss, argnums=(0, 1))).trace(*args).lower(
                lowering_platforms=("cuda",))
        print(sorted(set(calls)))
    """)
    package_root = os.path.dirname(os.path.dirname(jbs.__file__))  # the package under test
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [package_root, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[-2] == str([("blocksparse_dds", "float32"),
                                                 ("blocksparse_sdd", "float32")])


@pytest.mark.skipif(not jbs.cuda_built(), reason="the CUDA extension is not built")
def test_attention_without_a_fused_kernel_lowers_to_pure_jax_and_says_so():
    """float32, head dim 256 (but the FA3-design forward's, on Hopper) and block size 8 have
    no fused kernel: on a GPU they run the pure-JAX implementation, and
    JAX_BLOCKSPARSE_DEBUG says so when compiling. Head dim 96's backward runs the head dim
    128 kernels zero-padded (`_cuda.BACKWARD_PADDED_HEAD_DIMS`), its forward as 256's."""
    import subprocess
    import sys
    import textwrap
    script = textwrap.dedent("""
        import jax, jax.numpy as jnp, jax_blocksparse as jbs
        from jax_blocksparse import _cuda
        from test_gpu_lowering import cuda_text
        print(_cuda.sm90_forward())
        for dtype, d, bs in [(jnp.float32, 64, 64), (jnp.bfloat16, 96, 64),
                             (jnp.bfloat16, 256, 64), (jnp.bfloat16, 64, 8),
                             (jnp.bfloat16, 64, 64)]:
            layout = jbs.layouts.local(256, bs, 100)
            q = jnp.ones((1, 256, 2, d), dtype)
            loss = lambda q: jbs.attention(q, q, q, layout, causal=True).astype(
                jnp.float32).sum()
            text = cuda_text(jax.grad(loss), q)
            print(dtype.__name__, d, bs, "@jax_blocksparse_attention_fwd(" in text,
                  "@jax_blocksparse_attention_bwd(" in text)
    """)
    package_root = os.path.dirname(os.path.dirname(jbs.__file__))  # the package under test
    env = dict(os.environ, JAX_BLOCKSPARSE_DEBUG="1", JAX_BLOCKSPARSE_ATTN_BWD_D256="0",
               PYTHONPATH=os.pathsep.join([package_root, os.path.dirname(__file__),
                                           os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=300, cwd=os.path.dirname(__file__))
    assert result.returncode == 0, result.stderr[-3000:]
    sm90, *lines = result.stdout.split("\n")
    assert lines[:5] == ["float32 64 64 False False", f"bfloat16 96 64 {sm90} True",
                         f"bfloat16 256 64 {sm90} False", "bfloat16 64 8 False False",
                         "bfloat16 64 64 True True"], lines
    err = result.stderr
    assert "attention_fwd q[1, 256, 2, 64] bs=64: pure-JAX path (no fused kernel for dtype " \
           "float32)" in err
    assert "attention_bwd q[1, 256, 2, 256] bs=64: pure-JAX path (no fused kernel for head " \
           "dim 256)" in err
    assert "attention_bwd q[1, 256, 2, 96]" not in err
    assert ("attention_fwd q[1, 256, 2, 96]" in err) == (sm90 == "False")
    assert "no fused kernel for block size 8" in err


def _bwd_operand_types(text):
    """The operand types of the one backward custom call in `text`, from kv_lengths on."""
    import re
    (call,) = [line for line in text.splitlines() if "@jax_blocksparse_attention_bwd(" in line]
    return call, ", ".join(re.sub(r"\s+", " ", call).split(" : (")[-1].split(", ")[7:])


def test_hopper_routing_and_operands(monkeypatch, attention_kernels):
    """Where the FA3-design kernels run (`_cuda.sm90_forward()`, `_cuda.sm90_backward()`,
    faked here), calls with segment ids, a mask per batch entry, lengths that are not
    multiples of the block size or q_offset lower to the fused forward and the fused
    backward (ids padded to whole tiles, lists with their batch axis in both directions,
    q_positions, the workspace padded to whole tiles); where the Hopper backward does not
    run (JAX_BLOCKSPARSE_ATTN_BWD_VARIANT 0, another GPU) the backward of those calls takes
    the pure-JAX path. Block sizes 16 and 32 run the Hopper forward (tile lists, bits,
    `mask_block`; head dims 96 and 256 too) and, where the Hopper backward runs, head dims
    64 and 128, the Hopper backward (the tile lists by query and their transpose by key,
    each direction's bits, `mask_block`); so does block size 64 with those mask sources in
    the backward (its forward: the Hopper forward's own block-64 rows).
    Lowered for "cuda" on any machine (the lowering rules are registered here when the
    extension is not built)."""
    import re
    import sys
    from jax_blocksparse import _cuda, _partitioning
    from jax_blocksparse import _jax_internals as jint
    att = sys.modules["jax_blocksparse.attention"]
    # without the head-dim-256 backward rows (JAX_BLOCKSPARSE_ATTN_BWD_D256=1 adds them:
    # test_head_dim_256_backward_under_its_switch)
    monkeypatch.setattr(_cuda, "ATTENTION_KERNELS", tuple(
        r for r in attention_kernels if not (r.backward and r.head_dim == 256)))
    why = lambda **kw: _cuda.fused_attention_unsupported(
        jnp.bfloat16, kw.get("d", 128), kw.get("bs", 128), kw.get("tq", 1024), kw.get("tk", 1024),
        kw.get("segments", False), kw.get("positioned", False), kw.get("mb", 1),
        forward=kw.get("forward", False))
    sources = ({"segments": True}, {"mb": 2}, {"tq": 1000, "tk": 1100}, {"positioned": True},
               {"positioned": True, "segments": True})
    monkeypatch.setattr(_cuda, "sm90_forward", lambda: False)
    monkeypatch.setattr(_cuda, "sm90_backward", lambda: False)
    for forward in (True, False):
        assert why(segments=True, forward=forward) == "segment ids"
        assert why(mb=2, forward=forward) == "a mask per batch entry"
        assert "multiples" in why(tq=1000, forward=forward)
        assert why(positioned=True, forward=forward) == "q_offset"
        assert why(bs=16, forward=forward) == "block size 16"  # FA2: 64 and 128 only
    monkeypatch.setattr(_cuda, "sm90_forward", lambda: True)
    for kw in sources:  # the Hopper forward; the FA2 backward
        assert why(forward=True, **kw) is None, kw
        assert why(forward=False, **kw) is not None, kw
    monkeypatch.setattr(_cuda, "sm90_backward", lambda: True)
    for kw in sources:  # the Hopper backward, at block size 128 and on its tiles at 64
        assert why(forward=False, **kw) is None, kw
        assert why(forward=False, bs=64, **kw) is None, kw
        assert why(forward=False, bs=64, d=256, **kw) == "head dim 256", kw
    assert why(forward=False, bs=64) is None  # no mask source: both rows (FA2's, the tiles)
    for forward in (True, False):
        assert "multiples" in why(tq=1000, tk=0, forward=forward)  # no key at all
    # block sizes 16 and 32: the Hopper kernels only (their 128 x 128 tiles), the forward
    # at every head dim of its table, the backward at 64 and 128
    for kw in ({"bs": 16}, {"bs": 32, "tq": 1000, "segments": True},
               {"bs": 16, "positioned": True, "segments": True}, {"bs": 32, "d": 64},
               {"bs": 32, "tq": 1000, "tk": 1100, "mb": 2}):
        assert why(forward=True, **kw) is None, kw
        assert why(forward=False, **kw) is None, kw
    for kw in ({"bs": 32, "d": 96}, {"bs": 16, "d": 256},
               {"bs": 32, "d": 256, "tq": 1000, "tk": 1100}):
        assert why(forward=True, **kw) is None, kw
        assert why(forward=False, **kw) == f"head dim {kw['d']}", kw
    monkeypatch.setattr(_cuda, "sm90_backward", lambda: False)  # the FA2 backward: none
    assert why(bs=16, forward=False) == "block size 16"
    assert why(bs=32, forward=False, segments=True) == "block size 32"
    monkeypatch.setattr(_cuda, "sm90_backward", lambda: True)
    assert why(bs=8, forward=True) == "block size 8"
    monkeypatch.setattr(_cuda, "sm90_forward", lambda: False)
    for d in (96, 256):  # the FA3-design forward's only
        assert why(d=d, forward=True) == why(d=d) == f"head dim {d}"
    assert why(bs=32, forward=True) == "block size 32"
    monkeypatch.setattr(_cuda, "sm90_forward", lambda: True)
    for kw in ({"d": 96}, {"d": 256}, {"d": 96, "tq": 1000, "segments": True}):
        assert why(forward=True, **kw) is None, kw
        assert why(forward=False, **kw) == f"head dim {kw['d']}", kw  # the backward
    assert why(d=80, forward=True) == "head dim 80"
    if not jbs.cuda_built():
        jint.register_lowering_rule(_partitioning.LOCAL[att.attention_p],
                                    _cuda._attention_forward_lowering, "cuda")
        jint.register_lowering_rule(_partitioning.LOCAL[att.attention_bwd_p],
                                    _cuda._attention_backward_lowering, "cuda")
    b, tq, tk, bs = 2, 1000, 1100, 128
    q = jnp.zeros((b, tq, 4, 128), jnp.bfloat16)
    k = jnp.zeros((b, tk, 2, 128), jnp.bfloat16)
    ids_q, ids_k = jnp.zeros((b, tq), jnp.int32), jnp.zeros((b, tk), jnp.int32)
    layout = jbs.Layout(np.ones((8, 9), bool), bs)
    loss = lambda q, k: jbs.attention(q, k, k, layout, causal=True, q_segment_ids=ids_q,
                                      kv_segment_ids=ids_k).astype(jnp.float32).sum()
    text = cuda_text(jax.grad(loss), q, k)
    call, types = _bwd_operand_types(text)
    # kv_lengths, q_positions, by query [B, Hm, Rq(, W)], by key [B, Hm, Rk(, W)], ids,
    # the tile bits of both directions (placeholders: block size 128)
    assert types.startswith(
        "tensor<2xi32>, tensor<1xi32>, tensor<2x1x8xi32>, tensor<2x1x8xi32>, "
        "tensor<2x1x8x9xi32>, tensor<2x1x8xi32>, tensor<2x1x9xi32>, tensor<2x1x9xi32>, "
        "tensor<2x1x9x8xi32>, tensor<2x1x9xi32>, tensor<2x1024xi32>, tensor<2x1152xi32>, "
        "tensor<1x1x1x2xi32>, tensor<1x1x1x2xi32>)"), types
    assert "segments = true" in call and "positioned = false" in call
    assert "tensor<2x4x2x1024xf32>" in call  # the workspace: lse, delta rows of whole tiles
    (call,) = [line for line in text.splitlines() if "@jax_blocksparse_attention_fwd(" in line]
    assert "segments = true" in call and "tensor<2x1152xi32>" in call
    off = jnp.asarray([100, 300], jnp.int32)
    chunk = lambda q, k: jbs.attention(
        q[:, :200], k, k, jbs.Layout(np.tril(np.ones((9, 9), bool)), bs), causal=True,
        q_offset=off, q_segment_ids=ids_q[:, :200], kv_segment_ids=ids_k)
    text = cuda_text(jax.grad(lambda q, k: chunk(q, k).astype(jnp.float32).sum()), q, k)
    (call,) = [line for line in text.splitlines() if "@jax_blocksparse_attention_fwd(" in line]
    assert "positioned = true" in call and "tensor<2x384x4x128xbf16>" in call
    call, types = _bwd_operand_types(text)
    # the positioned query blocks (3 per batch entry) and their by-key lists, per batch entry
    assert "positioned = true" in call and "segments = true" in call
    assert ("tensor<2x1x3xi32>, tensor<2x1x3xi32>, tensor<2x1x3x9xi32>, tensor<2x1x3xi32>, "
            "tensor<2x1x9xi32>, tensor<2x1x9xi32>, tensor<2x1x9x3xi32>, tensor<2x1x9xi32>"
            in types), types
    monkeypatch.setattr(_cuda, "sm90_backward", lambda: False)  # e.g. BWD_VARIANT=0
    text = cuda_text(jax.grad(loss), q, k)
    assert "@jax_blocksparse_attention_bwd(" not in text, [l[:300] for l in text.splitlines() if "attention_bwd(" in l]
    assert "@jax_blocksparse_attention_fwd(" in text
    monkeypatch.setattr(_cuda, "sm90_backward", lambda: True)
    # block size 16: the tile lists of 128 x 128 tiles (8 lines for Tq = 1000) and their
    # bits [Bm, Hm, lines, 2 width] last; block_size 128, mask_block 16; the Hopper
    # backward with the tile lists by query, their transpose by key (9 lines of 8 query
    # tiles), the ids, then each direction's bits; the workspace of whole 128-row tiles
    fine = jbs.Layout(np.tril(np.ones((63, 69), bool), 6), 16)
    loss = lambda q, k: jbs.attention(q, k, k, fine, causal=True).astype(jnp.float32).sum()
    text = cuda_text(jax.grad(loss), q, k)
    call, types = _bwd_operand_types(text)
    assert "block_size = 128 : i32" in call and "mask_block = 16 : i32" in call, call
    assert types.startswith(
        "tensor<2xi32>, tensor<1xi32>, tensor<1x1x8xi32>, tensor<1x1x8xi32>, "
        "tensor<1x1x8x9xi32>, tensor<1x1x8xi32>, tensor<1x1x9xi32>, tensor<1x1x9xi32>, "
        "tensor<1x1x9x8xi32>, tensor<1x1x9xi32>, tensor<1x1xi32>, tensor<1x1xi32>, "
        "tensor<1x1x8x18xi32>, tensor<1x1x9x16xi32>)"), types
    assert "tensor<2x4x2x1024xf32>" in call
    # block size 64 with segment ids: the Hopper forward at block 64 (tile bits: a
    # placeholder, the tiles not computed for it), the Hopper backward on 128 x 128 tiles
    # (8 query tiles, 9 key tiles, lists per batch entry), mask_block 64
    layout64 = jbs.Layout(np.ones((16, 18), bool), 64)
    loss64 = lambda q, k: jbs.attention(q, k, k, layout64, causal=True, q_segment_ids=ids_q,
                                        kv_segment_ids=ids_k).astype(jnp.float32).sum()
    text = cuda_text(jax.grad(loss64), q, k)
    call, types = _bwd_operand_types(text)
    assert "block_size = 128 : i32" in call and "mask_block = 64 : i32" in call, call
    assert re.match(r"tensor<2xi32>, tensor<1xi32>, tensor<2x1x8xi32>, tensor<2x1x8xi32>, "
                    r"tensor<2x1x8x\d+xi32>, tensor<2x1x8xi32>, tensor<2x1x9xi32>, "
                    r"tensor<2x1x9xi32>, tensor<2x1x9x8xi32>, tensor<2x1x9xi32>, "
                    r"tensor<2x1024xi32>, tensor<2x1152xi32>, tensor<2x1x8x\d+xi32>, "
                    r"tensor<2x1x9x16xi32>\)", types), types
    (call,) = [line for line in text.splitlines() if "@jax_blocksparse_attention_fwd(" in line]
    assert "block_size = 64 : i32" in call and "mask_block = 64 : i32" in call, call
    assert "tensor<1x1x1x2xi32>) -> " in call, call
    # without a mask source, a static block-64 layout runs its backward on the Hopper
    # backward's tiles when its blocks fill them (`tile_fill` >= TILED64_MIN_FILL: a local
    # layout), else on the FA2 backward's rows (a random one at density 0.2);
    # JAX_BLOCKSPARSE_ATTN_BWD_TILED64=0 / 1: never / always
    rng = np.random.default_rng(11)
    sparse64 = jbs.Layout(rng.random((16, 16)) < 0.2, 64)
    local64 = jbs.layouts.local(1024, 64, 300)
    assert tile_fill(local64, True, 1024, 1024) >= _cuda.TILED64_MIN_FILL
    assert tile_fill(sparse64, True, 1024, 1024) < _cuda.TILED64_MIN_FILL
    for switch, layout, tiled in ((-1, local64, True), (-1, sparse64, False),
                                  (0, local64, False), (1, sparse64, True)):
        monkeypatch.setattr(_cuda, "SWITCHES", _cuda.SWITCHES._replace(attn_bwd_tiled64=switch))
        call, _ = _bwd_operand_types(cuda_text(jax.grad(
            lambda q, k: jbs.attention(q, k, k, layout, causal=True).astype(jnp.float32).sum()),
            jnp.zeros((b, 1024, 4, 128), jnp.bfloat16), k[:, :1024]))
        assert f"block_size = {128 if tiled else 64} : i32" in call, (switch, tiled, call)
        assert "mask_block = 64 : i32" in call, call
    monkeypatch.setattr(_cuda, "SWITCHES", _cuda.SWITCHES._replace(attn_bwd_tiled64=-1))
    # vmap over a BlockMask of block 64 folds its lists per batch entry (a mask source): the
    # tile lists, built for every traced block-64 mask where the Hopper backward runs (the
    # switch unset), fold with them (3 x B = 6 entries, one 128-row tile), never
    # placeholders read as lists
    masks = jnp.asarray(np.random.default_rng(5).random((3, 1, 1, 2, 2)) < 0.7)
    mapped = lambda q, k, m: jbs.attention(q, k, k, jbs.BlockMask.from_mask(m, 64),
                                           causal=True).astype(jnp.float32).sum()
    grads = jax.vmap(jax.grad(mapped), in_axes=(None, None, 0))
    call, types = _bwd_operand_types(cuda_text(
        grads, jnp.zeros((b, 128, 4, 128), jnp.bfloat16), k[:, :128], masks))
    assert "block_size = 128 : i32" in call and "mask_block = 64 : i32" in call, call
    assert types.startswith("tensor<6xi32>, tensor<1xi32>, tensor<6x1x1xi32>, "), types
    # JAX_BLOCKSPARSE_ATTN_BWD_TILED64=0: a BlockMask's backward on the FA2 rows; under that
    # vmap (lists per batch entry, no tiles built) the pure-JAX backward
    monkeypatch.setattr(_cuda, "SWITCHES", _cuda.SWITCHES._replace(attn_bwd_tiled64=0))
    q128 = jnp.zeros((b, 128, 4, 128), jnp.bfloat16)
    call, _ = _bwd_operand_types(cuda_text(jax.grad(mapped), q128, k[:, :128], masks[0]))
    assert "block_size = 64 : i32" in call, call
    text = cuda_text(jax.vmap(jax.grad(lambda *a: mapped(*a)), in_axes=(None, None, 0)),
                     q128, k[:, :128], masks)  # (a new function: not the trace above)
    assert "@jax_blocksparse_attention_bwd(" not in text
    for layout in (jbs.layouts.local(1024, 64, 300), jbs.Layout(np.ones((8, 8), bool), 128)):
        text = cuda_text(jax.grad(lambda q, k: jbs.attention(  # bits: placeholders, unread
            q[:, :1024], k[:, :1024], k[:, :1024], layout, causal=True).astype(
                jnp.float32).sum()), q, k)
        if layout.block_size == 128:
            call, types = _bwd_operand_types(text)
            assert "tensor<1x1x1x2xi32>, tensor<1x1x1x2xi32>) -> " in types, types
            assert "mask_block = 128 : i32" in call
    (call,) = [line for line in text.splitlines() if "@jax_blocksparse_attention_fwd(" in line]
    text = cuda_text(jax.grad(loss), q, k)
    (call,) = [line for line in text.splitlines() if "@jax_blocksparse_attention_fwd(" in line]
    assert "block_size = 128 : i32" in call and "mask_block = 16 : i32" in call, call
    types = re.sub(r"\s+", " ", call).split(" : (")[-1]
    assert ("tensor<2xi32>, tensor<1xi32>, tensor<1x1x8xi32>, tensor<1x1x8xi32>, "
            "tensor<1x1x8x9xi32>, tensor<1x1x8xi32>, tensor<1x1xi32>, tensor<1x1xi32>, "
            "tensor<1x1x8x18xi32>" in types), types
    for d in (96, 256):  # the fused forward; fine masks too. The backward: head dim 256
        # the pure-JAX one, 96 the head dim 128 kernels on zero-padded operands (the FA2
        # backward at block 64, the Hopper one at 32)
        q = jnp.zeros((1, 256, 2, d), jnp.float16)
        for layout, mask_block in ((jbs.layouts.local(256, 64, 100), 64),
                                   (jbs.layouts.local(256, 32, 100), 32)):
            text = cuda_text(jax.grad(lambda q: jbs.attention(
                q, q, q, layout, causal=True).astype(jnp.float32).sum()), q)
            assert "@jax_blocksparse_attention_fwd(" in text and f"tensor<1x256x2x{d}xf16>" in text
            assert f"mask_block = {mask_block} : i32" in text
            bwd = [ln for ln in text.splitlines() if "@jax_blocksparse_attention_bwd(" in ln]
            assert len(bwd) == (d == 96) and all("tensor<1x256x2x128xf16>" in ln for ln in bwd)


@pytest.mark.parametrize("variant,switch", [(0, 0), (4, 0), (-1, 0), (4, 4), (-1, 2), (4, 8)])
def test_backward_workspaces_of_the_onepass_kernel(monkeypatch, attention_kernels, variant,
                                                   switch):
    """Under JAX_BLOCKSPARSE_ATTN_BWD_VARIANT=4 and unset (the default; faked here, on a
    faked sm_90a device) the backward's custom call gets the one-pass kernel's workspaces,
    dq_accum float32 [S, B, Hq, Tq, D] and dq_semaphores int32 [S B Hq Tq / 64 + 1] (S dQ
    slots, `_cuda.onepass_dq_slots`: JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_DQ_SLOTS=2 / 4 / 8 where
    set, else 4 for a sparse layout with a global query row and 2 for the others; then
    the persistent grid's item counter), after delta; otherwise (and at block size 64, and
    for partial tiles: calls variant 4 leaves to variant 2, which takes them fused) both
    are [0]. Lowered for "cuda" on any machine."""
    import re
    import sys
    from jax_blocksparse import _cuda, _partitioning
    from jax_blocksparse import _jax_internals as jint
    from jax_blocksparse.attention_metadata import line_stats
    att = sys.modules["jax_blocksparse.attention"]
    monkeypatch.setattr(_cuda, "SWITCHES", _cuda.SWITCHES._replace(
        attn_bwd_variant=variant, attn_bwd_onepass_dq_slots=switch))
    monkeypatch.setattr(_cuda, "_sm90a_device", lambda: True)
    onepass_variant = variant == 4 or variant == -1 and _cuda.SM90_BACKWARD_DEFAULT == 4
    for beyond in (False, True):  # (partial last tiles, tile bits)
        assert _cuda.onepass_backward(jnp.bfloat16, 128, 128, 0.0, beyond) == (
            onepass_variant and not beyond)
    for kw in ({"segments": True}, {"positioned": True}, {"mask_batch": 2},
               {"tq": 1000, "tk": 1100}):  # fused under 4 and 2 (variant 4 or 2 runs them)
        args = dict(dtype=jnp.bfloat16, head_dim=128, block_size=128, tq=1024, tk=1024,
                    segments=False, positioned=False, mask_batch=1)
        why = _cuda.fused_attention_unsupported(**dict(args, **kw))
        assert (why is None) == (variant != 0), (kw, why)  # the Hopper backward: fused
    if not jbs.cuda_built():
        jint.register_lowering_rule(_partitioning.LOCAL[att.attention_p],
                                    _cuda._attention_forward_lowering, "cuda")
        jint.register_lowering_rule(_partitioning.LOCAL[att.attention_bwd_p],
                                    _cuda._attention_backward_lowering, "cuda")
    # (FA2, variant 0: the pure path): a partial last tile; segment ids (variant 4 takes
    # them on whole tiles)
    extra = [(128, 64, 500, False), (128, 128, 512, True)] if onepass_variant else []
    # a sparse layout with a global query row: the last query block lists every key block
    # (causality keeps it), the diagonal (density 15/64); the others local(rows, bs, 200)
    # (t < rows: a partial last tile)
    glob = jbs.Layout(np.eye(8, dtype=bool) | (np.arange(8) == 7)[:, None], 128)
    cases = [(bs, d, t, docs, None) for bs, d, t, docs in
             [(128, 128, 512, False), (128, 64, 512, False), (64, 64, 512, False), *extra]]
    for bs, d, t, docs, layout in [*cases, (128, 128, 1024, False, glob)]:
        q = jnp.zeros((2, t, 4, d), jnp.bfloat16)
        k = jnp.zeros((2, t, 2, d), jnp.bfloat16)
        rows = -(-t // bs) * bs
        layout = jbs.layouts.local(rows, bs, 200) if layout is None else layout
        ids = jnp.arange(2 * t).reshape(2, t) // 300 if docs else None
        loss = lambda q, k: jbs.attention(q, k, k, layout, causal=True, q_segment_ids=ids,
                                          kv_segment_ids=ids).astype(jnp.float32).sum()
        text = cuda_text(jax.grad(loss), q, k)
        (call,) = [line for line in text.splitlines()
                   if "@jax_blocksparse_attention_bwd(" in line]
        results = re.sub(r"\s+", " ", call).split(" -> ")[-1]
        slots = _cuda.onepass_dq_slots(line_stats(layout, True, t, t))
        assert slots == (switch or (4 if layout is glob else 2)), (switch, slots)
        onepass = onepass_variant and bs == 128 and t % bs == 0
        want = (f"tensor<2x4x2x{rows}xf32>, tensor<{slots}x2x4x{t}x{d}xf32>, "
                f"tensor<{slots * 2 * 4 * (t // 64) + 1}xi32>"
                if onepass else f"tensor<2x4x2x{rows}xf32>, tensor<0xf32>, tensor<0xi32>")
        assert want in results, (bs, d, t, results)


def test_forward_head_sections_attribute(monkeypatch, attention_kernels):
    """The forward's custom call carries `head_sections`, `_cuda.forward_head_sections`
    of the call: true for static layouts without a global query row (local, causal), false
    for one with (a sparse layout whose last query block lists every key block), for a
    traced `BlockMask` and under `q_offset` (lines unknown when lowering). The backward's
    custom call has no such attribute. Lowered for "cuda" on any machine (a faked sm_90a
    device)."""
    import sys
    from jax_blocksparse import _cuda, _partitioning
    from jax_blocksparse import _jax_internals as jint
    att = sys.modules["jax_blocksparse.attention"]
    monkeypatch.setattr(_cuda, "_sm90a_device", lambda: True)
    if not jbs.cuda_built():
        jint.register_lowering_rule(_partitioning.LOCAL[att.attention_p],
                                    _cuda._attention_forward_lowering, "cuda")
        jint.register_lowering_rule(_partitioning.LOCAL[att.attention_bwd_p],
                                    _cuda._attention_backward_lowering, "cuda")
    t = 1024
    q = jnp.zeros((2, t, 4, 128), jnp.bfloat16)
    k = jnp.zeros((2, t, 2, 128), jnp.bfloat16)
    glob = jbs.Layout(np.eye(8, dtype=bool) | (np.arange(8) == 7)[:, None], 128)
    mask = jnp.asarray(jbs.layouts.local(t, 128, 256).mask)
    calls = {
        "local": (lambda q, k: jbs.attention(q, k, k, jbs.layouts.local(t, 128, 256),
                                             causal=True), True),
        "causal": (lambda q, k: jbs.attention(q, k, k, jbs.layouts.causal(t, 128),
                                              causal=True), True),
        "global row": (lambda q, k: jbs.attention(q, k, k, glob, causal=True), False),
        "BlockMask": (lambda q, k: jbs.attention(
            q, k, k, jbs.BlockMask.from_mask(mask, 128), causal=True), False),
        "q_offset": (lambda q, k: jbs.attention(q, k, k, jbs.layouts.local(t, 128, 256),
                                                causal=True, q_offset=0), False),
    }
    for name, (fn, want) in calls.items():
        loss = lambda q, k: fn(q, k).astype(jnp.float32).sum()
        text = cuda_text(jax.grad(loss), q, k)
        (fwd,) = [line for line in text.splitlines()
                  if "@jax_blocksparse_attention_fwd(" in line]
        assert f"head_sections = {str(want).lower()}" in fwd, (name, fwd)
        (bwd,) = [line for line in text.splitlines()
                  if "@jax_blocksparse_attention_bwd(" in line]
        assert "head_sections" not in bwd, (name, bwd)


@pytest.mark.parametrize("d256", [False, True])
def test_head_dim_256_backward_under_its_switch(monkeypatch, d256):
    """Head dim 256's Hopper backward rows (cuda/attention/bwd_sm90_d256.cu), which the
    extension reports only under JAX_BLOCKSPARSE_ATTN_BWD_D256=1 (faked here by the rows):
    with them, where the Hopper backward runs, a head-dim-256 backward lowers to the fused
    custom call on its own operands (no padding), with every mask source and on 128 x 128
    tiles (block sizes 16 to 64), also under variant 4 (no row of its own: the default
    variant's, as attention/dispatch.cu's FindAttentionKernel picks it, so without the one-pass
    workspaces); without them it says "head dim 256" (the pure-JAX backward). Lowered for
    "cuda" on any machine."""
    import re
    import sys
    from conftest import attention_kernel_rows
    from jax_blocksparse import _cuda, _partitioning
    from jax_blocksparse import _jax_internals as jint
    att = sys.modules["jax_blocksparse.attention"]
    monkeypatch.setattr(_cuda, "ATTENTION_KERNELS", attention_kernel_rows(d256=d256))
    monkeypatch.setattr(_cuda, "_sm90a_device", lambda: True)
    for variant in (-1, 4):
        monkeypatch.setattr(_cuda, "SWITCHES", _cuda.SWITCHES._replace(attn_bwd_variant=variant))
        assert not _cuda.onepass_backward(jnp.bfloat16, 256, 128)
        for kw in ({}, {"segments": True}, {"mask_batch": 2}, {"tq": 1000, "tk": 1100},
                   {"positioned": True}, {"block_size": 16}, {"block_size": 64, "segments": True}):
            args = dict(dtype=jnp.float16, head_dim=256, block_size=128, tq=1024, tk=1024,
                        segments=False, positioned=False, mask_batch=1)
            why = _cuda.fused_attention_unsupported(**dict(args, **kw))
            assert why == (None if d256 else "head dim 256"), (variant, kw, why)
    if not jbs.cuda_built():
        jint.register_lowering_rule(_partitioning.LOCAL[att.attention_p],
                                    _cuda._attention_forward_lowering, "cuda")
        jint.register_lowering_rule(_partitioning.LOCAL[att.attention_bwd_p],
                                    _cuda._attention_backward_lowering, "cuda")
    layout = jbs.layouts.local(512, 128, 256)
    # the default variant on a partial last tile; variant 4 on whole tiles, where its own
    # rows would take the call: no one-pass workspaces (empty dq_accum and semaphores)
    for variant, t in ((-1, 500), (4, 512)):
        monkeypatch.setattr(_cuda, "SWITCHES",
                            _cuda.SWITCHES._replace(attn_bwd_variant=variant))
        q = jnp.zeros((2, t, 4, 256), jnp.bfloat16)
        k = jnp.zeros((2, t, 2, 256), jnp.bfloat16)
        loss = lambda q, k: jbs.attention(q, k, k, layout, causal=True).astype(
            jnp.float32).sum()
        text = cuda_text(jax.grad(loss, argnums=(0, 1)), q, k)
        bwd = [ln for ln in text.splitlines() if "@jax_blocksparse_attention_bwd(" in ln]
        assert len(bwd) == d256, (variant, bwd)
        for ln in bwd:
            assert f"tensor<2x{t}x4x256xbf16>" in ln and f"tensor<2x{t}x2x256xbf16>" in ln, ln
            results = re.sub(r"\s+", " ", ln).split(" -> ")[-1]
            assert "tensor<0xf32>, tensor<0xi32>" in results, (variant, results)


def test_backward_at_head_dim_96_runs_zero_padded(monkeypatch, attention_kernels):
    """Head dim 96 has no backward kernels: where the head dim 128 ones run (the FA2 and
    the Hopper backward), its backward lowers to them on q, k, v, o, dO zero-padded to 128
    and slices dq, dk, dv back (`_cuda.BACKWARD_PADDED_HEAD_DIMS`), with the call's scale;
    the forward keeps head dim 96. The padded computation equals the plain one (the pure-JAX
    backward, float64, on the CPU). Lowered for "cuda" on any machine."""
    import sys
    from jax_blocksparse import _cuda, _partitioning
    from jax_blocksparse import _jax_internals as jint
    att = sys.modules["jax_blocksparse.attention"]
    if not jbs.cuda_built():
        jint.register_lowering_rule(_partitioning.LOCAL[att.attention_p],
                                    _cuda._attention_forward_lowering, "cuda")
        jint.register_lowering_rule(_partitioning.LOCAL[att.attention_bwd_p],
                                    _cuda._attention_backward_lowering, "cuda")
    layout = jbs.layouts.causal(512, 128)
    q = jnp.zeros((2, 512, 4, 96), jnp.bfloat16)
    k = jnp.zeros((2, 512, 2, 96), jnp.bfloat16)
    loss = lambda q, k: jbs.attention(q, k, k, layout, causal=True).astype(jnp.float32).sum()
    for hopper in (False, True):
        monkeypatch.setattr(_cuda, "sm90_forward", lambda: hopper)
        monkeypatch.setattr(_cuda, "sm90_backward", lambda: hopper)
        text = cuda_text(jax.grad(loss, argnums=(0, 1)), q, k)
        (call,) = [ln for ln in text.splitlines() if "@jax_blocksparse_attention_bwd(" in ln]
        assert "tensor<2x512x4x128xbf16>" in call and "tensor<2x512x2x128xbf16>" in call
        assert "x96x" not in call and "scale = 0.102062" in call, call  # 96 ** -0.5
        fwd = [ln for ln in text.splitlines() if "@jax_blocksparse_attention_fwd(" in ln]
        assert not fwd or "tensor<2x512x4x96xbf16>" in fwd[0]  # (FA2: no forward at 96)
    # the padding's identity, on the pure-JAX path in float64
    from test_matmul import float64_enabled
    with float64_enabled(), jax.default_device(jax.devices("cpu")[0]):
        rng = np.random.default_rng(96)
        arr = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float64)
        q, k, v, d_o = arr(1, 256, 2, 96), arr(1, 256, 1, 96), arr(1, 256, 1, 96), arr(1, 256, 2, 96)
        layout = jbs.layouts.local(256, 64, 128)
        f = lambda q, k, v: jbs.attention(q, k, v, layout, causal=True)
        o, vjp = jax.vjp(f, q, k, v)
        want = vjp(d_o)
        # the same call with the operands zero-padded to 128 columns and the scale of 96
        pad = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, 32)))
        g = lambda q, k, v: jbs.attention(q, k, v, layout, causal=True, scale=96 ** -0.5)
        _, vjp_padded = jax.vjp(g, pad(q), pad(k), pad(v))
        got = vjp_padded(pad(d_o))
        for a, b in zip(got, want):
            np.testing.assert_allclose(np.asarray(a[..., :96]), np.asarray(b), rtol=1e-10,
                                       atol=1e-12)
            assert not np.any(np.asarray(a[..., 96:]))
