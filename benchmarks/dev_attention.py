"""Developer check of the fused block-sparse attention kernels (FFI targets, called directly).

Run on a GPU machine after `pip install .`:

    python3 benchmarks/dev_attention.py [--no-time] [--no-check]

Correctness: o, lse, dq, dk, dv of `jax_blocksparse_attention_fwd/bwd` against a dense masked
float64 numpy reference on fresh random inputs, random lse cotangents,
over layouts: local causal, a random mask with empty query rows, per-head masks, GQA 2 and 8,
Tq != Tk with causality, kv_lengths shorter than Tk (0 included); NaN never passes; bitwise
determinism over two runs. Timing: B=2, H=16, S=8192, D=128, local causal window 1024,
block 128, bf16: useful TFLOP/s of the forward and forward+backward, next to cuDNN (dense
causal, and its own 1024-token sliding window, each credited with its own allowed pairs).
JAX_BLOCKSPARSE_ATTN_FWD_VARIANT=1 times the alternative forward tile (cuda/attention_kernels.cuh).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import jax
import jax.numpy as jnp

import jax_blocksparse  # noqa: F401  (registers the FFI targets)
from jax_blocksparse import Layout, layouts
from jax_blocksparse.attention_metadata import attention_metadata

DT = {"bf16": jnp.bfloat16, "f16": jnp.float16}
TOL = {"bf16": 3e-2, "f16": 6e-3}


# --------------------------------------------------------------------------- kernels
def _meta_ops(meta):
    qm, km = meta.by_query, meta.by_key
    qops = [jnp.asarray(x) for x in (qm.counts, qm.partial, qm.lists, qm.order)]
    kops = [jnp.asarray(x) for x in (km.counts, km.partial, km.lists, km.order)]
    return qops, kops


def make_fns(layout, causal, scale, q_shape, k_shape, dtype):
    b, tq, hq, d = q_shape
    tk = k_shape[1]
    meta = attention_metadata(layout, causal, tq, tk)
    qops, kops = _meta_ops(meta)
    attrs = dict(block_size=np.int32(layout.block_size), causal=bool(causal),
                 scale=np.float32(scale))
    fwd_call = jax.ffi.ffi_call(
        "jax_blocksparse_attention_fwd",
        (jax.ShapeDtypeStruct(q_shape, dtype), jax.ShapeDtypeStruct((b, hq, tq), jnp.float32)))
    bwd_call = jax.ffi.ffi_call(
        "jax_blocksparse_attention_bwd",
        (jax.ShapeDtypeStruct(q_shape, dtype), jax.ShapeDtypeStruct(k_shape, dtype),
         jax.ShapeDtypeStruct(k_shape, dtype), jax.ShapeDtypeStruct((b, hq, tq), jnp.float32)))

    @jax.jit
    def fwd(q, k, v, kvl):
        return fwd_call(q, k, v, kvl, *qops, **attrs)

    @jax.jit
    def bwd(q, k, v, o, lse, do, dlse, kvl):
        dq, dk, dv, _ = bwd_call(q, k, v, o, lse, do, dlse, kvl, *qops, *kops, **attrs)
        return dq, dk, dv

    @jax.jit
    def fwd_bwd(q, k, v, do, dlse, kvl):
        o, lse = fwd_call(q, k, v, kvl, *qops, **attrs)
        dq, dk, dv, _ = bwd_call(q, k, v, o, lse, do, dlse, kvl, *qops, *kops, **attrs)
        return o, lse, dq, dk, dv

    return meta, fwd, bwd, fwd_bwd


# ------------------------------------------------------------------------ reference
def element_mask(layout, causal, tq, tk, kvl):
    """bool [B, Hm, Tq, Tk]."""
    m = layout.mask if layout.mask.ndim == 3 else layout.mask[None]
    bs = layout.block_size
    m = np.repeat(np.repeat(m, bs, axis=1), bs, axis=2)
    i = np.arange(tq)[:, None]
    j = np.arange(tk)[None, :]
    if causal:
        m = m & (j <= i + (tk - tq))[None]
    kv = j[None, None] < np.asarray(kvl)[:, None, None, None]  # [B,1,1,Tk]
    return m[None] & kv


def reference(q, k, v, allowed, scale, do, dlse):
    """Dense masked attention and its gradients in float64 numpy (fast: BLAS matmuls).

    q [B,Tq,Hq,D], k/v [B,Tk,Hkv,D], allowed bool [B,Hm,Tq,Tk]; returns o, lse, dq, dk, dv.
    """
    hq, hkv = q.shape[2], k.shape[2]
    g = hq // hkv
    qh = q.transpose(0, 2, 1, 3)                          # [B,H,Tq,D]
    kh = np.repeat(k, g, axis=2).transpose(0, 2, 1, 3)    # [B,H,Tk,D]
    vh = np.repeat(v, g, axis=2).transpose(0, 2, 1, 3)
    doh = do.transpose(0, 2, 1, 3)
    s = np.matmul(qh, kh.transpose(0, 1, 3, 2)) * scale
    allowed = np.broadcast_to(allowed, s.shape)
    anyk = allowed.any(-1, keepdims=True)
    m = np.where(anyk, np.max(np.where(allowed, s, -np.inf), -1, keepdims=True), 0.0)
    e = np.where(allowed, np.exp(np.where(allowed, s, 0.0) - m), 0.0)
    tot = np.where(anyk, e.sum(-1, keepdims=True), 1.0)
    p = e / tot
    lse = np.where(anyk, np.log(tot) + m, -np.inf)[..., 0]
    o = np.matmul(p, vh)
    dp = np.matmul(doh, vh.transpose(0, 1, 3, 2))
    delta = (doh * o).sum(-1, keepdims=True) - np.where(anyk, dlse[..., None], 0.0)
    ds = p * (dp - delta)
    dq = np.matmul(ds, kh) * scale
    dk = np.matmul(ds.transpose(0, 1, 3, 2), qh) * scale
    dv = np.matmul(p.transpose(0, 1, 3, 2), doh)
    B, H, Tk, D = dk.shape
    dk = dk.reshape(B, hkv, g, Tk, D).sum(2)
    dv = dv.reshape(B, hkv, g, Tk, D).sum(2)
    tr = lambda x: x.transpose(0, 2, 1, 3)
    return tr(o), lse, tr(dq), tr(dk), tr(dv)


def relerr(out, ref):
    out = np.asarray(out, np.float64)
    ref = np.asarray(ref, np.float64)
    if not np.all(np.isfinite(out)):
        return float("nan")
    den = np.linalg.norm(ref.ravel())
    num = np.linalg.norm((out - ref).ravel())
    return num / den if den > 0 else num


def lse_err(out, ref):
    out = np.asarray(out, np.float64)
    ref = np.asarray(ref, np.float64)
    if np.any(np.isnan(out)) or not np.array_equal(np.isneginf(out), np.isneginf(ref)):
        return float("nan")
    fin = np.isfinite(ref)
    return float(np.max(np.abs(out[fin] - ref[fin]), initial=0.0))


# ------------------------------------------------------------------------------ cases
def random_mask(rng, shape, density, empty_rows=True):
    m = rng.random(shape) < density
    if empty_rows:
        m[..., rng.integers(shape[-2]), :] = False
    return m


def cases(rng):
    out = []
    # name, layout, causal, B, Tq, Tk, Hq, Hkv, D, dtype, kv_lengths
    out.append(("local causal bs128 D128", layouts.local(1024, 128, 384), True,
                2, 1024, 1024, 4, 4, 128, "bf16", None))
    out.append(("local causal bs64 D64 f16", layouts.local(512, 64, 192), True,
                2, 512, 512, 4, 4, 64, "f16", None))
    out.append(("random+empty rows bs64 D64", Layout(random_mask(rng, (8, 8), 0.4), 64), False,
                2, 512, 512, 4, 4, 64, "f16", None))
    out.append(("random+empty rows bs128 D128", Layout(random_mask(rng, (4, 4), 0.5), 128),
                False, 2, 512, 512, 4, 4, 128, "bf16", None))
    out.append(("per-head causal bs64 D128", Layout(random_mask(rng, (4, 8, 8), 0.5), 64), True,
                2, 512, 512, 4, 4, 128, "bf16", None))
    out.append(("GQA2 local causal bs128 D64", layouts.local(512, 128, 256), True,
                2, 512, 512, 4, 2, 64, "bf16", None))
    out.append(("GQA8 per-head causal bs64 D128 f16",
                Layout(random_mask(rng, (8, 8, 8), 0.5), 64), True,
                1, 512, 512, 8, 1, 128, "f16", None))
    out.append(("GQA8 shared bs128 D128", Layout(random_mask(rng, (4, 4), 0.6), 128), True,
                1, 512, 512, 8, 1, 128, "bf16", None))
    out.append(("Tq<Tk causal bs64 D128", Layout(np.ones((4, 12), bool), 64), True,
                2, 256, 768, 4, 4, 128, "bf16", None))
    out.append(("Tq>Tk causal bs128 D64", Layout(np.ones((4, 2), bool), 128), True,
                2, 512, 256, 4, 2, 64, "bf16", None))
    out.append(("kv_lengths bs128 D128", Layout(random_mask(rng, (4, 4), 0.7, False), 128), False,
                3, 512, 512, 4, 4, 128, "bf16", [512, 300, 0]))
    out.append(("kv_lengths causal bs64 D64", layouts.local(512, 64, 256), True,
                3, 512, 512, 4, 2, 64, "f16", [200, 511, 64]))
    out.append(("Tq<Tk causal kv_lengths bs128 D128 per-head",
                Layout(random_mask(rng, (4, 2, 6), 0.7, False), 128), True,
                2, 256, 768, 4, 4, 128, "bf16", [700, 384]))
    return out


def run_checks(rng):
    rows, ok = [], True
    for (name, layout, causal, B, tq, tk, hq, hkv, d, dt, kvl) in cases(rng):
        dtype = DT[dt]
        kvl = np.full((B,), tk, np.int32) if kvl is None else np.asarray(kvl, np.int32)
        scale = 1.0 / np.sqrt(d)
        q_shape, k_shape = (B, tq, hq, d), (B, tk, hkv, d)
        meta, fwd, bwd, fwd_bwd = make_fns(layout, causal, scale, q_shape, k_shape, dtype)

        def rnd(shape, s=1.0):
            return jnp.asarray((s * rng.standard_normal(shape)).astype(np.float32)).astype(dtype)

        q, k, v = rnd(q_shape), rnd(k_shape), rnd(k_shape)
        do = rnd(q_shape)
        dlse = jnp.asarray(rng.standard_normal((B, hq, tq)).astype(np.float32))
        kv = jnp.asarray(kvl)
        o, lse, dq, dk, dv = jax.block_until_ready(fwd_bwd(q, k, v, do, dlse, kv))
        again = jax.block_until_ready(fwd_bwd(q, k, v, do, dlse, kv))
        det = all(np.array_equal(np.asarray(x).view(np.uint8), np.asarray(y).view(np.uint8))
                  for x, y in zip((o, lse, dq, dk, dv), again))

        allowed = element_mask(layout, causal, tq, tk, kvl)  # [B, Hm, Tq, Tk]
        f32 = lambda x: np.asarray(x.astype(jnp.float32)).astype(np.float64)
        ro, rl, rdq, rdk, rdv = reference(f32(q), f32(k), f32(v), allowed, scale, f32(do),
                                          np.asarray(dlse, np.float64))
        errs = dict(o=relerr(f32(o), ro), lse=lse_err(lse, rl), dq=relerr(f32(dq), rdq),
                    dk=relerr(f32(dk), rdk), dv=relerr(f32(dv), rdv))
        tol = TOL[dt]
        good = det and all(np.isfinite(e) for e in errs.values()) and all(
            errs[x] < tol for x in ("o", "dq", "dk", "dv")) and errs["lse"] < 0.05
        ok &= good
        print(f"{'PASS' if good else 'FAIL'} {name:44s} o={errs['o']:.2e} lse={errs['lse']:.2e} "
              f"dq={errs['dq']:.2e} dk={errs['dk']:.2e} dv={errs['dv']:.2e} det={det}",
              flush=True)
        rows.append((name, errs, det))
    return ok


# ----------------------------------------------------------------------------- timing
def useful_pairs(meta, bs, tq, tk, hq):
    kind = meta.kind  # [Hm, Rq, Rk]
    off = tk - tq
    i = np.arange(bs)[:, None]
    j = np.arange(bs)[None, :]
    total = 0
    for h, r, c in zip(*np.nonzero(kind)):
        if kind[h, r, c] == 2:
            total += bs * bs
        else:
            total += int(((c * bs + j) <= (r * bs + i) + off).sum())
    return total * (hq if kind.shape[0] == 1 else 1)


def bench(fn, *args, iters=20):
    jax.block_until_ready(fn(*args))
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(iters):
            out = fn(*args)
        jax.block_until_ready(out)
        ts.append((time.perf_counter() - t0) / iters)
    return float(np.median(ts))


def run_timing(rng):
    B, H, S, D, bs = 2, 16, 8192, 128, 128
    layout = layouts.local(S, bs, 1024)
    dtype = jnp.bfloat16
    scale = 1.0 / np.sqrt(D)
    shape = (B, S, H, D)
    meta, fwd, bwd, fwd_bwd = make_fns(layout, True, scale, shape, shape, dtype)
    rnd = lambda: jnp.asarray(rng.standard_normal(shape).astype(np.float32)).astype(dtype)
    q, k, v, do = rnd(), rnd(), rnd(), rnd()
    dlse = jnp.zeros((B, H, S), jnp.float32)
    kv = jnp.full((B,), S, jnp.int32)
    pairs = useful_pairs(meta, bs, S, S, H) * B
    visited = int((meta.kind > 0).sum()) * bs * bs * (H if meta.kind.shape[0] == 1 else 1) * B
    fl_f = 4 * D * pairs
    t_f = bench(fwd, q, k, v, kv)
    t_fb = bench(fwd_bwd, q, k, v, do, dlse, kv)
    print(f"blocksparse local causal window 1024: fwd {t_f*1e3:.3f} ms "
          f"{fl_f/t_f/1e12:.1f} TFLOP/s useful ({4*D*visited/t_f/1e12:.1f} executed); "
          f"fwd+bwd {t_fb*1e3:.3f} ms {3.5*fl_f/t_fb/1e12:.1f} TFLOP/s useful", flush=True)
    o, lse = fwd(q, k, v, kv)
    t_b = bench(lambda *a: bwd(*a), q, k, v, o, lse, do, dlse, kv)
    print(f"  bwd alone {t_b*1e3:.3f} ms {2.5*fl_f/t_b/1e12:.1f} TFLOP/s useful", flush=True)

    # cuDNN: dense causal (useful pairs = causal triangle), and the same local window.
    def cudnn_fn(window):
        def f(q, k, v):
            return jax.nn.dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                implementation="cudnn",
                                                local_window_size=window)
        fj = jax.jit(f)

        def fb(q, k, v, do):
            o, vjp = jax.vjp(f, q, k, v)
            return o, vjp(do)
        return fj, jax.jit(fb)

    causal_pairs = B * H * S * (S + 1) // 2
    window_pairs = B * H * int(np.minimum(np.arange(S) + 1, 1024).sum())  # keys i-1023..i
    for label, window, pr in (("dense causal", None, causal_pairs),
                              ("window (1023,0)", (1023, 0), window_pairs)):
        try:
            cf, cfb = cudnn_fn(window)
            tc = bench(cf, q, k, v)
            tcb = bench(cfb, q, k, v, do)
            print(f"cudnn {label}: fwd {tc*1e3:.3f} ms {4*D*pr/tc/1e12:.1f} TFLOP/s; "
                  f"fwd+bwd {tcb*1e3:.3f} ms {3.5*4*D*pr/tcb/1e12:.1f} TFLOP/s", flush=True)
        except Exception as e:  # noqa: BLE001
            print(f"cudnn {label}: unavailable ({type(e).__name__}: {str(e)[:200]})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--no-time", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(int(time.time()))
    print(jax.devices(), flush=True)
    ok = True
    if not args.no_check:
        ok = run_checks(rng)
        print("ALL PASS" if ok else "SOME FAILED", flush=True)
    if not args.no_time:
        run_timing(rng)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
