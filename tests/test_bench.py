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
