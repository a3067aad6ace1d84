#!/usr/bin/env python3
"""Draws the Grafana dashboard's panels (deploy/grafana/xtrain-dashboard.json) from real scraped data.

The data comes from the Prometheus test run with XTRAIN_METRICS_DUMP_DIR set: each panel's targets with
their range-query results (tests/server/prometheus_test.cc writes dashboard-data.json there):

    XTRAIN_METRICS_DUMP_DIR=/tmp/xtrain-dump build/tests/server/xtrain_prometheus_tests
    /usr/bin/python3 scripts/plot_dashboard.py /tmp/xtrain-dump/dashboard-data.json docs/dashboard.png
"""

import json
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SCALE = {"bytes": (1 / 2**20, "MiB"), "s": (1e3, "ms"), "percentunit": (100, "%")}


def legend(fmt, metric):
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt or "")
    return text or json.dumps(metric)


def main():
    source, target = sys.argv[1], sys.argv[2]
    dashboard = json.load(open(source))
    panels = [p for p in dashboard["panels"] if p.get("type") != "row"]
    columns = 4
    rows = (len(panels) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 2.9 * rows), squeeze=False)
    t0 = None
    for panel in panels:
        for target_ in panel.get("targets", []):
            for series in target_.get("result", {}).get("result", []):
                if series["values"]:
                    first = float(series["values"][0][0])
                    t0 = first if t0 is None else min(t0, first)
    for ax, panel in zip(axes.flat, panels):
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
        factor, label = SCALE.get(unit, (1, ""))
        drawn = 0
        for target_ in panel.get("targets", []):
            for series in target_.get("result", {}).get("result", []):
                xs = [float(t) - (t0 or 0) for t, _ in series["values"]]
                ys = [float(v) * factor for _, v in series["values"]]
                if all(y != y for y in ys):
                    continue  # NaN throughout (a quantile of no calls)
                name = legend(target_.get("legendFormat"), series["metric"])
                ax.plot(xs, ys, label=name[:40], linewidth=1.2)
                drawn += 1
        ax.set_title(panel["title"], fontsize=9)
        ax.tick_params(labelsize=7)
        if label:
            ax.set_ylabel(label, fontsize=7)
        if drawn:
            ax.legend(fontsize=6, loc="best")
        else:
            ax.text(0.5, 0.5, "no data in this run", ha="center", va="center", transform=ax.transAxes, fontsize=8)
        ax.set_xlabel("seconds", fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("xtrain dashboard panels from a real scrape (Prometheus test, two jobs one after the other)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(target, dpi=80)


if __name__ == "__main__":
    main()
