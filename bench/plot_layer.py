#!/usr/bin/python3
"""Plots `xtrain-bench layer --json` results: plot_layer.py RESULTS.jsonl OUT.png."""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import matplotlib.ticker  # noqa: E402

TIME_GOAL = 0.9  # at B >= 64 and r <= C/4
TAP_COST_WEIGHT = 0.75  # kTapCostWeight in core/xconv/weight_gradient.h


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def in_goal_domain(record):
    return record["batch"] >= 64 and 4 * record["probes"] <= record["channels"]


def readable_log_ticks(axis):
    """Ticks at 1, 2 and 5 per decade in plain numbers, so short log ranges still get labels."""
    axis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def main(argv):
    if len(argv) != 3:
        sys.exit(__doc__)
    records = load(argv[1])
    if not records:
        sys.exit(f"no records in {argv[1]}")

    batches = sorted({r["batch"] for r in records})
    colors = {b: plt.cm.tab10(i % 10) for i, b in enumerate(batches)}
    fig, (ax_time, ax_bytes, ax_err, ax_route) = plt.subplots(1, 4, figsize=(22, 5.2))

    # Time ratio against r/C: one marker per route, colour by batch, hollow outside the goal's
    # domain; a black ring marks the route auto picked (its time is time_xconv_s).
    for key, marker, route in (("time_tap_s", "o", "tap"), ("time_reconstruct_s", "s", "reconstruct")):
        for b in batches:
            rows = [r for r in records if r["batch"] == b]
            for filled in (True, False):
                part = [r for r in rows if in_goal_domain(r) == filled]
                if not part:
                    continue
                ax_time.scatter([r["probes"] / r["channels"] for r in part],
                                [r[key] / r["time_exact_s"] for r in part], marker=marker, s=36,
                                facecolors=colors[b] if filled else "none", edgecolors=colors[b],
                                label=f"{route}, B={b}" if filled or not any(map(in_goal_domain, rows))
                                else None)
    chosen = [(r["probes"] / r["channels"], r["time_xconv_s"] / r["time_exact_s"]) for r in records]
    ax_time.scatter(*zip(*chosen), s=130, facecolors="none", edgecolors="black", linewidths=1.2,
                    label="auto's pick")
    ax_time.axhline(TIME_GOAL, color="red", linestyle="--", linewidth=1, label=f"goal {TIME_GOAL}")
    ax_time.axhline(1.0, color="gray", linewidth=0.8)
    ax_time.axvline(0.25, color="red", linestyle=":", linewidth=1, label="r = C/4")
    ax_time.set_xscale("log", base=2)
    ax_time.set_yscale("log")
    readable_log_ticks(ax_time.yaxis)
    ax_time.set_xlabel("r / C")
    ax_time.set_ylabel("forward+backward time / exact")
    ax_time.set_title("Time ratio (filled: B >= 64 and r <= C/4)")
    ax_time.legend(fontsize=7, ncol=2)

    # Bytes kept for backward: measured ratio against the expected (r+1)/S (r probes and the mean).
    for b in batches:
        rows = [r for r in records if r["batch"] == b]
        ax_bytes.scatter([(r["probes"] + 1) / r["spatial"] for r in rows], [r["bytes_ratio"] for r in rows],
                         color=colors[b], zorder=3, label=f"B={b}")
    ends = [(r["probes"] + 1) / r["spatial"] for r in records] + [r["bytes_ratio"] for r in records]
    lo, hi = min(ends) / 2, max(ends) * 2
    ax_bytes.plot([lo, hi], [lo, hi], color="gray", linewidth=0.8, label="bytes ratio = (r+1)/S")
    ax_bytes.set_xscale("log")
    ax_bytes.set_yscale("log")
    ax_bytes.set_xlabel("(r + 1) / S")
    ax_bytes.set_ylabel("bytes kept: XConv / exact")
    ax_bytes.set_title("Memory kept between forward and backward")
    ax_bytes.legend(fontsize=8)

    # Weight-gradient error against r, one colour per channel count (the error grows with C_in:
    # more input channels share each probe).
    groups = sorted({(r["dims"], r["channels"]) for r in records})
    for i, (dims, channels) in enumerate(groups):
        rows = [r for r in records if (r["dims"], r["channels"]) == (dims, channels)]
        ax_err.scatter([r["probes"] for r in rows], [r["grad_rel_err"] for r in rows],
                       color=plt.cm.tab10(i % 10), label=f"{dims}-D, C={channels}")
    ax_err.set_xscale("log", base=2)
    ax_err.set_yscale("log")
    readable_log_ticks(ax_err.yaxis)
    ax_err.set_xlabel("r (probes)")
    ax_err.set_ylabel("||dW_est - dW||_F / ||dW||_F")
    ax_err.set_title("Weight-gradient error, one seed (teacher-regression G)")
    ax_err.legend(fontsize=8)

    # The auto rule: measured tap/reconstruct time against the modelled cost ratio. Auto picks tap
    # left of the dashed line (modelled ratio < 1 / kTapCostWeight).
    model = [r["model_tap_rel"] / r["model_reconstruct_rel"] for r in records]
    measured = [r["time_tap_s"] / r["time_reconstruct_s"] for r in records]
    ax_route.scatter(model, measured, c=[colors[r["batch"]] for r in records])
    ax_route.axhline(1.0, color="gray", linewidth=0.8)
    ax_route.axvline(1 / TAP_COST_WEIGHT, color="red", linestyle="--", linewidth=1,
                     label=f"auto: tap left of {1 / TAP_COST_WEIGHT:.2f}")
    ax_route.set_xscale("log")
    ax_route.set_yscale("log")
    readable_log_ticks(ax_route.xaxis)
    readable_log_ticks(ax_route.yaxis)
    ax_route.set_xlabel("modelled cost: tap / reconstruct")
    ax_route.set_ylabel("measured time: tap / reconstruct")
    ax_route.set_title("Route rule (below 1: tap faster)")
    ax_route.legend(fontsize=8)

    threads = sorted({r["threads"] for r in records})
    fig.suptitle(f"xtrain-bench layer: {len(records)} cases, threads {threads}")
    fig.tight_layout()
    fig.savefig(argv[2], dpi=110)
    print(f"wrote {argv[2]}")


if __name__ == "__main__":
    main(sys.argv)
