"""The LM example's training throughput on one GPU and on several: `--mesh 2x1` (data
parallel; the sparse MLPs through `parallel_dense` over a model axis of size 1) and
`--mesh 1x2` (the sparse MLPs split over 2 GPUs, the rest computed on both), the same
global batch each time. Prints tokens/s, the speedup over one GPU and the first step's
loss against one GPU's.

    python benchmarks/multi_gpu.py        # S 4096, d_model 1024, 4 layers, bf16, batch 8
    python benchmarks/multi_gpu.py --meshes 2x1,1x2,4x2 --batch 16
(any flag of examples/sparse_transformer_lm.py sets the model; `bash benchmarks/device.sh
multi_gpu` runs the default.)"""

import os
import sys
import time

import jax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "examples"))
import sparse_transformer_lm as lm  # noqa: E402


def throughput(c, mesh, data, starts, steps):
    """(tokens/s, first step's loss) of `steps` timed training steps after two warm-up
    steps (compilation), batches placed on the devices beforehand."""
    model = lm.build_model(c, False, mesh)
    optimizer = lm.make_optimizer(c)
    train_step, _ = lm.make_functions(model, optimizer)
    state = lm.place_state(lm.init_state(model, optimizer, c), mesh)
    stream = lm.batches(data, starts, c.batch, c.seq_len, c.seed)
    placed = [jax.device_put(next(stream)) if mesh is None else lm.place(next(stream), mesh)
              for _ in range(steps + 2)]
    state, first = train_step(state, placed[0])
    state, loss = train_step(state, placed[1])
    loss.block_until_ready()
    start = time.perf_counter()
    for batch in placed[2:]:
        state, loss = train_step(state, batch)
    loss.block_until_ready()
    seconds = (time.perf_counter() - start) / steps
    return c.batch * c.seq_len / seconds, float(first)


def main():
    p = lm.build_parser()
    p.set_defaults(seq_len=4096, block_size=64, stride=512, d_model=1024, heads=8, layers=4,
                   batch=8, dtype="bfloat16")
    p.add_argument("--meshes", default="2x1,1x2", help="DxT meshes to time against one GPU")
    p.add_argument("--timed-steps", type=int, default=10)
    c = p.parse_args()
    data, starts = lm.load_corpus(c.data, c.data_limit)
    print(f"{jax.device_count()} x {jax.devices()[0].device_kind}; S {c.seq_len}, d_model "
          f"{c.d_model}, {c.layers} layers, {c.heads} heads, batch {c.batch}, {c.dtype}, "
          f"attention {c.attention} (block {c.block_size}, stride {c.stride}), MLP density "
          f"{c.mlp_density}")
    print(f"{'mesh':>8} {'devices':>7} {'tokens/s':>12} {'speedup':>8} {'first loss':>11} "
          f"{'vs one':>9}")
    base, base_loss = throughput(c, None, data, starts, c.timed_steps)
    print(f"{'none':>8} {1:>7} {base:>12,.0f} {1:>8.2f} {base_loss:>11.6f} {0:>9.1e}")
    for spec in c.meshes.split(","):
        mesh = lm.make_mesh(spec)
        rate, loss = throughput(c, mesh, data, starts, c.timed_steps)
        print(f"{spec:>8} {mesh.size:>7} {rate:>12,.0f} {rate / base:>8.2f} {loss:>11.6f} "
              f"{abs(loss - base_loss):>9.1e}", flush=True)


if __name__ == "__main__":
    main()
