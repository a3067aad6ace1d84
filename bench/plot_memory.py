#!/usr/bin/env python3
"""Plots `xtrain-bench memory --json` output: measured and predicted peak against the budget, per net,
with the plan of lean layers alone (exact gradients) marked."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(jsonl, png):
    records = [json.loads(line) for line in open(jsonl) if line.strip()]
    nets = [n for n in dict.fromkeys(r["net"] for r in records) if any(r["net"] == n and r["kind"] == "sweep" for r in records)]
    fig, axes = plt.subplots(1, max(len(nets), 1), figsize=(4.2 * max(len(nets), 1), 4), squeeze=False)
    for ax, net in zip(axes[0], nets):
        rows = [r for r in records if r["net"] == net]
        exact = rows[0]["exact_peak_bytes"] / 2**20
        sweep = sorted((r for r in rows if r["kind"] == "sweep"), key=lambda r: r["budget_bytes"])
        refused = [r for r in rows if r["kind"] == "refused"]
        lean = [r for r in rows if r["kind"] == "lean"]
        b = [r["budget_bytes"] / 2**20 for r in sweep]
        ax.plot([0, exact * 1.05], [0, exact * 1.05], color="0.7", lw=1, label="budget")
        ax.plot(b, [r["measured_peak_bytes"] / 2**20 for r in sweep], "o-", label="measured peak")
        ax.plot(b, [r["predicted_peak_bytes"] / 2**20 for r in sweep], "x--", label="predicted peak")
        if refused:
            ax.plot([r["budget_bytes"] / 2**20 for r in refused], [0] * len(refused), "rv", label="refused (below floor)")
        if lean:
            ax.plot([r["budget_bytes"] / 2**20 for r in lean], [r["measured_peak_bytes"] / 2**20 for r in lean], "g*",
                    ms=10, label="lean layers alone (measured)")
        ax.axhline(exact, color="k", ls=":", lw=1, label="exact peak")
        ax.set_title(net, fontsize=9)
        ax.set_xlabel("budget (MiB)")
        ax.set_ylabel("peak (MiB)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
