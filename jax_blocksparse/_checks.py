"""Checks of the static (compile-time) arguments the public ops share."""

from __future__ import annotations

import math

import numpy as np


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
