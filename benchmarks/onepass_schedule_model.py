"""An event model of the one-pass attention backward's grid (cuda/attention/bwd_sm90_onepass.cu,
backward variant 4): how long its CTAs take, in units of one 64-query step, under a launch
order, an order of each CTA's steps and the dQ adds' fixed order, on the six-pattern
benchmark's layouts. No GPU: a CPU estimate of the schedule's cost (waits in the ordered
dQ chains, the tail), printed as the makespan over the ideal (every SM busy), and of its
locality: the fraction of the steps' tile touches that miss an LRU cache of `--l2-mb`.

    python benchmarks/onepass_schedule_model.py [--seq-len 8192] [--columns 32]
        [--sms 132] [--add 0.4] [--writers 2] [--groups 2,4,8] [--fixed 1] [--l2-mb 25]
        [--claims issue,release,writers] [--persistent-group 4] [--hidden 0.7]

Model: per (batch x kv head) column and key block n, one CTA of count(n) listed query
blocks x 2 steps of length 1 (plus a fixed cost of 1); CTAs start in linear launch order
on the first free SM; a dQ writer (one of `--writers`, taking the steps in turn) adds each
step's partial after the previous adder of that (query tile, step) in the tile's order (an
add takes `--add`; at most two partials wait: the kernel's two dQ buffers); with slots,
the key blocks whose list holds at least half the query tiles form a second order of their
own (kOnePassDqSlots). The model puts the writers' gain only where a writer's work per
step passes about one step (--add above 1); on the H100 the second writer made the causal
kernel 1.44x faster (RESULTS 2026-12-06 sixth session): the real chain per step (the
reduction's round trip to L2 and the semaphore's release included) is that long.
Locality: each step touches its 64-query tile twice (the Q and dO loads at its start, the
dq_accum add at its end; 64 KB at D 128), replayed in time order through the LRU.
`--groups` adds launch orders that take the columns that many at a time
(JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_GROUP), and the same with every column's long lists
launched before the groups; `--fixed` sets a CTA's cost beside its steps. `--claims` adds
the persistent grid (one CTA per SM taking the items in launch order, in groups of
`--persistent-group`), by where a CTA takes its next item.
"""

from __future__ import annotations

import argparse
import collections
import heapq

import numpy as np

import jax_blocksparse as jbs


def makespan(mask, columns, launch, steps_of, slot, sms, add, dq_buffers=2, fixed=1.0,
             writers=2, group=None, l2_tiles=400, first=(), claim=None, stages=2,
             hidden=0.7, spread=0):
    """(time until the last CTA ends, the fraction of the steps' tile touches that miss an
    LRU cache of `l2_tiles` tiles): `launch` the key blocks in launch order (every column
    the same; columns fastest, or with `group` the columns in groups of that many, each
    group's CTAs launched before the next group's), `steps_of(n)` a CTA's query tiles in
    walk order, `slot(n)` its dQ slot; the adds into a (slot, tile) follow the launch
    order; a CTA's `writers` dQ writer warps take its steps in turn (kDqWriters). A step
    touches its tile with its Q and dO loads at its start and its dq_accum add at its end
    (64 KB at D 128 per 64-query tile). `claim`: None, one CTA per item (an SM frees when
    its writers are done); else the persistent grid (JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_PERSISTENT):
    one CTA per SM, each taking the next item when its producer reaches the claim point
    ("issue": the last step's loads issued, `stages` steps before the consumers end; "release":
    the consumers done with the last step; "writers": its dQ writers done too), running it
    once its consumers are done with the current one (the dQ buffers and writers carry
    over), `hidden` of the fixed cost overlapped. `spread` > 0
    (JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_DQ_SLOTS=4): into a query block listing at least half
    the key blocks, the adders of slot 0 take `spread` - 1 slots in turn (the i-th after the
    (i - spread + 1)-th; the long lists keep slot 1: in one chain with the others, modelled,
    every other adder waited for those long CTAs' last steps, bigbird 1.65 -> 4.08)."""
    rows = mask.shape[0]
    position = {n: i for i, n in enumerate(launch)}
    adders = {m: sorted(np.flatnonzero(mask[m]), key=position.__getitem__) for m in range(rows)}
    spread_rows = {m for m in range(rows) if spread and 2 * mask[m].sum() >= mask.shape[1]}

    def previous_adder(m, n):  # the adder into query block m's chain just before n, or None
        same = [x for x in adders[m] if slot(x) == slot(n)]
        i = same.index(n)
        chains = spread - 1 if m in spread_rows and slot(n) == 0 else 1
        return same[i - chains] if i >= chains else None
    done = {}  # (column, tile, step, key block) -> when its add completed
    free = [0.0] * sms
    heapq.heapify(free)
    end = 0.0
    touches = []  # (time, (column, query block, step)): a step's loads and its add
    group = group or columns
    # `first`: key blocks launched for every column before the groups (their positions in
    # `launch` kept: each column's adds keep their order)
    order = [(c, n) for n in launch if n in first for c in range(columns)]
    order += [(c, n) for c0 in range(0, columns, group) for n in launch if n not in first
              for c in range(c0, min(c0 + group, columns))]
    state = [(0.0, [0.0] * writers, []) for _ in range(sms)]  # persistent: per SM
    claims = [(0.0, k) for k in range(sms)]
    for c, n in order:
        if claim is None:
            t = heapq.heappop(free) + fixed
            writer, pending = [t] * writers, []
        else:
            _, k = heapq.heappop(claims)
            t, writer, pending = state[k]
            t += fixed * (1.0 - hidden)
        step_ends = []
        for m in steps_of(n):
            for step in range(2):
                w = len(pending) % writers
                if len(pending) >= dq_buffers:  # both dQ buffers wait for the writer
                    t = max(t, pending[-dq_buffers])
                touches.append((t, (c, m, step)))
                t += 1.0
                before = previous_adder(m, n)
                previous = done[(c, m, step, before)] if before is not None else 0.0
                writer[w] = max(t, writer[w], previous) + add
                done[(c, m, step, n)] = writer[w]
                pending.append(writer[w])
                touches.append((writer[w], (c, m, step)))
                step_ends.append(t)
        finish = max([t] + writer)
        end = max(end, finish)
        if claim is None:
            heapq.heappush(free, finish)
        else:
            issued = step_ends[-1 - stages] if len(step_ends) > stages else t - len(step_ends)
            point = {"issue": issued, "release": t, "writers": finish}[claim]
            state[k] = (t, writer, pending[-dq_buffers:])
            heapq.heappush(claims, (point, k))
    return end, l2_misses(touches, l2_tiles)


def l2_misses(touches, capacity):
    """The fraction of `touches` (time, tile) that miss a least-recently-used cache of
    `capacity` tiles, in time order."""
    cache, misses = collections.OrderedDict(), 0
    for _, tile in sorted(touches):
        if tile in cache:
            cache.move_to_end(tile)
        else:
            misses += 1
            cache[tile] = None
            if len(cache) > capacity:
                cache.popitem(last=False)
    return misses / max(len(touches), 1)


def layouts(seq_len, bs=128):
    return {"causal": jbs.layouts.causal(seq_len, bs),
            "local": jbs.layouts.local(seq_len, bs, 1024),
            "strided": jbs.layouts.strided(seq_len, bs, 1024),
            "fixed": jbs.layouts.fixed(seq_len, bs, 512),
            "bigbird": jbs.layouts.bigbird(seq_len, bs, seed=1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--columns", type=int, default=32, help="batch x kv heads")
    parser.add_argument("--sms", type=int, default=132)
    parser.add_argument("--add", type=float, default=0.4,
                        help="a writer's work per step (rank, turn, reduction), in steps")
    parser.add_argument("--writers", type=int, default=2, help="dQ writer warps per CTA")
    parser.add_argument("--groups", type=lambda v: [int(g) for g in v.split(",")],
                        default=[], help="column group sizes to model, e.g. 1,4,8")
    parser.add_argument("--fixed", type=float, default=1.0,
                        help="a CTA's cost beside its steps, in steps (measured: 3-7, "
                        "RESULTS 2026-12-07 third session)")
    parser.add_argument("--claims", type=lambda v: [c for c in v.split(",") if c],
                        default=[], help="persistent grids to model by where an item is "
                        "claimed: issue (the kernel's), release, writers")
    parser.add_argument("--persistent-group", type=int, default=4,
                        help="the persistent rows' column groups (the kernel's default 4)")
    parser.add_argument("--spread", type=lambda v: [int(x) for x in v.split(",") if x],
                        default=[],
                        help="e.g. 4: persistent rows (claimed at release) whose long query "
                        "lines spread their adds over that many dQ slots (DQ_SLOTS)")
    parser.add_argument("--hidden", type=float, default=0.7,
                        help="the share of the fixed cost a persistent CTA overlaps")
    parser.add_argument("--l2-mb", type=int, default=25,
                        help="the L2 a tile can stay in (the H100's 50 MB is two halves)")
    args = parser.parse_args()
    print(f"makespan over the ideal / L2 misses of the tile touches (LRU of {args.l2_mb} MB "
          "in 64 KB tiles)")
    print("| order (launch / steps / dQ) | " + " | ".join(layouts(args.seq_len)) + " |")
    rows = {}
    for name, layout in layouts(args.seq_len).items():
        mask = np.asarray(layout.mask, bool).reshape(layout.mask.shape[-2:])
        blocks = mask.shape[1]
        count = mask.sum(0)
        descending = list(reversed(range(blocks)))
        longest = sorted(range(blocks), key=lambda n: (-count[n], n))  # the by-key `order`
        forward = lambda n: list(np.flatnonzero(mask[:, n]))
        backward = lambda n: forward(n)[::-1]
        one = lambda n: 0
        long_lists = lambda n: int(2 * count[n] >= mask.shape[0])
        ideal = mask.sum() * 2 * args.columns / args.sms
        for label, launch, steps, slot, group in (
                ("descending n, ascending steps", descending, forward, one, None),
                ("longest first, ascending steps", longest, forward, one, None),
                ("longest first, steps from the end", longest, backward, one, None),
                ("the same, long lists in a dQ slot of their own", longest, backward,
                 long_lists, None),
                *((f"the same, columns in groups of {g}", longest, backward, long_lists, g)
                  for g in args.groups),
                *((f"groups of {g}, the long lists of every column first", longest,
                   backward, long_lists, g) for g in args.groups),
                *((f"persistent in groups of {args.persistent_group}, claimed at {c}",
                   longest, backward, long_lists, args.persistent_group)
                  for c in args.claims),
                *((f"persistent in groups of {args.persistent_group}, claimed at release, "
                   f"{s} dQ slots spread", longest, backward, long_lists,
                   args.persistent_group) for s in args.spread)):
            first = ({n for n in range(blocks) if long_lists(n)}
                     if label.endswith("every column first") else ())
            time, misses = makespan(mask, args.columns, launch, steps, slot, args.sms,
                                    args.add, writers=args.writers, group=group,
                                    l2_tiles=args.l2_mb * 16, fixed=args.fixed, first=first,
                                    claim=("release" if "spread" in label else
                                           label.rsplit(" ", 1)[1]
                                           if label.startswith("persistent") else None),
                                    hidden=args.hidden,
                                    spread=int(label.split(", ")[-1].split()[0])
                                    if label.endswith("spread") else 0)
            rows.setdefault(label, []).append(f"{time / ideal:.3f} / {misses:.2f}")
    for label, values in rows.items():
        print(f"| {label} | " + " | ".join(values) + " |")


if __name__ == "__main__":
    main()
