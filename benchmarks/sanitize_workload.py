"""A small workload that launches every CUDA kernel variant of jax_blocksparse at least
once, for compute-sanitizer (benchmarks/device.sh, stage `sanitize`).

    python sanitize_workload.py matmul     # sdd/dsd/dds: every dtype, block size, transposition
    python sanitize_workload.py attention  # fused forward and backward
    python sanitize_workload.py decode     # the decode kernel: head dims, GQA, paged, splits
    python sanitize_workload.py attention --slice 1/3   # every third case from the second

`--slice I/N` runs the cases whose index is I modulo N: a long part in several processes
(under the sanitizer, long runs have ended in a host segfault in XLA's code at random
points, never without it).

Which kernel runs is also chosen by the environment (read once per process), so device.sh
runs the script several times: as it is (wgmma at bs 64/128 on an H100, mma.sync elsewhere,
simple kernels for float32 precision=HIGHEST), with JAX_BLOCKSPARSE_NO_WGMMA=1 (mma.sync at
64/128), JAX_BLOCKSPARSE_SIMPLE_KERNELS=1 (the simple kernels everywhere) and
JAX_BLOCKSPARSE_ATTN_FWD_VARIANT=1 (the 128-row attention forward at block size 128) and
=0 (the FA2 forward where the default on an sm_90 device is the FA3-design one), and
JAX_BLOCKSPARSE_ATTN_FWD_PERSISTENT=1 (the persistent FA3-design forward) and
JAX_BLOCKSPARSE_ATTN_FWD_PERSISTENT_CTAS=3 (the same on 3 CTAs: many work items per CTA).
Sizes are small: each sanitizer tool should finish in a couple of minutes. Values are not
checked here (the tests do that); every result is waited for, so a kernel fault surfaces.
"""

import argparse
import itertools

import jax
import jax.numpy as jnp
import numpy as np

import jax_blocksparse as jbs

DTYPES = {"f32": jnp.float32, "f16": jnp.float16, "bf16": jnp.bfloat16}
RNG = np.random.default_rng(0)


def array(shape, dtype):
    """Random host data converted on the host (no XLA kernel to sanitize for it)."""
    return jnp.asarray(RNG.standard_normal(shape).astype(np.float32).astype(dtype))


def mask(rows, cols, density=0.5, empty_line=True):
    """A random block mask with at least one block; one empty column and row when asked
    (empty output lines: zero-length K loops)."""
    m = RNG.random((rows, cols)) < density
    if empty_line and rows > 1 and cols > 1:
        m[:, -1] = False
        m[-1, :] = False
    m[0, 0] = True
    return m


def run(fn, *args):
    jax.block_until_ready(fn(*args))


SLICE = [0, 1, 0]  # --slice I/N: run cases I, I + N, ...; [2]: cases seen so far


def taken() -> bool:
    """Whether this case is in the slice (each case function asks once)."""
    index, SLICE[2] = SLICE[2], SLICE[2] + 1
    return index % SLICE[1] == SLICE[0]


def matmul_cases(dtype_name, bs, ta, tb, *, m=96, unaligned=False, batch=None,
                 precision=None):
    """sdd, dsd and dds once each at (dtype, block size, transposes)."""
    if not taken():
        return
    dt = DTYPES[dtype_name]
    lay = jbs.Layout(mask(3, 2), bs)  # W / S over [3 bs, 2 bs]
    p, q = lay.shape
    dense = m + 3 if unaligned else m  # an odd dense size: unaligned rows, masked tails
    lead = () if batch is None else (batch,)
    nnz_shape = lead + (lay.nnz, bs, bs)
    # sdd: op(a) [P, K] @ op(b) [K, Q] at the layout's blocks
    a = array(lead + ((dense, p) if ta else (p, dense)), dt)
    b = array(lead + ((q, dense) if tb else (dense, q)), dt)
    run(lambda a, b: jbs.sdd(a, b, lay, trans_a=ta, trans_b=tb, precision=precision), a, b)
    # dsd: op(S) @ op(b), op(S) [P, Q] (or [Q, P])
    s = array(nnz_shape, dt)
    k = p if ta else q
    b = array(lead + ((dense, k) if tb else (k, dense)), dt)
    run(lambda s, b: jbs.dsd(s, b, lay, trans_s=ta, trans_b=tb, precision=precision), s, b)
    # dds: op(a) [M, K] @ op(W), op(W) [P, Q] (or [Q, P])
    k = q if tb else p
    a = array(lead + ((k, dense) if ta else (dense, k)), dt)
    w = array(nnz_shape, dt)
    run(lambda a, w: jbs.dds(a, w, lay, trans_a=ta, trans_w=tb, precision=precision), a, w)


def matmul_workload():
    transposes = list(itertools.product((False, True), repeat=2))
    for dtype_name, bs, (ta, tb) in itertools.product(DTYPES, (16, 32, 64, 128), transposes):
        matmul_cases(dtype_name, bs, ta, tb)  # aligned: wgmma at bs 64/128 (bf16/f16, sm_90a)
        matmul_cases(dtype_name, bs, ta, tb, unaligned=True)  # mma.sync, element copies
    for bs in (16, 32, 64, 128):  # exact float32: the simple kernels
        matmul_cases("f32", bs, False, True, precision=jax.lax.Precision.HIGHEST)
        matmul_cases("f32", bs, True, False, precision=jax.lax.Precision.HIGHEST,
                     unaligned=True)
    for bs, m in itertools.product((64, 128), (1000, 160)):  # sdd in clusters over K under
        matmul_cases("bf16", bs, True, False, m=m)  # JAX_BLOCKSPARSE_MATMUL_SDD_SPLIT=1 (160:
        # 3 steps of K, clusters of 4 whose first CTA has none)
    for dtype_name, bs in itertools.product(("bf16", "f16"), (16, 64, 128)):  # a batch axis
        matmul_cases(dtype_name, bs, False, False, batch=2)
        matmul_cases(dtype_name, bs, True, True, batch=2, unaligned=True)
    # many lines and a row-tile pair: the persistent kernels loop over several items each
    # (wgmma_tma.cuh: 300 items, at most 66 clusters)
    if taken():
        many = jbs.layouts.random(4 * 64, 150 * 64, 64, 0.2, seed=2)
        a = array((520, many.shape[0]), jnp.bfloat16)
        run(lambda a, w: jbs.dds(a, w, many), a, array((many.nnz, 64, 64), jnp.bfloat16))
    # sdd over rows of many blocks: passes that cross row ends, many items per CTA
    # (wgmma_sdd_tma.cuh under JAX_BLOCKSPARSE_MATMUL_SDD_TMA=1)
    for bs, rows, cols in ((64, 4, 150), (128, 3, 60)):
        if taken():
            many = jbs.layouts.random(rows * bs, cols * bs, bs, 0.2, seed=bs)
            a = array((520, many.shape[0]), jnp.bfloat16)
            b = array((520, many.shape[1]), jnp.bfloat16)
            run(lambda a, b: jbs.sdd(a, b, many, trans_a=True), a, b)
    # the public layer op and its gradient (dds forward, sdd + dds^T backward)
    lay = jbs.layouts.random(256, 384, 64, 0.3, seed=1)
    x = array((2, 40, 256), jnp.bfloat16)
    w = array((lay.nnz, 64, 64), jnp.bfloat16)
    loss = lambda x, w: jnp.sum(jbs.matmul(x, w, lay).astype(jnp.float32))
    run(jax.grad(loss, argnums=(0, 1)), x, w)


HEAD_DIMS = (64, 128)  # of the fused attention kernels (forward and backward)
FORWARD_HEAD_DIMS = (96, 256)  # of the FA3-design forward only
BLOCK_SIZES = (64, 128)
FINE_BLOCK_SIZES = (16, 32)  # the FA3-design forward on 128-key tiles with mask bits


def fused_backward(grad, *args) -> bool:
    """Whether the gradient function `grad` runs a fused attention backward here (its
    program calls the backward's custom call), as the routing decides for these operands
    (head dim, block size, mask sources, switches such as JAX_BLOCKSPARSE_ATTN_BWD_D256)."""
    return "@jax_blocksparse_attention_bwd(" in jax.jit(grad).lower(*args).as_text()


def attention_cases(dtype, d, bs, causal, *, hq=4, hkv=2, tq=256, tk=256, per_head=False,
                    kv_lengths=None, documents=False, per_batch=False, q_offset=None,
                    sinks=False, softcap=None):
    """Forward and backward once at (dtype, head dim, block size, causal, ...): `documents`
    packed segment ids, `per_batch` a `BlockMask` per batch entry, `q_offset` the queries'
    positions `[B]` (the mask's rows then cover the keys), Tq / Tk any lengths; `sinks`
    random attention sinks, `softcap` a logit soft cap (the default forward, the FA2
    backward)."""
    if not taken():
        return
    b = 2
    rq, rk = -(-(tk if q_offset is not None else tq) // bs), -(-tk // bs)
    m = RNG.random((b if per_batch else 1, hq if per_head else 1, rq, rk)) < 0.6
    m[..., 0] = True
    if rq > 1 and q_offset is None:
        m[..., -1, :] = False  # an empty query block row: the forward's key loop runs 0 times
    mask = jbs.BlockMask.from_mask(jnp.asarray(m), bs) if per_batch else jbs.Layout(m[0], bs)
    q = array((b, tq, hq, d), dtype)
    k = array((b, tk, hkv, d), dtype)
    v = array((b, tk, hkv, d), dtype)
    lens = None if kv_lengths is None else jnp.asarray(kv_lengths, jnp.int32)
    q_ids = kv_ids = offset = None
    if q_offset is not None:
        offset = jnp.asarray(q_offset, jnp.int32)
    if documents:  # documents of 20-150 tokens
        lengths = RNG.integers(20, 151, size=(b, tk))
        kv_ids = np.stack([np.repeat(np.arange(tk), row)[:tk] for row in lengths])
        q_ids = (kv_ids[:, tk - tq:] if q_offset is None else
                 np.stack([kv_ids[i, o:o + tq] for i, o in enumerate(q_offset)]))
        q_ids, kv_ids = jnp.asarray(q_ids, jnp.int32), jnp.asarray(kv_ids, jnp.int32)

    sink_logits = array((hq,), jnp.float32) if sinks else None

    def attend(q, k, v):
        return jbs.attention(q, k, v, mask, causal=causal, kv_lengths=lens,
                             q_segment_ids=q_ids, kv_segment_ids=kv_ids, q_offset=offset,
                             sinks=sink_logits, logits_soft_cap=softcap)

    def loss(q, k, v):
        return jnp.sum(attend(q, k, v).astype(jnp.float32))

    run(attend, q, k, v)
    # the gradient where a fused backward takes it (the routing's own answer): under the
    # sanitizer, the pure-JAX backward ended the process in a host segfault at the same
    # place on every try (2026-12-03, all three tools); it runs none of our kernels.
    grad = jax.grad(loss, argnums=(0, 1, 2))
    if fused_backward(grad, q, k, v):
        run(grad, q, k, v)


def attention_workload():
    for dtype, d, bs, causal in itertools.product((jnp.bfloat16, jnp.float16),
                                                  HEAD_DIMS + FORWARD_HEAD_DIMS, BLOCK_SIZES,
                                                  (False, True)):
        attention_cases(dtype, d, bs, causal)
    for dtype, d, bs in itertools.product((jnp.bfloat16, jnp.float16), HEAD_DIMS + (256,),
                                          FINE_BLOCK_SIZES):
        attention_cases(dtype, d, bs, True, tq=250, tk=250, documents=True,
                        kv_lengths=[200, 250])
        attention_cases(dtype, d, bs, False, tq=200, tk=300, per_batch=True, per_head=True)
    # a soft cap on the FA3-design forward with documents and partial tiles (issue 21)
    attention_cases(jnp.bfloat16, 96, 32, True, tq=250, tk=250, documents=True,
                    kv_lengths=[200, 250], softcap=5.0)
    for dtype, d, bs in itertools.product((jnp.bfloat16, jnp.float16), FORWARD_HEAD_DIMS,
                                          BLOCK_SIZES):
        attention_cases(dtype, d, bs, True, tq=250, tk=250, documents=True, per_head=True,
                        kv_lengths=[200, 250])
    for dtype, d, bs in itertools.product((jnp.bfloat16, jnp.float16), HEAD_DIMS, BLOCK_SIZES):
        # per-head masks, multi-query, Tq < Tk (bottom-right causal), kv_lengths cutting a
        # block, and an empty batch entry (kv_lengths 0)
        attention_cases(dtype, d, bs, True, hq=4, hkv=1, tq=128, tk=384, per_head=True,
                        kv_lengths=[300, 0])
        attention_cases(dtype, d, bs, False, hq=2, hkv=2, kv_lengths=[bs + 5, 256])
        # packed documents with partial last tiles; a mask per batch entry; q_offset with
        # documents (the FA3-design kernels' mask sources)
        attention_cases(dtype, d, bs, True, tq=250, tk=250, documents=True,
                        kv_lengths=[200, 250])
        attention_cases(dtype, d, bs, True, tq=200, tk=300, per_batch=True, per_head=True)
        attention_cases(dtype, d, bs, True, tq=100, tk=256, documents=True, q_offset=[10, 140],
                        kv_lengths=[150, 256])
        # attention sinks and a logit soft cap (the backward: the FA2 kernels, on Hopper too)
        attention_cases(dtype, d, bs, True, hq=4, hkv=2, kv_lengths=[bs + 5, 256], sinks=True,
                        softcap=5.0)
        attention_cases(dtype, d, bs, False, softcap=30.0)


def decode_cases(dtype, d, bs, tq, *, hq=4, hkv=2, per_head=False, paged=False, tk=None,
                 lengths=None, sinks=False, softcap=None, kv_dtype=None):
    """The decode kernel once at (dtype, head dim, block size, Tq, ...): queries at
    per-batch positions ending at each length (the last chunk across a block row);
    `kv_dtype` an fp8 type: that cache, with per-head k scales and a scalar v scale."""
    if not taken():
        return
    tk = tk or 5 * bs
    r = -(-tk // bs)
    m = RNG.random((hq if per_head else 1, r, r)) < 0.6
    m[:, :, 0] = True
    lay = jbs.Layout(m, bs)
    b = 2
    lengths = jnp.asarray(lengths or [tk, 2 * bs + tq // 2 + 1], jnp.int32)
    q = array((b, tq, hq, d), dtype)
    k = array((b, tk, hkv, d), kv_dtype or dtype)
    v = array((b, tk, hkv, d), kv_dtype or dtype)
    extra = {}
    if kv_dtype is not None:
        extra.update(k_scale=jnp.abs(array((hkv,), jnp.float32)) + 0.5, v_scale=0.75)
    if paged:  # 16-key pages, reversed: pages out of order
        pages = tk // 16
        k, v = (x.reshape(b * pages, 16, hkv, d)[::-1] for x in (k, v))
        extra["page_table"] = jnp.asarray(
            (b * pages - 1 - np.arange(b * pages)).reshape(b, pages), jnp.int32)
    if sinks:
        extra["sinks"] = array((hq,), jnp.float32)
    run(lambda q, k, v: jbs.attention(q, k, v, lay, causal=True, q_offset=lengths - tq,
                                      kv_lengths=lengths, logits_soft_cap=softcap, **extra),
        q, k, v)


def decode_workload():
    from jax_blocksparse import _cuda
    _cuda.DECODE["min_blocks_per_split"] = 1  # several splits per row: the combine runs
    for dtype, d in itertools.product((jnp.bfloat16, jnp.float16), (64, 96, 128, 256)):
        decode_cases(dtype, d, 64, 1, hq=8, hkv=1)  # a GQA group of 8 in one CTA
        decode_cases(dtype, d, 16, 3, per_head=True, paged=True)  # rows across a block row
        decode_cases(dtype, d, 64, 2, paged=True, sinks=True, softcap=5.0)  # issue 21
    decode_cases(jnp.bfloat16, 128, 32, 16, hq=8, hkv=2)  # Tq 16: 4 x 16 rows, 4 chunks
    for kv_dtype, dtype, d in itertools.product((jnp.float8_e4m3fn, jnp.float8_e5m2),
                                                (jnp.bfloat16, jnp.float16), (64, 96, 128, 256)):
        decode_cases(dtype, d, 64, 1, hq=8, hkv=1, kv_dtype=kv_dtype)
        decode_cases(dtype, d, 16, 3, per_head=True, paged=True, kv_dtype=kv_dtype)
    decode_cases(jnp.bfloat16, 128, 32, 16, hq=8, hkv=2, kv_dtype=jnp.float8_e4m3fn)
    decode_cases(jnp.bfloat16, 64, 16, 1, tk=1100 * 16, lengths=[1100 * 16, 9000])  # 2 splits
    # the GQA-packed form (the default on sm_90a; with JAX_BLOCKSPARSE_DECODE_PACKED=0 or
    # elsewhere the forms above or, at 16 queries, the forward): 128 rows (group 8 x 16
    # queries), 64 rows in a block of 256 (two key tiles an entry) with a soft cap and
    # sinks, 24 rows (3 queries), a paged cache of 16-key pages in reverse order
    for dtype, d in itertools.product((jnp.bfloat16, jnp.float16), (64, 128)):
        decode_cases(dtype, d, 128, 16, hq=16, hkv=2)
        decode_cases(dtype, d, 256, 8, hq=8, hkv=1, sinks=True, softcap=5.0)
        decode_cases(dtype, d, 128, 3, hq=16, hkv=2)
        decode_cases(dtype, d, 128, 16, hq=16, hkv=2, paged=True)  # 8 pages a key tile
    padded_page_tables()


def padded_page_tables():
    """Page tables as serving engines pad them (the hardening issue's case: bf16, D 128,
    page 64): -1 and `P + 1000` past each sequence (never read), and one needed entry out
    of range (that batch entry's rows NaN): no read outside the pools, decode and prefill."""
    b, tk, page, hkv, d = 2, 1024, 64, 2, 128
    pages = tk // page
    pool_k, pool_v = (array((b * pages, page, hkv, d), jnp.bfloat16) for _ in range(2))
    table = np.arange(b * pages, dtype=np.int32).reshape(b, pages)
    lengths = jnp.asarray([300, 700], jnp.int32)
    lay = jbs.layouts.local(tk, 64, 512)
    for tq in (1, 40):
        q = array((b, tq, 2 * hkv, d), jnp.bfloat16)
        for bad in ((0, 5, -1), (1, 12, b * pages + 1000), (1, 2, -5)):  # the last needed
            t = table.copy()
            t[bad[0], bad[1]:] = bad[2]
            run(lambda q, k, v: jbs.attention(q, k, v, lay, causal=True, q_offset=lengths - tq,
                                              kv_lengths=lengths, page_table=jnp.asarray(t)),
                q, pool_k, pool_v)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parts = {"matmul": matmul_workload, "attention": attention_workload,
             "decode": decode_workload}
    parser.add_argument("parts", nargs="*", default=list(parts), help=" ".join(parts))
    parser.add_argument("--slice", default="0/1", help="I/N: the cases I, I + N, ...")
    args = parser.parse_args()
    SLICE[0], SLICE[1] = (int(x) for x in args.slice.split("/"))
    unknown = set(args.parts) - set(parts)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {list(parts)}")
    print(f"jax {jax.__version__}, devices {jax.devices()}, CUDA kernels "
          f"{'on' if jbs.cuda_available() else 'OFF'}", flush=True)
    for part in args.parts:
        parts[part]()
        print(f"{part}: done", flush=True)


if __name__ == "__main__":
    main()
