"""The benchmark chart: useful TFLOP/s against density, next to the dense baselines."""


def _density_axis(ax, densities, label):
    """A log density axis labelled only at the measured densities (two significant
    digits), a label dropped when it is within a tenth of the axis of the previous one,
    and no minor-tick labels: labels that never overlap."""
    import math

    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    ax.set(xscale="log", xlabel=label)
    values = sorted({float(f"{d:.2g}") for d in densities if d > 0})
    if not values:
        return
    low, high = (math.log10(x) for x in ax.get_xlim())
    ticks = []
    for value in values:
        if not ticks or math.log10(value / ticks[-1]) > 0.1 * (high - low):
            ticks.append(value)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.2g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def write_chart(path, results):
    """Matmul (left: one line per block size and pass, dense XLA dashed, at its measured
    rate) and attention (right: one point per layout and pass, cuDNN dense/causal dashed,
    dense XLA attention with the layout as a mask dotted). Returns the matplotlib figure
    (None without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (pip install matplotlib)")
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    rows = results.get("matmul", [])
    for key in sorted({(r["shape"], r["dtype"], r["bs"], r["op"]) for r in rows}):
        pts = sorted((r["density"], r["tflops"]) for r in rows
                     if (r["shape"], r["dtype"], r["bs"], r["op"]) == key)
        ax.plot(*zip(*pts), "o-", label=f"bs{key[2]} {key[3]} {key[1]} {key[0]}")
    for dense in sorted({r["dense_tflops"] for r in rows}):
        ax.axhline(dense, ls="--", lw=0.8, color="gray")
    ax.set(ylabel="useful TFLOP/s", title="block-sparse matmul (dashed: dense XLA)")
    _density_axis(ax, [r["density"] for r in rows], "density")
    if rows:
        ax.legend(fontsize=6)
    ax = axes[1]
    rows = results.get("attention", [])
    for r in rows:
        if r["layout"] == "xla_masked":
            ax.axhline(r["tflops"], ls=":", lw=0.8, color="gray")
        elif r["layout"].startswith("cudnn"):
            ax.axhline(r["tflops"], ls="--", lw=0.8, color="gray")
        else:
            ax.scatter(r["density"], r["tflops"], label=f"{r['layout']} S{r['seq_len']} "
                       f"D{r['head_dim']} {r['op']}")
    ax.set(ylabel="useful TFLOP/s",
           title="block-sparse attention (dashed: cuDNN, dotted: XLA)")
    _density_axis(ax, [r["density"] for r in rows if not r["layout"].startswith("cudnn")],
                  "density of allowed pairs")
    if rows:
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"chart: {path}")
    return fig
