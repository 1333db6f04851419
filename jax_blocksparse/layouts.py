"""Layout generators. Each returns a `Layout`; the random ones are deterministic per seed.

Sizes are given in elements (features or tokens) and must be multiples of `block_size`.

Weight patterns (OpenAI blocksparse): `dense`, `random`, `barabasi_albert`, `watts_strogatz`.
Attention patterns: `causal`, `local`, `strided` and `fixed` (Sparse Transformer, Child et
al. 2019), `bigbird`, `longformer`.
"""

from __future__ import annotations

import numpy as np

from .layout import Layout


def _blocks(size: int, block_size: int, name: str) -> int:
    if size <= 0 or size % block_size:
        raise ValueError(f"{name}={size} must be a positive multiple of block_size={block_size}")
    return size // block_size


def _grid(seq_len: int, block_size: int):
    """Block row and column indices `[n, 1]`, `[1, n]` of a square attention mask."""
    n = _blocks(seq_len, block_size, "seq_len")
    r = np.arange(n)[:, None]
    return r, r.T


# ------------------------------------------------------------------------ weights
def dense(rows: int, cols: int, block_size: int) -> Layout:
    """Every block present: `[rows/bs, cols/bs]` all True."""
    shape = (_blocks(rows, block_size, "rows"), _blocks(cols, block_size, "cols"))
    return Layout(np.ones(shape, bool), block_size)


def random(rows: int, cols: int, block_size: int, density: float, seed: int = 0) -> Layout:
    """Exactly `round(density * R * C)` blocks (at least one), chosen uniformly."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1]; got {density}")
    r, c = _blocks(rows, block_size, "rows"), _blocks(cols, block_size, "cols")
    count = max(1, int(round(density * r * c)))
    chosen = np.random.default_rng(seed).choice(r * c, size=count, replace=False)
    mask = np.zeros(r * c, bool)
    mask[chosen] = True
    return Layout(mask.reshape(r, c), block_size)


def _square_graph(rows, cols, block_size):
    r, c = _blocks(rows, block_size, "rows"), _blocks(cols, block_size, "cols")
    return r, c, max(r, c)


def barabasi_albert(rows: int, cols: int, block_size: int, density: float = 0.1,
                    seed: int = 0) -> Layout:
    """Scale-free (power-law) pattern: the adjacency of a Barabási–Albert graph.

    The graph has `n = max(R, C)` nodes; each new node links to `m ≈ density * n / 2`
    existing nodes chosen with probability proportional to their degree, so a few nodes
    (rows) collect very many blocks. The adjacency (with its diagonal) is cropped to `[R, C]`.
    """
    r, c, n = _square_graph(rows, cols, block_size)
    m = int(np.clip(round(density * n / 2), 1, max(n - 1, 1)))
    rng = np.random.default_rng(seed)
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
    cropped to `[R, C]`."""
    r, c, n = _square_graph(rows, cols, block_size)
    half = max(1, int(round(density * n / 2)))
    rng = np.random.default_rng(seed)
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
    """Lower-triangular blocks (the diagonal included): plain causal attention."""
    r, c = _grid(seq_len, block_size)
    return Layout(c <= r, block_size)


def local(seq_len: int, block_size: int, window: int, causal: bool = True) -> Layout:
    """Sliding-window attention, `window` in tokens.

    A block is kept when any of its (query i, key j) pairs lies within the window:
    `0 <= i - j < window` when `causal`, else `|i - j| < window`.
    """
    if window <= 0:
        raise ValueError(f"window must be positive; got {window}")
    r, c = _grid(seq_len, block_size)
    lo = (r - c - 1) * block_size + 1  # smallest i - j over the block's pairs
    hi = (r - c + 1) * block_size - 1  # largest
    if causal:
        keep = (hi >= 0) & (lo <= window - 1)
    else:
        keep = (hi > -window) & (lo < window)
    return Layout(keep, block_size)


def strided(seq_len: int, block_size: int, stride: int, causal: bool = True) -> Layout:
    """Sparse Transformer *strided* pattern (both heads' patterns in one mask).

    Query i attends to the previous `stride` tokens (`0 <= i - j < stride`) and to every
    token j with `(i - j) mod stride == 0`; with `causal=False`, in both directions.
    """
    base = local(seq_len, block_size, stride, causal).mask
    r, c = _grid(seq_len, block_size)
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
    """
    summary = block_size if summary is None else summary
    if not 0 < summary <= stride:
        raise ValueError(f"summary must be in (0, stride={stride}]; got {summary}")
    r, c = _grid(seq_len, block_size)
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
    """BigBird: `num_global` global block rows/columns, a band of `window` blocks around
    the diagonal, and `num_random` random key blocks per query block (non-causal)."""
    r, c = _grid(seq_len, block_size)
    n = r.shape[0]
    keep = np.abs(r - c) <= window // 2
    keep[:num_global, :] = keep[:, :num_global] = True
    rng = np.random.default_rng(seed)
    for row in range(n):
        keep[row, rng.choice(n, size=min(num_random, n), replace=False)] = True
    return Layout(keep, block_size)


def longformer(seq_len: int, block_size: int, window: int, num_global: int = 1) -> Layout:
    """Longformer: a non-causal sliding window of `window` tokens each side plus
    `num_global` global block rows and columns."""
    keep = local(seq_len, block_size, window, causal=False).mask.copy()
    keep[:num_global, :] = keep[:, :num_global] = True
    return Layout(keep, block_size)
