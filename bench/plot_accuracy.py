#!/usr/bin/python3
"""Plots `xtrain-bench accuracy --curves` output: plot_accuracy.py CURVES.jsonl OUT.png

Left: training loss against step (a running mean; seed 0 of each arm). Middle: test accuracy after each
epoch, mean over the seeds of each arm with a band of one sample standard deviation (the arms are compared
where these curves flatten). Right: the gradient-fidelity ratio sum V_x / sum V_sgd against step for every
XConv run of seed 0 (log scale; 1 marks XConv noise equal to SGD's minibatch noise; each measurement is one
draw, so a running geometric mean is drawn through them).
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


def running_mean(values, window):
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def running_geomean(values, window):
    return [math.exp(v) for v in running_mean([math.log(max(v, 1e-12)) for v in values], window)]


def main(argv):
    if len(argv) != 3:
        sys.exit(__doc__)
    curves = load(argv[1])
    if not curves:
        sys.exit(f"no records in {argv[1]}")

    steps = defaultdict(list)
    epochs = defaultdict(lambda: defaultdict(list))  # config -> epoch -> accuracies over seeds
    for c in curves:
        if c["kind"] == "step":
            steps[c["run"]].append(c)
        elif c["kind"] == "epoch" and c.get("test_accuracy") is not None:
            epochs[c["config"]][c["epoch"]].append(100 * c["test_accuracy"])
    configs = list(dict.fromkeys(c["config"] for c in curves))
    colors = {config: plt.cm.tab10(i % 10) for i, config in enumerate(configs)}
    seed0 = [run for run in steps if steps[run][0]["seed"] == 0]

    fig, (ax_loss, ax_acc, ax_fid) = plt.subplots(1, 3, figsize=(21, 5.2))
    for run in seed0:
        rows = steps[run]
        config = rows[0]["config"]
        ax_loss.plot([r["step"] for r in rows], running_mean([r["loss"] for r in rows], 50), lw=1.2,
                     color=colors[config], label=config)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss (running mean of 50 steps)")
    ax_loss.set_title("Loss curves (seed 0)")
    ax_loss.set_yscale("log")
    ax_loss.grid(alpha=0.3, which="both")
    ax_loss.legend(fontsize=8)

    for config, by_epoch in epochs.items():
        xs = sorted(by_epoch)
        means = [sum(by_epoch[e]) / len(by_epoch[e]) for e in xs]
        stds = []
        for e, m in zip(xs, means):
            values = by_epoch[e]
            stds.append(math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0)
        seeds = max(len(v) for v in by_epoch.values())
        ax_acc.plot(xs, means, "o-", ms=3, color=colors[config], label=f"{config} ({seeds} seed(s))")
        ax_acc.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                            color=colors[config], alpha=0.15)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("test accuracy (%)")
    ax_acc.set_title("Test accuracy per epoch (mean ± std over seeds)")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(fontsize=8)

    plotted = False
    for run in seed0:
        rows = [r for r in steps[run] if r.get("fidelity_ratio") is not None]
        if not rows:
            continue
        plotted = True
        config = rows[0]["config"]
        x = [r["step"] for r in rows]
        y = [r["fidelity_ratio"] for r in rows]
        ax_fid.plot(x, y, ".", ms=2, color=colors[config], alpha=0.35)
        ax_fid.plot(x, running_geomean(y, 8), "-", lw=1.5, color=colors[config], label=config)
    ax_fid.axhline(1.0, color="k", lw=0.8, ls=":")
    if plotted:
        ax_fid.set_yscale("log")
        ax_fid.legend(fontsize=8)
    ax_fid.set_xlabel("step")
    ax_fid.set_ylabel("sum V_x / sum V_sgd (dots; line: running geometric mean of 8)")
    ax_fid.set_title("Gradient fidelity over training (1 = SGD's minibatch noise)")
    ax_fid.grid(alpha=0.3, which="both")

    fig.tight_layout()
    fig.savefig(argv[2], dpi=110)


if __name__ == "__main__":
    main(sys.argv)
