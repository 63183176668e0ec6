"""Draw ``results.png`` from ``results.json`` (run with the peers' interpreter, which has
matplotlib): one panel per figure, bars per engine grouped by store, whiskers
from the minimum to the maximum of the repetitions.

    bench/.peers-venv/bin/python bench/chart.py docs/benchmarks/results.json out.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, NullFormatter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.report import ENGINES, STORE_LABELS

PANELS = [
    ("W1", "drain_rps", "W1 draining a backlog (runs/s, higher is better)", True),
    ("W1", "steady_rps", "W1 steady enqueue (runs/s, higher is better)", True),
    ("W2", "step_overhead_ms", "W2 overhead per step (ms, lower is better)", False),
    ("W3", "p50_ms", "W3 event-resume p50 (ms, lower is better)", False),
    ("W4", "dup_ms", "W4 duplicate start (ms, lower is better)", False),
    ("W5", "recovery_s", "W5 kill -9 to all resumed (s, lower is better)", False),
    ("W6", "p50_ms", "W6 start-to-first-step p50 (ms, lower is better)", False),
    ("W6", "p99_ms", "W6 start-to-first-step p99 (ms, lower is better)", False),
]
COLOURS = {"stackshift": "#2563eb", "dbos": "#f59e0b", "huey": "#10b981",
           "procrastinate": "#a855f7"}


def draw(data: dict[str, Any], out: Path) -> None:
    cells = data["cells"]
    stores = [s for s in STORE_LABELS if s in data["run"]["stores"]]
    engines = [e for e in ENGINES if e in data["run"]["engines"]]
    panels = [p for p in PANELS if any(k.endswith("/" + p[0]) for k in cells)]
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(13, 3.4 * rows), squeeze=False)
    for ax, (workload, key, title, _higher) in zip(axes.flat, panels, strict=False):
        shown: list[float] = []
        # Each store's bars stand centred on its label, as many as the engines
        # that measured it (a peer without the workload leaves no gap).
        measured = {store: [e for e in engines if isinstance(
            cells.get(f"{e}/{store}/{workload}", {}).get(key), dict)] for store in stores}
        width = min(0.3, 0.8 / max(1, *map(len, measured.values())))
        for engine in engines:
            xs, heights, lows, highs = [], [], [], []
            for j, store in enumerate(stores):
                if engine not in measured[store]:
                    continue
                value = cells[f"{engine}/{store}/{workload}"][key]
                k, n = measured[store].index(engine), len(measured[store])
                xs.append(j + (k - (n - 1) / 2) * width)
                heights.append(value["median"])
                lows.append(value["median"] - value["min"])
                highs.append(value["max"] - value["median"])
            if xs:
                ax.bar(xs, heights, width, yerr=[lows, highs], capsize=3,
                       color=COLOURS[engine], label=ENGINES[engine])
                shown += heights
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(len(stores)))
        ax.set_xlim(-0.5, len(stores) - 0.5)
        ax.set_xticklabels([STORE_LABELS[s] for s in stores], fontsize=9)
        positive = [v for v in shown if v > 0]
        if positive and max(positive) / min(positive) > 30:  # else a linear axis reads better
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(engines), frameon=False)
    info = data["run"]
    later = sorted(w for u in info.get("updates", []) for w in u["workloads"])
    again = (f"\n{' and '.join(later)}: measured again in a later run (see results.md)"
             if later else "")
    fig.suptitle(f"Medians of {info['repetitions']} repetitions (whiskers: min-max), same run;"
                 " log scale where values span more than 30 times;"
                 f" {info['machine']}{again}", fontsize=9, y=0.005, va="bottom")
    fig.tight_layout(rect=(0, 0.02, 1, 0.96))
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    draw(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
