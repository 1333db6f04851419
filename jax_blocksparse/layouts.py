"""Layout generators. Each returns a `Layout`; the random ones are deterministic per seed.

Sizes are given in elements (features or tokens) and must be multiples of `block_size`.
Every generator also raises `ValueError` naming the argument for a `causal` that is not a
Python bool or a `seed` that is not an int >= 0.

Weight patterns (OpenAI blocksparse): `dense`, `random`, `barabasi_albert`, `watts_strogatz`.
Attention patterns: `causal`, `local`, `strided` and `fixed` (Sparse Transformer, Child et
al. 2019), `bigbird`, `longformer`.
"""

from __future__ import annotations

import numpy as np

from ._checks import check_int, static_bool
from .layout import Layout


def _int(where: str, name: str, value, minimum: int) -> int:
    """`value` as an int, or `ValueError` naming `layouts.<where>` and `name` unless it is
    an integer (not a bool) `>= minimum`."""
    return check_int(f"layouts.{where}", name, value, minimum)


def _seed(where: str, seed) -> int:
    """`seed` checked: an int >= 0 (the layout is a function of it)."""
    return check_int(f"layouts.{where}", "seed", seed, 0)


def _fraction(where: str, name: str, value, allow_zero: bool) -> float:
    """`value` as a float, or `ValueError` unless it is a real number in (0, 1]
    (`[0, 1]` when `allow_zero`)."""
    ok = (isinstance(value, (int, float, np.integer, np.floating))
          and not isinstance(value, (bool, np.bool_))
          and (0.0 <= value if allow_zero else 0.0 < value) and value <= 1.0)
    if not ok:
        raise ValueError(f"layouts.{where}: {name} must be a number in "
                         f"{'[0, 1]' if allow_zero else '(0, 1]'}; got {value!r}")
    return float(value)


def _blocks(where: str, name: str, size, block_size) -> int:
    """Number of blocks along a dimension of `size` elements (checked: a positive
    multiple of a positive `block_size`)."""
    _int(where, "block_size", block_size, 1)
    size = _int(where, name, size, 1)
    if size % block_size:
        raise ValueError(f"layouts.{where}: {name}={size} must be a positive multiple of "
                         f"block_size={block_size}")
    return size // block_size


def _grid(where: str, seq_len, block_size):
    """Block row and column indices `[n, 1]`, `[1, n]` of a square attention mask."""
    n = _blocks(where, "seq_len", seq_len, block_size)
    r = np.arange(n)[:, None]
    return r, r.T


# ------------------------------------------------------------------------ weights
def dense(rows: int, cols: int, block_size: int) -> Layout:
    """Every block present: mask `[rows/bs, cols/bs]` all True.

    Raises:
      ValueError: naming the argument, for `rows` or `cols` not a positive multiple of a
        positive int `block_size`.
    """
    shape = (_blocks("dense", "rows", rows, block_size),
             _blocks("dense", "cols", cols, block_size))
    return Layout(np.ones(shape, bool), block_size)


def random(rows: int, cols: int, block_size: int, density: float, seed: int = 0) -> Layout:
    """Exactly `round(density * R * C)` blocks (at least one), chosen uniformly;
    mask `[rows/bs, cols/bs]`, `density` in (0, 1].

    Raises:
      ValueError: naming the argument, for `rows` or `cols` not a positive multiple of a
        positive int `block_size`, `density` not a number in (0, 1].
    """
    r, c = _blocks("random", "rows", rows, block_size), _blocks("random", "cols", cols, block_size)
    density = _fraction("random", "density", density, allow_zero=False)
    count = max(1, int(round(density * r * c)))
    rng = np.random.default_rng(_seed("random", seed))
    chosen = rng.choice(r * c, size=count, replace=False)
    mask = np.zeros(r * c, bool)
    mask[chosen] = True
    return Layout(mask.reshape(r, c), block_size)


def _square_graph(where, rows, cols, block_size, density):
    """Blocks `(R, C)`, the graph's node count `max(R, C)` and the checked density."""
    r, c = _blocks(where, "rows", rows, block_size), _blocks(where, "cols", cols, block_size)
    return r, c, max(r, c), _fraction(where, "density", density, allow_zero=False)


def barabasi_albert(rows: int, cols: int, block_size: int, density: float = 0.1,
                    seed: int = 0) -> Layout:
    """Scale-free (power-law) pattern: the adjacency of a Barabási–Albert graph.

    The graph has `n = max(R, C)` nodes; each new node links to `m ≈ density * n / 2`
    existing nodes chosen with probability proportional to their degree, so a few nodes
    (rows) collect very many blocks. The adjacency (with its diagonal) is cropped to `[R, C]`.
    `density` in (0, 1].

    Raises:
      ValueError: naming the argument, for `rows` or `cols` not a positive multiple of a
        positive int `block_size`, `density` not a number in (0, 1].
    """
    r, c, n, density = _square_graph("barabasi_albert", rows, cols, block_size, density)
    m = int(np.clip(round(density * n / 2), 1, max(n - 1, 1)))
    rng = np.random.default_rng(_seed("barabasi_albert", seed))
    adj = np.eye(n, dtype=bool)
    targets = list(range(m))  # the first new node links to nodes 0..m-1
    repeated: list[int] = []  # each node once per edge end: degree-proportional sampling
    for node in range(m, n):
        adj[node, targets] = adj[targets, node] = True
        repeated += targets + [node] * m
        chosen: set[int] = set()
        while len(chosen) < m:
            chosen.add(repeated[rng.integers(len(repeated))])
        targets = sorted(chosen)
    return Layout(adj[:r, :c], block_size)


def watts_strogatz(rows: int, cols: int, block_size: int, density: float = 0.1,
                   rewire: float = 0.2, seed: int = 0) -> Layout:
    """Small-world pattern: a ring lattice of `k ≈ density * n` neighbours per node, each
    edge rewired to a random node with probability `rewire`; symmetric, with its diagonal,
    cropped to `[R, C]`. `density` in (0, 1], `rewire` in [0, 1].

    Raises:
      ValueError: naming the argument, for `rows` or `cols` not a positive multiple of a
        positive int `block_size`, `density` not in (0, 1], `rewire` not in [0, 1].
    """
    r, c, n, density = _square_graph("watts_strogatz", rows, cols, block_size, density)
    rewire = _fraction("watts_strogatz", "rewire", rewire, allow_zero=True)
    half = max(1, int(round(density * n / 2)))
    rng = np.random.default_rng(_seed("watts_strogatz", seed))
    adj = np.eye(n, dtype=bool)
    for offset in range(1, half + 1):
        for node in range(n):
            other = (node + offset) % n
            if rng.random() < rewire:
                other = int(rng.integers(n))
            adj[node, other] = adj[other, node] = True
    return Layout(adj[:r, :c], block_size)


# ---------------------------------------------------------------------- attention
def causal(seq_len: int, block_size: int) -> Layout:
    """Lower-triangular blocks (the diagonal included): plain causal attention; mask
    `[seq_len/bs, seq_len/bs]`.

    Raises:
      ValueError: naming the argument, for `seq_len` not a positive multiple of a
        positive int `block_size`.
    """
    r, c = _grid("causal", seq_len, block_size)
    return Layout(c <= r, block_size)


def local(seq_len: int, block_size: int, window: int, causal: bool = True) -> Layout:
    """Sliding-window attention, `window` in tokens.

    A block is kept when any of its (query i, key j) pairs lies within the window:
    `0 <= i - j < window` when `causal`, else `|i - j| < window`. Mask
    `[seq_len/bs, seq_len/bs]`.

    Raises:
      ValueError: naming the argument, for `seq_len` not a positive multiple of a
        positive int `block_size`, `window` not a positive int.
    """
    return Layout(_local("local", seq_len, block_size, window, causal), block_size)


def _local(where, seq_len, block_size, window, causal) -> np.ndarray:
    """The boolean mask of `local` (arguments checked for the generator `where`)."""
    r, c = _grid(where, seq_len, block_size)
    window = _int(where, "window", window, 1)
    causal = static_bool(f"layouts.{where}", "causal", causal)
    lo = (r - c - 1) * block_size + 1  # smallest i - j over the block's pairs
    hi = (r - c + 1) * block_size - 1  # largest
    if causal:
        keep = (hi >= 0) & (lo <= window - 1)
    else:
        keep = (hi > -window) & (lo < window)
    return keep


def strided(seq_len: int, block_size: int, stride: int, causal: bool = True) -> Layout:
    """Sparse Transformer *strided* pattern (both heads' patterns in one mask).

    Query i attends to the previous `stride` tokens (`0 <= i - j < stride`) and to every
    token j with `(i - j) mod stride == 0`; with `causal=False`, in both directions.
    `stride` in tokens (a positive int); mask `[seq_len/bs, seq_len/bs]`.

    Raises:
      ValueError: naming the argument, for `seq_len` not a positive multiple of a
        positive int `block_size`, `stride` not a positive int.
    """
    stride = _int("strided", "stride", stride, 1)
    base = _local("strided", seq_len, block_size, stride, causal)
    r, c = _grid("strided", seq_len, block_size)
    # (i - j) mod stride == 0 for some pair: the difference of block starts, shifted by
    # at most bs - 1 either way, hits a multiple of stride.
    d = ((r - c) * block_size) % stride
    hit = (d < block_size) | (d > stride - block_size)
    if causal:
        hit &= c <= r
    return Layout(base | hit, block_size)


def fixed(seq_len: int, block_size: int, stride: int, summary: int | None = None,
          causal: bool = True) -> Layout:
    """Sparse Transformer *fixed* pattern (both heads' patterns in one mask).

    Query i attends to the tokens of its own chunk of `stride` tokens
    (`j // stride == i // stride`) and to the last `summary` tokens of every chunk
    (`j mod stride >= stride - summary`, default one block); causal keeps `j <= i`.
    `stride` and `summary` in tokens, positive ints, `summary <= stride`; mask
    `[seq_len/bs, seq_len/bs]`.

    Raises:
      ValueError: naming the argument, for `seq_len` not a positive multiple of a
        positive int `block_size`, `stride` or `summary` not a positive int, `summary >
        stride`.
    """
    r, c = _grid("fixed", seq_len, block_size)
    stride = _int("fixed", "stride", stride, 1)
    causal = static_bool("layouts.fixed", "causal", causal)
    default = " (the default: one block)" if summary is None else ""
    summary = _int("fixed", "summary", block_size if summary is None else summary, 1)
    if summary > stride:
        raise ValueError(f"layouts.fixed: summary must be in (0, stride={stride}]; "
                         f"got {summary}{default}")
    first_i, last_i = r * block_size, (r + 1) * block_size - 1
    first_j, last_j = c * block_size, (c + 1) * block_size - 1
    # same chunk: chunk ranges of the two blocks overlap
    same = (first_i // stride <= last_j // stride) & (first_j // stride <= last_i // stride)
    # summary: some key of block c has j mod stride >= stride - summary
    js = (c * block_size)[..., None] + np.arange(block_size)
    summ = ((js % stride) >= stride - summary).any(-1)
    keep = same | summ
    if causal:
        keep &= c <= r
    return Layout(keep, block_size)


def bigbird(seq_len: int, block_size: int, num_random: int = 3, window: int = 3,
            num_global: int = 2, seed: int = 0) -> Layout:
    """BigBird: `num_global` global block rows/columns, a band around the diagonal (block
    (r, c) with `|r - c| <= window // 2`: `window` blocks for an odd `window`, one more
    for an even one), and `num_random` key blocks per query block drawn at random among
    all of them (one may fall in the band or a global column: a row gains at most
    `num_random`) (non-causal). Counts in blocks: `num_random`, `num_global` ints >= 0,
    `window` a positive int; `seed` an int >= 0. Mask `[seq_len/bs, seq_len/bs]`.

    Raises:
      ValueError: naming the argument, for `seq_len` not a positive multiple of a
        positive int `block_size`, `window` not a positive int, `num_random`,
        `num_global` or `seed` not an int >= 0.
    """
    r, c = _grid("bigbird", seq_len, block_size)
    num_random = _int("bigbird", "num_random", num_random, 0)
    window = _int("bigbird", "window", window, 1)
    num_global = _int("bigbird", "num_global", num_global, 0)
    n = r.shape[0]
    keep = np.abs(r - c) <= window // 2
    keep[:num_global, :] = keep[:, :num_global] = True
    rng = np.random.default_rng(_seed("bigbird", seed))
    for row in range(n):
        keep[row, rng.choice(n, size=min(num_random, n), replace=False)] = True
    return Layout(keep, block_size)


def longformer(seq_len: int, block_size: int, window: int, num_global: int = 1) -> Layout:
    """Longformer: a non-causal sliding window, keys j with `|i - j| < window` (tokens: the
    query itself and `window - 1` on each side; a block is kept when any of its pairs
    is), plus `num_global` global block rows and columns (an int >= 0). Mask
    `[seq_len/bs, seq_len/bs]`.

    Raises:
      ValueError: naming the argument, for `seq_len` not a positive multiple of a
        positive int `block_size`, `window` not a positive int, `num_global` not an int
        >= 0.
    """
    keep = _local("longformer", seq_len, block_size, window, causal=False)
    num_global = _int("longformer", "num_global", num_global, 0)
    keep[:num_global, :] = keep[:, :num_global] = True
    return Layout(keep, block_size)
