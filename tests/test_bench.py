"""The benchmark command's pieces run end to end on tiny grids and write a chart."""

import json
import os
import subprocess
import sys

import jax
import pytest

import jax_blocksparse as jbs
from jax_blocksparse.bench import __main__ as main_module
from jax_blocksparse.bench import attention, matmul
from jax_blocksparse.bench.chart import write_chart


def test_benchmarks_on_tiny_grids(tmp_path, monkeypatch):
    monkeypatch.setitem(matmul.SHAPES, "tiny", (64, 128, 128))
    rows = {"matmul": matmul.run(["float32"], [32], [0.25], ["tiny"], reps=1),
            "attention": attention.run([256], [64], ["local", "bigbird"], 1, 2, reps=1,
                                       block_size=64)}
    assert {r["op"] for r in rows["matmul"]} == {"fwd", "dx", "dW"}
    assert all(r["tflops"] > 0 for r in rows["matmul"] + rows["attention"])
    write_chart(tmp_path / "chart.png", rows)
    json.dumps(rows)


def test_pair_counts():
    allowed, executed = attention.pair_counts(jbs.layouts.causal(256, 64), True, 256)
    assert allowed == 256 * 257 // 2 and executed == 10 * 64 * 64


def bench_command(*args, cwd=None, timeout=120):
    """The completed `python -m jax_blocksparse.bench args`, with this jax_blocksparse."""
    root = os.path.dirname(os.path.dirname(jbs.__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    return subprocess.run([sys.executable, "-m", "jax_blocksparse.bench", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)


def test_command_line_help():
    out = bench_command("--help")
    assert out.returncode == 0 and "--full" in out.stdout
    assert out.stdout.startswith("usage: python -m jax_blocksparse.bench ")
    # the whole description, not only its first line
    text = " ".join(out.stdout.split())
    assert " ".join(main_module.__doc__.split()) in text


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="the quick GPU grid is bigger")
def test_quick_run_without_a_gpu_takes_under_a_minute(tmp_path):
    out = bench_command("--chart", str(tmp_path / "chart.png"), "--json",
                        str(tmp_path / "rows.json"), cwd=tmp_path, timeout=60)  # or it raises
    assert out.returncode == 0, out.stderr[-3000:]
    assert "no GPU: quick benchmark at small sizes" in out.stdout
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert {r["op"] for r in rows["matmul"]} == {"fwd", "dx", "dW"}
    assert {r["layout"] for r in rows["attention"]} >= {"local", "causal"}


def test_chart_draws_dense_rates_as_measured_and_density_labels_apart(tmp_path):
    """The dense baseline sits at its rate (0.03, not rounded to 0) and the density
    labels of both panels never overlap (close densities, within a decade)."""
    matmul_rows = [dict(shape="1024", dtype="float32", bs=bs, op="fwd", density=density,
                        tflops=0.01 * bs / 32, dense_tflops=0.03)
                   for bs, density in ((32, 0.0997), (64, 0.1016), (64, 0.12), (64, 0.5))]
    attention_rows = [dict(layout=kind, seq_len=2048, head_dim=64, op="fwd", density=density,
                           tflops=0.02) for kind, density in
                      (("local", 0.391), ("causal", 0.5), ("bigbird", 0.42),
                       ("xla_masked", 0.391))]
    fig = write_chart(tmp_path / "chart.png", {"matmul": matmul_rows,
                                              "attention": attention_rows})
    baselines = [line.get_ydata()[0] for line in fig.axes[0].lines if line.get_linestyle() == "--"]
    assert baselines == [0.03]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        labels = [t for t in ax.get_xticklabels(minor=False) + ax.get_xticklabels(minor=True)
                  if t.get_visible() and t.get_text()]
        boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda b: b.x0)
        assert boxes and all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:])), \
            [t.get_text() for t in labels]


def test_attention_table_without_cudnn_compares_with_xla(capsys):
    """Without a GPU: no cuDNN error line, no NaN; the speedups are over the dense XLA
    attention measured in the same run."""
    if jax.default_backend() == "gpu":
        pytest.skip("cuDNN is the baseline on a GPU")
    rows = attention.run([256], [64], ["local"], 1, 1, reps=1, block_size=64,
                         dtype="float32")
    out = capsys.readouterr().out
    assert "Error" not in out and "nan" not in out
    xla = {r["op"]: r["ms"] for r in rows if r["layout"] == "xla_masked"}
    ours = [r for r in rows if r["layout"] == "local"]
    assert set(xla) == {"fwd", "fwd+bwd"} and len(ours) == 2
    for r in ours:
        assert r["baseline"] == "xla" and r["speedup"] == xla[r["op"]] / r["ms"]
