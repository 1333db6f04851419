"""The benchmark chart: useful TFLOP/s against density, next to the dense baselines."""


def write_chart(path, results):
    """Matmul (left: one line per block size and pass, dense XLA dashed) and attention
    (right: one point per layout and pass, cuDNN dense/causal dashed)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (pip install matplotlib)")
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    rows = results.get("matmul", [])
    for key in sorted({(r["shape"], r["dtype"], r["bs"], r["op"]) for r in rows}):
        pts = sorted((r["density"], r["tflops"]) for r in rows
                     if (r["shape"], r["dtype"], r["bs"], r["op"]) == key)
        ax.plot(*zip(*pts), "o-", label=f"bs{key[2]} {key[3]} {key[1]} {key[0]}")
    for dense in sorted({(r["dtype"], r["op"], round(r["dense_tflops"])) for r in rows}):
        ax.axhline(dense[2], ls="--", lw=0.8, color="gray")
    ax.set(xscale="log", xlabel="density", ylabel="useful TFLOP/s",
           title="block-sparse matmul (dashed: dense XLA)")
    if rows:
        ax.legend(fontsize=6)
    ax = axes[1]
    rows = results.get("attention", [])
    for r in rows:
        if r["layout"] == "xla_masked":
            continue
        if r["layout"].startswith("cudnn"):
            ax.axhline(r["tflops"], ls="--", lw=0.8, color="gray")
        else:
            ax.scatter(r["density"], r["tflops"], label=f"{r['layout']} S{r['seq_len']} "
                       f"D{r['head_dim']} {r['op']}")
    ax.set(xscale="log", xlabel="density of allowed pairs", ylabel="useful TFLOP/s",
           title="block-sparse attention (dashed: cuDNN)")
    if rows:
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"chart: {path}")
