"""A quick value check of the decode kernel's GQA-packed form (issue 22) against float64
numpy, for a device call with little time: six calls (contiguous and paged caches, 20 to
512 rows per kv head, one and many splits), relative error each. On a GPU run it as

    JAX_BLOCKSPARSE_DECODE_PACKED=1 JAX_BLOCKSPARSE_DEBUG=1 python3 benchmarks/dev_packed_check.py

(the debug lines name the form each call ran); tests/test_decode.py::test_gqa_packed_form
is the full check (gradients, more layouts)."""
import numpy as np
import jax
import jax.numpy as jnp
import jax_blocksparse as jbs

def ref(q, k, v, mask, bs, offset, lengths, scale):
    b, tq, hq, d = q.shape
    hkv = k.shape[2]; g = hq // hkv
    out = np.zeros((b, tq, hq, d))
    for bb in range(b):
        for i in range(tq):
            p = offset[bb] + i
            j = np.arange(k.shape[1])
            ok = mask[p // bs, j // bs] & (j <= p) & (j < lengths[bb])
            for h in range(hq):
                s = (k[bb, :, h // g] @ q[bb, i, h]) * scale
                s = np.where(ok, s, -np.inf)
                w = np.exp(s - s.max()); w /= w.sum()
                out[bb, i, h] = w @ v[bb, :, h // g]
    return out

rng = np.random.default_rng(5)
bad = 0
for (dtype, d, tq, hq, hkv, seed, min_blocks, page) in [(jnp.bfloat16, 128, 16, 16, 2, 0, 1, 0),
                                                  (jnp.bfloat16, 128, 4, 16, 2, 1, 1000, 0),
                                                  (jnp.float16, 64, 20, 2, 2, 2, 1, 0),
                                                  (jnp.bfloat16, 64, 64, 16, 2, 3, 1, 0),
                                                  (jnp.bfloat16, 128, 16, 16, 2, 4, 1, 64),
                                                  (jnp.float16, 128, 8, 16, 2, 5, 1, 16)]:
    jbs._cuda.DECODE["min_blocks_per_split"] = min_blocks
    bs, b = 128, 2
    tk = 768 if page else 704
    r = -(-tk // bs)
    m = np.tril(rng.random((r, r)) < 0.7); m[:, 0] = True; np.fill_diagonal(m, True)
    layout = jbs.Layout(m, bs)
    q = rng.standard_normal((b, tq, hq, d)); k = rng.standard_normal((b, tk, hkv, d))
    v = rng.standard_normal((b, tk, hkv, d))
    qd, kd, vd = (jnp.asarray(x, dtype) for x in (q, k, v))
    lengths = np.array([tk, 300 + seed * 7])
    offset = lengths - tq
    extra, kk, vv = {}, kd, vd
    if page:  # pools of shuffled pages
        n = b * tk // page
        perm = rng.permutation(n)
        table = perm.reshape(b, tk // page)
        kk, vv = (jnp.zeros((n, page, hkv, d), dtype).at[perm].set(x.reshape(n, page, hkv, d))
                  for x in (kd, vd))
        extra["page_table"] = jnp.asarray(table, jnp.int32)
    o = jax.jit(lambda q, k, v: jbs.attention(q, k, v, layout, causal=True,
                                              q_offset=jnp.asarray(offset, jnp.int32),
                                              kv_lengths=jnp.asarray(lengths, jnp.int32),
                                              **extra))(qd, kk, vv)
    want = ref(*(np.asarray(x, np.float64) for x in (qd, kd, vd)), m, bs, offset, lengths, d ** -0.5)
    o = np.asarray(o, np.float64)
    err = np.linalg.norm(o - want) / np.linalg.norm(want)
    print(f"{jnp.dtype(dtype).name} d{d} tq{tq} hq{hq} hkv{hkv} splits-min{min_blocks} page{page}: rel err {err:.2e} "
          f"max abs {np.abs(o - want).max():.2e} {'OK' if err < 1e-2 else 'BAD'}", flush=True)
    bad += not err < 1e-2
raise SystemExit(1 if bad else 0)
