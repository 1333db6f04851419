"""The tests' oracle: float64 numpy, written the obvious way (dense, masked)."""

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
