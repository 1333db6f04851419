"""Decode attention bandwidth: one query token per sequence against a KV cache.

Decoding reads the visible part of the KV cache once per token and does little arithmetic
on it, so its speed is a memory bandwidth. Each row prints the median time of a call
(`jax_blocksparse/bench/timing.py`), the bytes of K and V the call must read, their rate
(TB/s) and that rate as a share of the device-to-device copy rate of a buffer the size of
the dense K+V cache (the issue's target: ours at 80% of the copy or more). Rows: the copy
(read + write counted); ours (`jbs.attention(q, k, v, layout, causal=True,
q_offset=lengths - 1, kv_lengths=lengths)`) on the dense causal layout with a contiguous
cache and with a paged one (shuffled pages), and on a local (sliding window) layout, which
reads only the key blocks its last mask row lists; `jax.nn.dot_product_attention` (cuDNN,
XLA) on the dense cache; and ours on an fp8 KV cache (float8_e4m3fn, a scale per kv head
from the max abs: `k_scale=`, `v_scale=`; 1 byte per element read), contiguous and paged,
with its speedup over the bf16 cache (the issue's target: >= 1.8x the tokens/s at
T=32768). `tok/s`: query tokens per second (B per call). Before timing, each attention row
is checked against a float32 reference of batch entry 0, two heads, on the (dequantized)
cache it reads (`rel err`; bf16: expect < 2e-2).

    bash benchmarks/device.sh decode        # on the GPU machine: bf16 B=8 Hq=64 Hkv=8 D=128
                                            # T=32768, block 128, page 64, window 4096
    python benchmarks/decode.py --quick     # tiny sizes, seconds (automatic without a GPU)
    DECODE_ARGS=--sweep bash benchmarks/device.sh decode   # also issue 22's sweeps (`sweep`)
"""

import argparse
import shlex
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jax_blocksparse as jbs
from jax_blocksparse import _cuda
from jax_blocksparse.bench.timing import chain, chained_ms, median_ms

FULL = dict(batch=8, q_heads=64, kv_heads=8, head_dim=128, seq_len=32768, block_size=128,
            window=4096, page_size=64, reps=10)
QUICK = dict(batch=2, q_heads=4, kv_heads=2, head_dim=64, seq_len=1024, block_size=64,
             window=256, page_size=64, reps=2)
HEADER = (f"{'':34} {'ms':>9} {'GB read':>8} {'TB/s':>6} {'% of copy':>9} {'rel err':>8} "
          f"{'tok/s':>9}")


def loop_ms(call, sync, reps, runs=5):
    """`median_ms`'s protocol (warm-up, then the median over `runs` of the mean time of
    `reps` back-to-back calls) for a call that is not a jitted JAX function."""
    call()
    sync()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(reps):
            call()
        sync()
        times.append((time.perf_counter() - start) / reps * 1e3)
    return float(np.median(times))


def copy_ms(nbytes, reps):
    """(method, ms) of a device-to-device copy of `nbytes`. torch's `dst.copy_(src)` (a
    cudaMemcpyAsync, the usual reference) when torch sees a GPU; else a jitted
    `dynamic_update_slice` of the whole buffer into a donated one, which XLA must carry out
    as a copy into the donated buffer (a jitted `x.copy()` may be forwarded as x itself)."""
    try:
        import torch
        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if cuda:  # after JAX took its share of the GPU memory: torch uses what is left
        src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        ms = loop_ms(lambda: dst.copy_(src), torch.cuda.synchronize, reps)
        del src, dst
        torch.cuda.empty_cache()
        return "torch copy_", ms
    f = jax.jit(lambda dst, src: jax.lax.dynamic_update_slice(dst, src, (0,)),
                donate_argnums=0)
    src = jnp.ones((nbytes,), jnp.uint8)
    state = [jnp.zeros_like(src)]

    def call():
        state[0] = f(state[0], src)
    return "XLA dynamic_update_slice", loop_ms(call, lambda: state[0].block_until_ready(), reps)


def keys_read(layout, lengths):
    """Keys that decoding the token at position `n - 1` of each sequence (n in `lengths`)
    must read: those of the key blocks listed in that position's mask row, before n."""
    mask = layout.mask.reshape(-1, *layout.mask.shape[-2:]).any(0)
    bs = layout.block_size
    return sum(int(np.clip(n - np.flatnonzero(mask[(n - 1) // bs]) * bs, 0, bs).sum())
               for n in lengths)


def rel_err(out, q, k_seq, v_seq, allowed):
    """Relative error of `out[0, 0, h]` for two heads h against float32 attention of query
    `q[0, 0, h]` over the keys `k_seq, v_seq [T, Hkv, D]` of batch entry 0 where `allowed`."""
    heads = np.array([0, q.shape[2] - 1])
    kv = heads // (q.shape[2] // k_seq.shape[1])
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    s = jnp.einsum("hd,thd->ht", f32(q[0, 0, heads]), f32(k_seq[:, kv]), precision="highest")
    p = jax.nn.softmax(jnp.where(allowed, s / np.sqrt(q.shape[-1]), -jnp.inf), axis=-1)
    ref = jnp.einsum("ht,thd->hd", p, f32(v_seq[:, kv]), precision="highest")
    return float(jnp.linalg.norm(f32(out[0, 0, heads]) - ref) / jnp.linalg.norm(ref))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (default without a GPU)")
    parser.add_argument("--reps", type=int, help="back-to-back calls per timing")
    parser.add_argument("--block-size", type=int)
    parser.add_argument("--sweep", action="store_true",
                        help="also Tq 1/4/16/64 on the decode and the forward kernels, GQA "
                             "group sizes 1/4/8/16 and cache lengths 4k-128k (issue 22)")
    parser.add_argument("--only", metavar="TEXT",
                        help="only our rows whose name holds TEXT, no peers (one kernel for "
                             "a profiler: --only 'fp8 e4m3 cache')")
    parser.add_argument("--target-ctas", metavar="N,N,...",
                        type=lambda text: [int(x) for x in text.split(",")],
                        help="then the dense bf16 and fp8 rows again with the split count "
                             "aimed at each N CTAs (_cuda.DECODE['target_ctas'])")
    parser.add_argument("--chained", action="store_true",
                        help="time the reps of each of our and cuDNN's rows inside one jitted "
                             "program (bench.timing.chained_ms: no host dispatch between "
                             "calls; for the short rows)")
    args = parser.parse_args()
    timer = chained_ms if args.chained else median_ms
    gpu = jax.default_backend() == "gpu"
    cfg = dict(QUICK if args.quick or not gpu else FULL)
    cfg.update({k: v for k, v in (("reps", args.reps), ("block_size", args.block_size)) if v})
    b, hq, hkv, d, t = (cfg[k] for k in ("batch", "q_heads", "kv_heads", "head_dim", "seq_len"))
    bs, ps, reps = cfg["block_size"], cfg["page_size"], cfg["reps"]
    dtype = jnp.bfloat16
    print(f"decode: jax {jax.__version__} on {jax.devices()[0].device_kind}; CUDA kernels: "
          f"{jbs.cuda_available()}")
    print("command:", shlex.join([sys.executable] + sys.argv))

    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(kq, (b, 1, hq, d), dtype)
    k = jax.random.normal(kk, (b, t, hkv, d), dtype)
    v = jax.random.normal(kv, (b, t, hkv, d), dtype)
    lengths = np.full(b, t, np.int32)
    token_bytes = 2 * hkv * d * jnp.dtype(dtype).itemsize  # one key and one value
    dense_bytes = b * t * token_bytes
    # The paged cache: pools of the same pages in shuffled order, page_table [B, T / ps].
    perm = np.random.default_rng(0).permutation(b * t // ps)
    page_table = jnp.asarray(perm.reshape(b, t // ps), jnp.int32)
    k_pool, v_pool = (x.reshape(-1, ps, hkv, d)[np.argsort(perm)] for x in (k, v))
    print(f"bf16 B={b} Hq={hq} Hkv={hkv} D={d}, one query token, cache T={t} (lengths {t}), "
          f"block {bs}, page {ps}, window {cfg['window']}; K+V {dense_bytes / 1e9:.3f} GB; "
          f"reps {reps}")
    print(HEADER)
    print("-" * len(HEADER))

    method, ms = copy_ms(dense_bytes, reps)
    copy_tbs = 2 * dense_bytes / ms / 1e9

    def show(name, ms, nbytes, err=None, note="", tokens=None):
        tbs = nbytes / ms / 1e9
        err = "" if err is None else f"{err:8.1e}"
        rate = "" if tokens is None else f"{tokens / ms * 1e3:9.0f}"
        print(f"{name:34} {ms:9.4f} {nbytes / 1e9:8.4f} {tbs:6.3f} {100 * tbs / copy_tbs:9.1f} "
              f"{err:>8} {rate:>9} {note}", flush=True)

    show("d2d copy, read+write", ms, 2 * dense_bytes, note=method)

    j = np.arange(t)
    n0 = int(lengths[0])

    def ours(name, layout, k, v, k_seq, v_seq, per_token=token_bytes, base_ms=None, **kw):
        if args.only and args.only not in name:
            return None
        f = jax.jit(lambda q, k, v, n, kw: jbs.attention(
            q, k, v, layout, causal=True, q_offset=n - 1, kv_lengths=n, **kw))
        n = jnp.asarray(lengths)
        allowed = (j < n0) & layout.mask[(n0 - 1) // bs, j // bs]
        err = rel_err(f(q, k, v, n, kw), q, k_seq, v_seq, allowed)
        nbytes = keys_read(layout, lengths) * per_token
        dense = b * t * per_token
        note = "" if nbytes == dense else f"{nbytes / dense:.1%} of the dense bytes"
        ms = timer(f, q, k, v, n, kw, reps=reps)
        if base_ms:
            note = f"{base_ms / ms:.2f}x the tokens/s of the bf16 cache {note}".rstrip()
        show(name, ms, nbytes, err, note, tokens=b)
        return ms

    causal = jbs.layouts.causal(t, bs)
    seq = lambda pool: pool[page_table[0]].reshape(t, hkv, d)
    bf16_ms = ours("ours, dense causal", causal, k, v, k[0], v[0])
    bf16_paged_ms = ours(f"ours, dense causal, paged ({ps})", causal, k_pool, v_pool,
                         seq(k_pool), seq(v_pool), page_table=page_table)

    # the fp8 cache: e4m3 with a scale per kv head (max abs / 448), 1 byte per element
    fp8 = jnp.float8_e4m3fn
    big = float(jnp.finfo(fp8).max)
    ks, vs = (jnp.abs(x.astype(jnp.float32)).max(axis=(0, 1, 3)) / big for x in (k, v))
    k8, v8 = ((x.astype(jnp.float32) / sc[:, None]).astype(fp8) for x, sc in ((k, ks), (v, vs)))
    k8_pool, v8_pool = (x.reshape(-1, ps, hkv, d)[np.argsort(perm)] for x in (k8, v8))
    deq = lambda x, sc: x.astype(jnp.float32) * sc[:, None]
    fp8_token = 2 * hkv * d  # one byte per element
    ours("ours, fp8 e4m3 cache, dense causal", causal, k8, v8, deq(k8[0], ks), deq(v8[0], vs),
         per_token=fp8_token, base_ms=bf16_ms, k_scale=ks, v_scale=vs)
    ours(f"ours, fp8 e4m3, paged ({ps})", causal, k8_pool, v8_pool, deq(seq(k8_pool), ks),
         deq(seq(v8_pool), vs), per_token=fp8_token, base_ms=bf16_paged_ms,
         page_table=page_table, k_scale=ks, v_scale=vs)
    ours(f"ours, local window {cfg['window']}", jbs.layouts.local(t, bs, cfg["window"]),
         k, v, k[0], v[0])

    for kv_dtype in (dtype, jnp.float8_e4m3fn) if gpu else ():
        resident = _cuda.decode_resident_ctas(dtype, kv_dtype, d, "warp_tiles")
        splits = _cuda.decode_splits(b, hq, hkv, 1, 1, -(-t // bs), resident)
        print(f"  k, v {jnp.dtype(kv_dtype).name}: {resident} CTAs resident at once, "
              f"{splits} splits")
    for target in args.target_ctas or ():
        _cuda.DECODE["target_ctas"] = target
        splits = _cuda.decode_splits(b, hq, hkv, 1, 1, -(-t // bs))
        tag = f"{target} CTAs ({splits} splits)"
        base = ours(f"ours, dense causal, {tag}", causal, k, v, k[0], v[0])
        ours(f"ours, fp8 e4m3 cache, {tag}", causal, k8, v8, deq(k8[0], ks), deq(v8[0], vs),
             per_token=fp8_token, base_ms=base, k_scale=ks, v_scale=vs)
    for impl in ("cudnn", "xla") if not args.only else ():
        name = f"jax.nn.dot_product_attention {impl}"
        try:
            f = jax.jit(lambda q, k, v, impl=impl: jax.nn.dot_product_attention(
                q, k, v, is_causal=False, implementation=impl))
            err = rel_err(f(q, k, v), q, k[0], v[0], j < n0)
            show(name, timer(f, q, k, v, reps=reps), dense_bytes, err)
        except Exception as e:  # cuDNN absent (CPU) or the shape unsupported
            line = (str(e).strip().splitlines() or [""])[0]
            print(f"{name:34} failed: {type(e).__name__}: {line[:120]}", flush=True)
    if args.sweep and not args.only:
        sweep(cfg, copy_tbs, quick=not gpu or args.quick, chained=args.chained)


def with_decode_limit(limit, fn):
    """`fn()` traced with `attention.DECODE_MAX_QUERIES = limit` (the Tq up to which
    `jbs.attention` takes the decode primitive; 0: every call the forward's, the calls the
    GQA-packed form would take too)."""
    att = sys.modules["jax_blocksparse.attention"]
    saved = att.DECODE_MAX_QUERIES, att._decode_packed
    att.DECODE_MAX_QUERIES = limit
    if limit == 0:
        att._decode_packed = lambda *args: False
    try:
        return fn()
    finally:
        att.DECODE_MAX_QUERIES, att._decode_packed = saved


def sweep(cfg, copy_tbs, quick, chained=False):
    """Issue 22's sweeps, bf16, dense causal layout, contiguous cache, each sequence at
    length T with its Tq queries at the last positions (q_offset = T - Tq):
      - Tq 1 to 64 through the decode kernel (the form it runs: `_cuda.decode_form`) and
        through the forward kernel (the crossover that sets `DECODE_MAX_QUERIES`), at the
        configuration above;
      - GQA group sizes 1, 4, 8, 16 (Hkv fixed, Hq = group * Hkv), Tq 1, beside cuDNN;
      - cache lengths 4k to 128k, Tq 1, beside cuDNN.
    TB/s count the K/V bytes each call must read once (the dense cache up to T); `% copy`
    is against the copy rate measured above."""
    timer = chained_ms if chained else median_ms
    b, hq, hkv, d, t = (cfg[k] for k in ("batch", "q_heads", "kv_heads", "head_dim", "seq_len"))
    bs, reps = cfg["block_size"], cfg["reps"]
    dtype = jnp.bfloat16
    print(f"\nsweeps: bf16 B={b} D={d} block {bs}; TB/s of the K/V bytes read, % of the copy "
          f"rate ({copy_tbs:.3f} TB/s)")
    print(f"{'':44} {'ms':>9} {'TB/s':>6} {'% copy':>7} {'tok/s':>10}")

    def line(name, ms, nbytes, tokens):
        tbs = nbytes / ms / 1e9
        print(f"{name:44} {ms:9.4f} {tbs:6.3f} {100 * tbs / copy_tbs:7.1f} "
              f"{tokens / ms * 1e3:10.0f}", flush=True)

    def ours_ms(tq, hq, hkv, t, limit):
        keys = jax.random.split(jax.random.key(tq * 1000 + hq + t), 3)
        q = jax.random.normal(keys[0], (b, tq, hq, d), dtype)
        k, v = (jax.random.normal(x, (b, t, hkv, d), dtype) for x in keys[1:])
        layout = jbs.layouts.causal(t, bs)
        n = jnp.full((b,), t, jnp.int32)
        g = lambda q, k, v, n: jbs.attention(q, k, v, layout, causal=True, q_offset=n - tq,
                                             kv_lengths=n)
        calls = reps if chained else 1  # calls per executable run
        g = chain(g, calls) if chained else g
        f = with_decode_limit(limit, lambda: jax.jit(g).lower(q, k, v, n).compile())
        return median_ms(f, q, k, v, n, reps=reps // calls) / calls

    def cudnn_ms(hq, hkv, t):
        keys = jax.random.split(jax.random.key(hq + t), 3)
        q = jax.random.normal(keys[0], (b, 1, hq, d), dtype)
        k, v = (jax.random.normal(x, (b, t, hkv, d), dtype) for x in keys[1:])
        try:
            f = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(
                q, k, v, implementation="cudnn"))
            return timer(f, q, k, v, reps=reps)
        except Exception as e:  # cuDNN absent (CPU) or the shape unsupported
            return f"failed: {type(e).__name__}"

    kv_bytes = lambda hkv, t: b * t * 2 * hkv * d * jnp.dtype(dtype).itemsize
    tqs = (1, 4) if quick else (1, 2, 3, 4, 8, 16, 32, 64)
    crossover = None
    for tq in tqs:
        decode = ours_ms(tq, hq, hkv, t, limit=max(tqs))
        forward = ours_ms(tq, hq, hkv, t, limit=0)
        form = jbs._cuda.decode_form(dtype, dtype, batch=b, tq=tq, tk=t, hq=hq, hkv=hkv,
                                     head_dim=d, block_size=bs, mask_heads=1, width=t // bs,
                                     page_size=None)
        line(f"Tq {tq}: decode primitive ({form})", decode, kv_bytes(hkv, t), b * tq)
        line(f"Tq {tq}: forward primitive", forward, kv_bytes(hkv, t), b * tq)
        if crossover is None and forward < decode:
            crossover = tq
    print(f"crossover: the forward primitive is faster from Tq = {crossover} on" if crossover
          else f"crossover: the decode primitive is faster up to Tq = {max(tqs)}")
    for group in ((1, 4) if quick else (1, 4, 8, 16)):
        ms = ours_ms(1, group * hkv, hkv, t, limit=1)
        line(f"group {group} (Hq {group * hkv}, Hkv {hkv}): ours", ms, kv_bytes(hkv, t), b)
        ref = cudnn_ms(group * hkv, hkv, t)
        if isinstance(ref, str):
            print(f"{'':10}cuDNN {ref}")
        else:
            line(f"group {group}: cuDNN", ref, kv_bytes(hkv, t), b)
    for length in ((512, 1024) if quick else (4096, 16384, 65536, 131072)):
        ms = ours_ms(1, hq, hkv, length, limit=1)
        line(f"cache {length}: ours", ms, kv_bytes(hkv, length), b)
        ref = cudnn_ms(hq, hkv, length)
        if isinstance(ref, str):
            print(f"{'':10}cuDNN {ref}")
        else:
            line(f"cache {length}: cuDNN", ref, kv_bytes(hkv, length), b)


if __name__ == "__main__":
    main()
