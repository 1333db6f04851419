"""A quick value check of the decode kernel's GQA-packed form (issue 22) against float64
numpy, for a device call with little time: six calls (contiguous and paged caches, 20 to
512 rows per kv head, one and many splits), relative error each. On a GPU run it as

    JAX_BLOCKSPARSE_DEBUG=1 python3 benchmarks/dev_packed_check.py

(the debug lines name the form each call ran); tests/test_decode.py::test_gqa_packed_form
is the full check (gradients, more layouts)."""
import numpy as np
import jax
import jax.numpy as jnp
import jax_blocksparse as jbs


def reference(q, k, v, mask, bs, offset, lengths, scale):
    """float64 causal attention of queries at positions `offset[b] + i` over the keys
    before `lengths[b]` in the blocks `mask [R, R]` lists (k, v: `[B, Tk, Hkv, D]`)."""
    group, tk = q.shape[2] // k.shape[2], k.shape[1]
    pos = offset[:, None] + np.arange(q.shape[1])  # [B, Tq]
    j = np.arange(tk)
    allowed = (mask[pos // bs][..., j // bs] & (j <= pos[..., None])
               & (j < lengths[:, None, None]))  # [B, Tq, Tk]
    k, v = (np.repeat(x, group, axis=2) for x in (k, v))
    s = np.where(allowed[:, None], np.einsum("bthd,bjhd->bhtj", q, k) * scale, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("bhtj,bjhd->bthd", w / w.sum(-1, keepdims=True), v)


CASES = [  # dtype, head dim, Tq, Hq, Hkv, min blocks per split, page size (0: contiguous)
    (jnp.bfloat16, 128, 16, 16, 2, 1, 0),
    (jnp.bfloat16, 128, 4, 16, 2, 1000, 0),
    (jnp.float16, 64, 20, 2, 2, 1, 0),
    (jnp.bfloat16, 64, 64, 16, 2, 1, 0),
    (jnp.bfloat16, 128, 16, 16, 2, 1, 64),
    (jnp.float16, 128, 8, 16, 2, 1, 16),
]
rng = np.random.default_rng(5)
bad = 0
for seed, (dtype, d, tq, hq, hkv, min_blocks, page) in enumerate(CASES):
    jbs._cuda.DECODE["min_blocks_per_split"] = min_blocks
    bs, b = 128, 2
    tk = 768 if page else 704
    r = -(-tk // bs)
    m = np.tril(rng.random((r, r)) < 0.7)
    m[:, 0] = True
    np.fill_diagonal(m, True)
    layout = jbs.Layout(m, bs)
    qd, kd, vd = (jnp.asarray(rng.standard_normal(shape), dtype)
                  for shape in ((b, tq, hq, d), (b, tk, hkv, d), (b, tk, hkv, d)))
    lengths = np.array([tk, 300 + seed * 7])
    offset = lengths - tq
    extra, kk, vv = {}, kd, vd
    if page:  # pools of shuffled pages
        n = b * tk // page
        perm = rng.permutation(n)
        kk, vv = (jnp.zeros((n, page, hkv, d), dtype).at[perm].set(x.reshape(n, page, hkv, d))
                  for x in (kd, vd))
        extra["page_table"] = jnp.asarray(perm.reshape(b, tk // page), jnp.int32)
    o = jax.jit(lambda q, k, v: jbs.attention(q, k, v, layout, causal=True,
                                              q_offset=jnp.asarray(offset, jnp.int32),
                                              kv_lengths=jnp.asarray(lengths, jnp.int32),
                                              **extra))(qd, kk, vv)
    want = reference(*(np.asarray(x, np.float64) for x in (qd, kd, vd)), m, bs, offset,
                     lengths, d ** -0.5)
    o = np.asarray(o, np.float64)
    err = np.linalg.norm(o - want) / np.linalg.norm(want)
    ok = err < 1e-2
    bad += not ok
    print(f"{jnp.dtype(dtype).name} d{d} tq{tq} hq{hq} hkv{hkv} splits-min{min_blocks} "
          f"page{page}: rel err {err:.2e} max abs {np.abs(o - want).max():.2e} "
          f"{'OK' if ok else 'BAD'}", flush=True)
raise SystemExit(1 if bad else 0)
