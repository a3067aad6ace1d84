#!/usr/bin/python3
"""Plots `xtrain-bench accuracy --curves` output: plot_accuracy.py CURVES.jsonl OUT.png [RESULTS.jsonl].

Left: training loss against step (a running mean; seed 0 of each configuration). Middle: the
gradient-fidelity ratio sum V_x / sum V_sgd against step for every XConv run (log scale; 1 marks
XConv noise equal to SGD's minibatch noise; each measurement is one draw, so a running geometric
mean is drawn through them). Right, with RESULTS.jsonl: test accuracy against r
for the fixed-probe grid, exact runs as horizontal lines.
"""

import json
import math
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def running_geomean(values, window):
    return [math.exp(v) for v in running_mean([math.log(max(v, 1e-12)) for v in values], window)]


def running_mean(values, window):
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def main(argv):
    if len(argv) not in (3, 4):
        sys.exit(__doc__)
    curves = load(argv[1])
    if not curves:
        sys.exit(f"no records in {argv[1]}")
    results = load(argv[3]) if len(argv) == 4 else []

    steps = defaultdict(list)
    for c in curves:
        if c["kind"] == "step":
            steps[c["run"]].append(c)
    runs = [r for r in steps if r.endswith("-s0")]
    colors = {r: plt.cm.tab20(i % 20) for i, r in enumerate(runs)}

    panels = 3 if results else 2
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 5.2))
    ax_loss, ax_fid = axes[0], axes[1]

    for run in runs:
        rows = steps[run]
        x = [r["step"] for r in rows]
        y = running_mean([r["loss"] for r in rows], 20)
        style = "-" if rows[0]["config"] == "exact" else "--"
        ax_loss.plot(x, y, style, color=colors[run], lw=1.3, label=f'{rows[0]["config"]}, B={rows[0]["batch"]}')
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss (running mean of 20 steps)")
    ax_loss.set_title("Loss curves (seed 0)")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(fontsize=7, ncol=2)

    plotted = False
    for run in runs:
        rows = [r for r in steps[run] if r.get("fidelity_ratio") is not None]
        if not rows:
            continue
        plotted = True
        x = [r["step"] for r in rows]
        y = [r["fidelity_ratio"] for r in rows]
        ax_fid.plot(x, y, ".", ms=2, color=colors[run], alpha=0.35)
        ax_fid.plot(x, running_geomean(y, 8), "-", lw=1.5, color=colors[run],
                    label=f'{rows[0]["config"]}, B={rows[0]["batch"]}')
    ax_fid.axhline(1.0, color="k", lw=0.8, ls=":")
    if plotted:
        ax_fid.set_yscale("log")
        ax_fid.legend(fontsize=7)
    ax_fid.set_xlabel("step")
    ax_fid.set_ylabel("sum V_x / sum V_sgd (dots; line: running geometric mean of 8)")
    ax_fid.set_title("Gradient fidelity over training (1 = SGD's minibatch noise)")
    ax_fid.grid(alpha=0.3, which="both")

    if results:
        ax_acc = axes[2]
        grid = [r for r in results if r["group"] == "fixed" and r.get("test_accuracy") is not None]
        batches = sorted({r["batch"] for r in grid})
        for i, b in enumerate(batches):
            rows = sorted((r for r in grid if r["batch"] == b), key=lambda r: r["probes"])
            color = plt.cm.tab10(i)
            ax_acc.plot([r["probes"] for r in rows], [100 * r["test_accuracy"] for r in rows], "o-", color=color,
                        label=f"XConv, B={b}")
            exact = [100 * r["test_accuracy"] for r in results
                     if r["group"] == "exact" and r["batch"] == b and r.get("test_accuracy") is not None]
            if exact:
                ax_acc.axhline(sum(exact) / len(exact), color=color, ls=":", label=f"exact, B={b}")
        ax_acc.set_xscale("log", base=2)
        ax_acc.set_xlabel("probes r (every conv)")
        ax_acc.set_ylabel("test accuracy (%)")
        ax_acc.set_title("Fashion-MNIST test accuracy")
        ax_acc.grid(alpha=0.3)
        ax_acc.legend(fontsize=8)

    fig.tight_layout()
    fig.savefig(argv[2], dpi=110)


if __name__ == "__main__":
    main(sys.argv)
