"""The tests' oracle: float64 numpy, written the obvious way (dense, masked); and the
helpers that run a check in a fresh process and read its kernel launch log."""

import os
import subprocess
import sys

import numpy as np
import jax.numpy as jnp


def to_dense64(blocks, layout):
    """float64 `[..., R*bs, C*bs]` from blocks `[..., nnz, bs, bs]`."""
    blocks = np.asarray(blocks, np.float64)
    bs = layout.block_size
    r, c = layout.mask.shape
    lead = blocks.shape[:-3]
    out = np.zeros(lead + (r * bs, c * bs))
    for e, (i, j) in enumerate(np.argwhere(layout.mask)):
        out[..., i * bs:(i + 1) * bs, j * bs:(j + 1) * bs] = blocks[..., e, :, :]
    return out


def from_dense64(x, layout):
    x = np.asarray(x, np.float64)
    bs = layout.block_size
    return np.stack([x[..., i * bs:(i + 1) * bs, j * bs:(j + 1) * bs]
                     for i, j in np.argwhere(layout.mask)], axis=-3) if layout.nnz else \
        np.zeros(x.shape[:-2] + (0, bs, bs))


def op(x, t):
    return np.swapaxes(x, -1, -2) if t else x


def sdd64(a, b, layout, trans_a=False, trans_b=False):
    return from_dense64(op(f64(a), trans_a) @ op(f64(b), trans_b), layout)


def dsd64(s, b, layout, trans_s=False, trans_b=False):
    return op(to_dense64(s, layout), trans_s) @ op(f64(b), trans_b)


def dds64(a, w, layout, trans_a=False, trans_w=False):
    return op(f64(a), trans_a) @ op(to_dense64(w, layout), trans_w)


def f64(x):
    """`x` as float64 numpy: float64 exactly, other dtypes through float32."""
    x = np.asarray(x)
    if x.dtype == np.float64:
        return x
    return np.asarray(jnp.asarray(x).astype(jnp.float32), np.float64)


def rel_err(got, want):
    got, want = f64(got), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.all(np.isfinite(got)), "non-finite values in the result"
    denom = np.linalg.norm(want)
    return np.linalg.norm(got - want) / (denom if denom > 0 else 1.0)


# relative Frobenius error allowed per dtype (float32 allows TF32 on GPU at default precision)
TOLERANCE = {jnp.float32: 2e-3, jnp.float16: 3e-3, jnp.bfloat16: 2e-2}
TOLERANCE_HIGHEST = 1e-5


def random(rng, shape, dtype):
    """Fresh standard-normal values in `dtype` (never zeros)."""
    return jnp.asarray(rng.standard_normal(shape), jnp.float32).astype(dtype)


REFERENCES = {"sdd": sdd64, "dsd": dsd64, "dds": dds64}
# which of an op's two arguments are block-sparse
SPARSE_ARGS = {"sdd": (False, False), "dsd": (True, False), "dds": (False, True)}

# The matmul family's numeric variants: dtype, precision and the relative error allowed.
# On a GPU: bf16/f16 run the tensor-core kernels (wgmma or mma.sync), f32 the TF32 ones,
# f32 with precision=HIGHEST the exact-float32 simple kernels.
VARIANTS = {
    "bf16": (jnp.bfloat16, None, TOLERANCE[jnp.bfloat16]),
    "f16": (jnp.float16, None, TOLERANCE[jnp.float16]),
    "f32": (jnp.float32, None, TOLERANCE[jnp.float32]),
    "f32hi": (jnp.float32, "highest", TOLERANCE_HIGHEST),
}


def grads64(kind, args, layout, trans, cot):
    """float64 gradients of `vdot(kind(*args), cot)` for both (unbatched) arguments of
    sdd/dsd/dds: with X1 = op(arg1), X2 = op(arg2) dense and C the dense cotangent,
    dX1 = C @ X2^T and dX2 = X1^T @ C, taken back to each argument's form."""
    sparse = SPARSE_ARGS[kind]
    x1, x2 = (op(to_dense64(a, layout) if s else f64(a), t)
              for a, s, t in zip(args, sparse, trans))
    c = to_dense64(cot, layout) if kind == "sdd" else f64(cot)
    grads = (c @ x2.T, x1.T @ c)
    return [from_dense64(op(g, t), layout) if s else op(g, t)
            for g, s, t in zip(grads, sparse, trans)]


# ------------------------------------------------------------------------------ attention
ATTENTION_TOLERANCE = {jnp.float16: 6e-3, jnp.bfloat16: 3e-2}  # o, dq, dk, dv (relative)
LSE_TOLERANCE = 1e-2  # absolute, on the finite entries


def attention_mask64(layout, causal, tq, tk, kv_lengths):
    """bool `[B, Hm, Tq, Tk]`: which keys each query may attend to."""
    mask = layout.mask if layout.mask.ndim == 3 else layout.mask[None]
    bs = layout.block_size
    allowed = np.kron(mask, np.ones((bs, bs), bool))[None]
    i, j = np.arange(tq)[:, None], np.arange(tk)[None, :]
    if causal:
        allowed = allowed & (j <= i + (tk - tq))
    return allowed & (j < np.asarray(kv_lengths)[:, None, None, None])


def attention64(q, k, v, allowed, scale, do, dlse):
    """Dense masked attention and its gradients in float64: q `[B, Tq, Hq, D]`, k/v
    `[B, Tk, Hkv, D]`, `allowed` from `attention_mask64`, cotangents `do` (of o) and
    `dlse` (of lse `[B, Hq, Tq]`). Returns o, lse, dq, dk, dv; a row without keys has
    o = 0, lse = -inf and zero gradients."""
    q, k, v, do, dlse = (f64(x) for x in (q, k, v, do, dlse))
    hq, hkv = q.shape[2], k.shape[2]
    g = hq // hkv
    heads = lambda x: x.transpose(0, 2, 1, 3)  # [B, T, H, D] <-> [B, H, T, D]
    qh, doh = heads(q), heads(do)
    kh, vh = heads(np.repeat(k, g, axis=2)), heads(np.repeat(v, g, axis=2))
    s = qh @ kh.transpose(0, 1, 3, 2) * scale
    allowed = np.broadcast_to(allowed, s.shape)
    any_key = allowed.any(-1, keepdims=True)
    m = np.where(any_key, np.max(np.where(allowed, s, -np.inf), -1, keepdims=True), 0.0)
    e = np.where(allowed, np.exp(np.where(allowed, s, 0.0) - m), 0.0)
    total = np.where(any_key, e.sum(-1, keepdims=True), 1.0)
    p = e / total
    lse = np.where(any_key, np.log(total) + m, -np.inf)[..., 0]
    o = p @ vh
    dp = doh @ vh.transpose(0, 1, 3, 2)
    delta = (doh * o).sum(-1, keepdims=True) - np.where(any_key, dlse[..., None], 0.0)
    ds = p * (dp - delta)
    dq = ds @ kh * scale
    dk = ds.transpose(0, 1, 3, 2) @ qh * scale
    dv = p.transpose(0, 1, 3, 2) @ doh
    b, _, tk, d = dk.shape
    dk, dv = (x.reshape(b, hkv, g, tk, d).sum(2) for x in (dk, dv))
    return heads(o), lse, heads(dq), heads(dk), heads(dv)


def attention64_sinks(q, k, v, allowed, scale, do, dlse, sinks=None, cap=None):
    """`attention64` with attention sinks `sinks [Hq]` (or None) and a logit soft cap `cap`
    (or None), its gradients derived by hand: returns o, lse, dq, dk, dv, dsinks (None
    without sinks). With capped scores `s = cap·tanh(s0/cap)`, the sink's term
    `e_sink = exp(sink − m)` in each row's denominator, `P = e / total`,
    `P_sink = e_sink / total`, `delta = rowsum(dO ∘ O) − dlse`:
    `dS = P ∘ (dP − delta) ∘ (1 − tanh²)`, `dsink[h] = −Σ_{b,i} P_sink · delta`."""
    q, k, v, do, dlse = (f64(x) for x in (q, k, v, do, dlse))
    hq, hkv = q.shape[2], k.shape[2]
    g = hq // hkv
    heads = lambda x: x.transpose(0, 2, 1, 3)
    qh, doh = heads(q), heads(do)
    kh, vh = heads(np.repeat(k, g, axis=2)), heads(np.repeat(v, g, axis=2))
    s = qh @ kh.transpose(0, 1, 3, 2) * scale
    slope = np.ones_like(s)
    if cap is not None:
        t = np.tanh(s / cap)
        s, slope = cap * t, 1.0 - t * t
    allowed = np.broadcast_to(allowed, s.shape)
    sink = None if sinks is None else f64(sinks)[None, :, None, None]
    m = np.max(np.where(allowed, s, -np.inf), -1, keepdims=True)
    if sink is not None:
        m = np.maximum(m, sink)
    any_term = np.isfinite(m)
    m = np.where(any_term, m, 0.0)
    e = np.where(allowed, np.exp(np.where(allowed, s, 0.0) - m), 0.0)
    e_sink = 0.0 if sink is None else np.exp(sink - m)
    total = e.sum(-1, keepdims=True) + e_sink
    total = np.where(any_term, total, 1.0)
    p, p_sink = e / total, e_sink / total
    lse = np.where(any_term, np.log(total) + m, -np.inf)[..., 0]
    o = p @ vh
    dp = doh @ vh.transpose(0, 1, 3, 2)
    delta = (doh * o).sum(-1, keepdims=True) - np.where(any_term, dlse[..., None], 0.0)
    ds = p * (dp - delta) * slope
    dq = ds @ kh * scale
    dk = ds.transpose(0, 1, 3, 2) @ qh * scale
    dv = p.transpose(0, 1, 3, 2) @ doh
    b, _, tk, d = dk.shape
    dk, dv = (x.reshape(b, hkv, g, tk, d).sum(2) for x in (dk, dv))
    dsinks = None if sink is None else -(p_sink * delta).sum(axis=(0, 2, 3))
    return heads(o), lse, heads(dq), heads(dk), heads(dv), dsinks


def lse_err(got, want):
    """Largest absolute error of a log-sum-exp on its finite entries; -inf must match."""
    got, want = f64(got), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert not np.any(np.isnan(got)), "NaN in the lse"
    assert np.array_equal(np.isneginf(got), np.isneginf(want)), "rows without keys differ"
    finite = np.isfinite(want)
    return float(np.max(np.abs(got[finite] - want[finite]), initial=0.0))


# ------------------------------------------------------------------- kernels in a subprocess
# The kernel switches (JAX_BLOCKSPARSE_*) are read when the package loads: a check under
# one runs in a fresh Python process.
# ATTN_FWD_VARIANT "" is its default (by architecture); "0" would force the FA2 forward.
# MATMUL_SMALL_WGMMA, MATMUL_SMALL_RECORDS, MATMUL_SDD_RUNS, DECODE_PACKED, ATTN_BWD_D256,
# ATTN_BWD_ONEPASS_DQ_FIRST, ATTN_BWD_ONEPASS_EARLY_CONVERT, ATTN_BWD_ONEPASS_STORE_TMA,
# ATTN_BWD_ONEPASS_PERSISTENT and ATTN_DELTA_TILES "" are their defaults (on);
# "0" switches them off.
SWITCHES_OFF = {f"JAX_BLOCKSPARSE_{name}": "0" for name in (
    "DISABLE_CUDA", "SIMPLE_KERNELS", "NO_WGMMA", "ATTN_BWD_VARIANT",
    "ATTN_FWD_PERSISTENT", "ATTN_FWD_PERSISTENT_CTAS", "DECODE_SHARED_TILES",
    "MATMUL_TF32_WGMMA", "ATTN_BWD_TILED64", "ATTN_HEAD_SECTIONS_EVEN",
    "MATMUL_GROUP_WGMMA", "MATMUL_SDD_SPLIT", "ATTN_FWD_CAP_MAX",
    "ATTN_BWD_ONEPASS_PERSISTENT_CTAS")}
SWITCHES_OFF["JAX_BLOCKSPARSE_ATTN_FWD_VARIANT"] = ""
SWITCHES_OFF["JAX_BLOCKSPARSE_MATMUL_SMALL_WGMMA"] = ""
SWITCHES_OFF["JAX_BLOCKSPARSE_MATMUL_SDD_RUNS"] = ""  # its default: on
SWITCHES_OFF["JAX_BLOCKSPARSE_DECODE_PACKED"] = ""  # its default: on
SWITCHES_OFF["JAX_BLOCKSPARSE_ATTN_BWD_D256"] = ""  # its default: on
SWITCHES_OFF["JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_DQ_FIRST"] = ""  # its default: on
SWITCHES_OFF["JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_GROUP"] = ""  # its default: groups of 4
SWITCHES_OFF["JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_EARLY_CONVERT"] = ""  # its default: on
SWITCHES_OFF["JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_STORE_TMA"] = ""  # its default: on
SWITCHES_OFF["JAX_BLOCKSPARSE_ATTN_DELTA_TILES"] = ""  # its default: on
SWITCHES_OFF["JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_PERSISTENT"] = ""  # its default: on
SWITCHES_OFF["JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_DQ_SLOTS"] = ""  # the layout's choice
SWITCHES_OFF["JAX_BLOCKSPARSE_MATMUL_SMALL_RECORDS"] = ""  # its default: on
SWITCHES_OFF["JAX_BLOCKSPARSE_MATMUL_TMA"] = ""  # its default: block sizes 64 and 128
SWITCHES_OFF["JAX_BLOCKSPARSE_MATMUL_SDD_TMA"] = ""  # its default: by the call (bs 128)
SWITCHES_OFF["JAX_BLOCKSPARSE_ATTN_FWD_LAZY_RESCALE"] = ""  # its default: on
# unset (None: removed from the environment): each forward call's choice
# (_cuda.forward_head_sections); set, even to "" or "0", it decides for every call
SWITCHES_OFF["JAX_BLOCKSPARSE_ATTN_HEAD_SECTIONS"] = None


def run_python(code, **env):
    """Runs `code` in a fresh Python that imports the test modules (this folder on its
    path) and allocates GPU memory on demand (this process may hold most of it), with the
    kernel switches off but those in `env` (a value None: the variable unset). Fails the
    calling test unless it exits 0; returns the CompletedProcess."""
    import jax_blocksparse

    here = os.path.dirname(os.path.abspath(__file__))
    package_root = os.path.dirname(os.path.dirname(jax_blocksparse.__file__))  # under test
    path = os.pathsep.join(p for p in (package_root, here, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONPATH=path, XLA_PYTHON_CLIENT_PREALLOCATE="false",
               **dict(SWITCHES_OFF, **env))
    env = {name: value for name, value in env.items() if value is not None}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=600, cwd=here)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-6000:]
    return result


CASE_MARK = "=== case "


def mark_case(label):
    """Starts a case's stretch of stderr (see `kernels_by_case`)."""
    print(CASE_MARK + label, file=sys.stderr, flush=True)


def launch_lines_by_case(stderr):
    """{case label: [line]} from a run with JAX_BLOCKSPARSE_DEBUG set: the launch lines
    `[jax_blocksparse] <op> <shapes ...>  kernel=<name>[  <timing>]` that follow each
    `mark_case` line."""
    cases, current = {}, None
    for line in stderr.splitlines():
        if line.startswith(CASE_MARK):
            current = cases.setdefault(line[len(CASE_MARK):], [])
        elif line.startswith("[jax_blocksparse] ") and "kernel=" in line:
            assert current is not None, f"a launch before the first case: {line}"
            current.append(line)
    return cases


def kernels_by_case(stderr):
    """{case label: [(op, kernel)]} of `launch_lines_by_case`'s lines."""
    return {case: [(line.split()[1], line.split("kernel=", 1)[1].strip()) for line in lines]
            for case, lines in launch_lines_by_case(stderr).items()}
