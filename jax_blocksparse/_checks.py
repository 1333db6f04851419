"""Checks shared by the public API: the static (compile-time) arguments (bools, numbers and
positive integers) and the dtypes of the arrays, each `ValueError` naming the call and the
argument."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

# The dtypes of every op's floating operands (float64 needs `jax_enable_x64`; it runs on the
# pure-JAX path, on a GPU too).
DTYPES = (jnp.float32, jnp.float16, jnp.bfloat16, jnp.float64)


def static_bool(op: str, name: str, value) -> bool:
    """`value` as a Python bool; anything else, a traced value included, raises
    `ValueError` naming `op` and the argument `name`."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{op}: {name} must be a Python bool (it selects the compiled "
                         f"program, so it cannot be traced); got {type(value).__name__}")
    return bool(value)


def static_float(op: str, name: str, value) -> float:
    """`value` as a finite Python float; a traced, non-numeric or non-finite value raises
    `ValueError` naming `op` and the argument `name`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f"{op}: {name} must be a Python number (it is compiled into the "
                         f"program, so it cannot be traced); got {type(value).__name__}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{op}: {name} must be finite; got {value}")
    return float(value)


def check_int(where: str, name: str, value, minimum: int = 1) -> int:
    """`value` as an int; `ValueError` naming `where` and `name` unless it is a Python or
    numpy integer (a bool is not one) `>= minimum`."""
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer))
            or value < minimum):
        kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{where}: {name} must be {kind}; got {value!r}")
    return int(value)


def check_dtype(op: str, name: str, x) -> None:
    """`ValueError` naming `op` and `name` unless the array `x` has one of `DTYPES`."""
    if not any(x.dtype == d for d in DTYPES):
        raise ValueError(f"{op}: {name} has dtype {x.dtype}; supported: float32, float16, "
                         "bfloat16, float64")


# The dtypes of an fp8 KV cache (`attention`'s k and v, with `k_scale` and `v_scale`).
FP8_DTYPES = (jnp.float8_e4m3fn, jnp.float8_e5m2)


def is_fp8(dtype) -> bool:
    """Whether `dtype` is one of `FP8_DTYPES`."""
    return any(dtype == d for d in FP8_DTYPES)


def check_kv_scale(op: str, name: str, scale, heads: int):
    """The scale of an fp8 KV cache as float32 `[heads]` (ones for None): a positive finite
    Python number, or a floating array `[heads]` (positive where its values are known at
    trace time). Anything else raises `ValueError` naming `op` and `name`."""
    if scale is None:
        return jnp.ones((heads,), jnp.float32)
    if isinstance(scale, (int, float, np.number)) and not isinstance(scale, (bool, np.bool_)):
        value = float(scale)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{op}: {name} must be positive and finite; got {scale}")
        return jnp.full((heads,), value, jnp.float32)
    if not hasattr(scale, "shape") or not hasattr(scale, "dtype"):
        raise ValueError(f"{op}: {name} must be a positive Python float or a float array "
                         f"[Hkv={heads}]; got {type(scale).__name__}")
    if scale.shape != (heads,) or not jnp.issubdtype(scale.dtype, jnp.floating):
        raise ValueError(f"{op}: {name} must be a positive Python float or a float array "
                         f"[Hkv={heads}] (one scale per kv head); got "
                         f"{scale.dtype}{list(scale.shape)}")
    try:  # known values (not traced): checked here
        known = np.asarray(scale, np.float32)
    except Exception:  # a traced array: its values are the caller's to keep positive
        known = None
    if known is not None and not (np.isfinite(known).all() and (known > 0).all()):
        raise ValueError(f"{op}: {name} must be positive and finite; got {known.tolist()}")
    return jnp.asarray(scale).astype(jnp.float32)


def check_sinks(op: str, sinks, heads: int):
    """Attention sinks as an array: None, or a floating array `[heads]`; anything else
    raises `ValueError` naming `op` and `sinks`."""
    if sinks is None:
        return None
    sinks = jnp.asarray(sinks)
    if sinks.shape != (heads,) or not jnp.issubdtype(sinks.dtype, jnp.floating):
        raise ValueError(f"{op}: sinks must be a float array [Hq={heads}] (one logit per "
                         f"query head); got {sinks.dtype}{list(sinks.shape)}")
    return sinks


def check_soft_cap(op: str, cap) -> float:
    """A logit soft cap as a float (0.0 for None: no cap); a traced, non-numeric,
    non-finite or non-positive value raises `ValueError` naming `op` and
    `logits_soft_cap`."""
    if cap is None:
        return 0.0
    cap = static_float(op, "logits_soft_cap", cap)
    if cap <= 0:
        raise ValueError(f"{op}: logits_soft_cap must be > 0 (or None: no cap); got {cap}")
    return cap
