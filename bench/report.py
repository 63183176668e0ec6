"""Turning per-repetition results into medians, ratios, targets, markdown and JSON.

Pure functions over plain data, so that the harness's arithmetic can be tested
without running a benchmark.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

ENGINES = {
    "stackshift": "StackShift",
    "dbos": "DBOS",
    "huey": "Huey",
    "procrastinate": "Procrastinate",
}
STORE_LABELS = {
    "sqlite-full": "SQLite FULL",
    "sqlite-normal": "SQLite NORMAL",
    "postgres": "PostgreSQL",
}


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher_is_better: bool
    digits: int = 1


WORKLOADS: dict[str, tuple[str, list[Metric]]] = {
    "W1": ("No-op job throughput", [
        Metric("drain_rps", "draining the backlog (runs/s)", True, 0),
        Metric("steady_rps", "steady enqueue (runs/s)", True, 0),
    ]),
    "W2": ("Overhead per step of a 10-step job", [
        Metric("step_overhead_ms", "per step (ms)", False, 3),
    ]),
    "W3": ("Event-resume latency, 1,000 runs waiting", [
        Metric("p50_ms", "p50 (ms)", False, 1),
        Metric("p99_ms", "p99 (ms)", False, 1),
    ]),
    "W4": ("Duplicate start, same idempotency key", [
        Metric("dup_ms", "per duplicate (ms)", False, 3),
        Metric("extra_runs", "extra runs", False, 0),
    ]),
    "W5": ("Recovery after kill -9 of a worker holding 100 runs", [
        Metric("recovery_s", "kill to all resumed (s)", False, 2),
    ]),
    "W6": ("Start-to-first-step latency at 100 runs/s across processes", [
        Metric("p50_ms", "p50 (ms)", False, 1),
        Metric("p99_ms", "p99 (ms)", False, 1),
    ]),
    "MEM": ("Worker resident memory over many runs", [
        Metric("rss_warm_mb", "RSS after 10% (MiB)", False, 1),
        Metric("rss_end_mb", "RSS at end (MiB)", False, 1),
        Metric("growth_pct", "growth (%)", False, 1),
    ]),
}

#: What each engine can do; anything else is "n/a" with the note below.
SUPPORT: dict[str, dict[str, tuple[str, ...]]] = {
    "stackshift": {w: ("sqlite-full", "sqlite-normal", "postgres")
                   for w in ("W1", "W2", "W3", "W4", "W5", "W6", "MEM")},
    "dbos": {w: ("sqlite-full", "sqlite-normal", "postgres")
             for w in ("W1", "W2", "W3", "W4", "W5", "W6")},
    "huey": {w: ("sqlite-full", "sqlite-normal") for w in ("W1", "W6")},
    "procrastinate": {w: ("postgres",) for w in ("W1", "W6")},
}

NOT_APPLICABLE: dict[tuple[str, str], str] = {
    ("huey", "W2"): "Huey has no durable steps.",
    ("huey", "W3"): "Huey has no durable waits for events.",
    ("huey", "W4"): "Huey has no idempotency keys for enqueues.",
    ("huey", "W5"): "Huey deletes a task from the queue when a consumer takes it; a killed"
                    " consumer's tasks are lost, nothing resumes them.",
    ("procrastinate", "W2"): "Procrastinate has no durable steps.",
    ("procrastinate", "W3"): "Procrastinate has no durable waits for events.",
    ("procrastinate", "W4"): "Procrastinate's queueing_lock refuses (raises on) a second job"
                             " only while the first is queued; there is no key that returns"
                             " the existing job.",
    ("procrastinate", "W5"): "Procrastinate marks stalled jobs but retries them only from code"
                             " the application schedules itself; nothing resumes them on its"
                             " own.",
    ("dbos", "MEM"): "The memory check is a StackShift target; peers are not measured.",
    ("huey", "MEM"): "The memory check is a StackShift target; peers are not measured.",
    ("procrastinate", "MEM"): "The memory check is a StackShift target; peers are not"
                              " measured.",
}


@dataclass(frozen=True)
class Target:
    workload: str
    metric: str
    stores: tuple[str, ...]
    text: str
    limit: float | None = None  # absolute bound (<= for lower-better, >= for higher-better)
    times_dbos: float | None = None  # at least this many times better than DBOS
    limit_key: str | None = None  # bound read from the result (W5: lease + 1 s)


TARGETS = [
    Target("W1", "drain_rps", ("sqlite-full", "sqlite-normal"), ">= 3,000 runs/s", 3000),
    Target("W1", "steady_rps", ("sqlite-full", "sqlite-normal"), ">= 3,000 runs/s", 3000),
    Target("W1", "drain_rps", ("postgres",), ">= 2,000 runs/s", 2000),
    Target("W1", "steady_rps", ("postgres",), ">= 2,000 runs/s", 2000),
    Target("W1", "drain_rps", ("sqlite-full", "sqlite-normal", "postgres"), ">= 10x DBOS",
           times_dbos=10),
    Target("W1", "steady_rps", ("sqlite-full", "sqlite-normal", "postgres"), ">= 10x DBOS",
           times_dbos=10),
    Target("W2", "step_overhead_ms", ("sqlite-full",), "<= 0.3 ms", 0.3),
    Target("W2", "step_overhead_ms", ("postgres",), "<= 0.6 ms", 0.6),
    Target("W3", "p50_ms", ("sqlite-full", "sqlite-normal", "postgres"), "<= 5 ms", 5),
    Target("W3", "p99_ms", ("sqlite-full", "sqlite-normal", "postgres"), "<= 50 ms", 50),
    Target("W4", "dup_ms", ("sqlite-full", "sqlite-normal", "postgres"), "<= 0.3 ms", 0.3),
    Target("W4", "extra_runs", ("sqlite-full", "sqlite-normal", "postgres"), "0 extra runs", 0),
    Target("W5", "recovery_s", ("sqlite-full", "sqlite-normal", "postgres"),
           "<= lease + 1 s", limit_key="budget_s"),
    Target("W6", "p50_ms", ("sqlite-full", "sqlite-normal", "postgres"), "<= 10 ms", 10),
    Target("W6", "p99_ms", ("sqlite-full", "sqlite-normal", "postgres"), "<= 50 ms", 50),
    Target("MEM", "growth_pct", ("sqlite-full", "sqlite-normal", "postgres"),
           "flat within 10%", 10),
]


def metric(workload: str, key: str) -> Metric:
    return next(m for m in WORKLOADS[workload][1] if m.key == key)


# -- aggregation ------------------------------------------------------------------------


def summarise(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """Median, min and max of every numeric field over the repetitions that succeeded."""
    good = [r for r in reps if "error" not in r]
    out: dict[str, Any] = {"repetitions": len(good), "errors": [r["error"] for r in reps
                                                             if "error" in r]}
    keys = sorted({k for r in good for k, v in r.items()
                   if isinstance(v, int | float) and not isinstance(v, bool)})
    for key in keys:
        values = [float(r[key]) for r in good if key in r]
        out[key] = {"median": statistics.median(values), "min": min(values),
                    "max": max(values), "values": values}
    for r in good:  # settings and notes: the same in every repetition
        for k, v in r.items():
            if isinstance(v, dict | str) and k not in out:
                out[k] = v
    return out


def median(cell: dict[str, Any] | None, key: str) -> float | None:
    if not cell or key not in cell or not isinstance(cell[key], dict):
        return None
    return float(cell[key]["median"])


def advantage(ours: float | None, peer: float | None, higher_is_better: bool) -> float | None:
    """How many times better StackShift is than the peer (> 1: StackShift is better)."""
    if ours is None or peer is None:
        return None
    if higher_is_better:
        return ours / peer if peer > 0 else None
    return peer / ours if ours > 0 else None


def check_targets(cells: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every target against StackShift's medians; ``cells`` is keyed ``engine/store/W``."""
    rows = []
    for t in TARGETS:
        m = metric(t.workload, t.metric)
        for store in t.stores:
            ours = cells.get(f"stackshift/{store}/{t.workload}")
            value = median(ours, t.metric)
            if value is None:
                continue
            row: dict[str, Any] = {"workload": t.workload, "metric": t.metric, "store": store,
                                   "target": t.text, "value": value}
            if t.times_dbos is not None:
                dbos = median(cells.get(f"dbos/{store}/{t.workload}"), t.metric)
                ratio = advantage(value, dbos, m.higher_is_better)
                if ratio is None:
                    continue
                row["ratio"] = ratio
                row["met"] = ratio >= t.times_dbos
            else:
                limit = t.limit
                if t.limit_key is not None:
                    limit = median(ours, t.limit_key)
                assert limit is not None
                row["limit"] = limit
                row["met"] = value >= limit if m.higher_is_better else value <= limit
            rows.append(row)
    return rows


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with the workloads that ``update`` measured again taken from ``update``.

    Only whole workloads are taken: every engine and store that ``base`` has for
    a workload must be in ``update`` too, so that a ratio never compares figures
    from two runs. The other workloads keep their figures. Targets are checked
    again, and the later run is recorded in ``run["updates"]`` (the markdown
    names it).
    """
    if update["run"].get("quick") or update["run"].get("sizes") != base["run"].get("sizes"):
        raise ValueError("the update was measured with other sizes (--quick?)")
    workloads = [w for w in update["run"]["workloads"] if w in base["run"]["workloads"]]
    for workload in workloads:
        had = {k for k in base["cells"] if k.endswith(f"/{workload}")}
        missing = sorted(had - set(update["cells"]))
        if missing:
            raise ValueError(f"{workload} was not measured again for {', '.join(missing)}:"
                             " ratios would compare two runs")
    merged = {**base, "run": dict(base["run"]), "cells": dict(base["cells"]),
              "raw": dict(base.get("raw", {}))}
    for key, cell in update["cells"].items():
        if key.rsplit("/", 1)[1] in workloads:
            merged["cells"][key] = cell
            if key in update.get("raw", {}):
                merged["raw"][key] = update["raw"][key]
    info = update["run"]
    earlier = [{**u, "workloads": [w for w in u["workloads"] if w not in workloads]}
               for u in base["run"].get("updates", [])]  # superseded workloads leave
    merged["run"]["updates"] = [*[u for u in earlier if u["workloads"]], {
        "workloads": workloads,
        **{k: info[k] for k in ("finished_at", "command", "commit", "load_before",
                                "load_after", "load_max", "load_mean", "repetitions",
                                "engines", "stores") if k in info},
    }]
    merged["targets"] = check_targets(merged["cells"])
    return merged


# -- markdown ---------------------------------------------------------------------------


def _probe_line(probe: list[dict[str, float]]) -> str:
    before, after = probe
    return ("Machine speed (`bench.cli.probe`, before and after the run): a pure-Python loop"
            f" {before['python_loop_ms']:,.0f} and {after['python_loop_ms']:,.0f} ms, a"
            f" hand-off between two threads and back {before['thread_round_trip_us']:,.0f} and"
            f" {after['thread_round_trip_us']:,.0f} µs, a 4 KiB write flushed to disk"
            f" {before['fsync_us']:,.0f} and {after['fsync_us']:,.0f} µs. Compare these"
            " between runs before comparing their absolute figures.")


def fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "\u2013"
    return f"{value:,.{digits}f}"


def spread(cell: dict[str, Any], m: Metric) -> str:
    v = cell.get(m.key)
    if not isinstance(v, dict):
        return "\u2013"
    if v["min"] == v["max"]:
        return fmt(v["median"], m.digits)
    return (f"{fmt(v['median'], m.digits)} ({fmt(v['min'], m.digits)}\u2013"
            f"{fmt(v['max'], m.digits)})")


def results_table(workload: str, cells: dict[str, dict[str, Any]], stores: list[str],
                  engines: list[str]) -> list[str]:
    title, metrics = WORKLOADS[workload]
    head = ["Engine", "Store", *[m.label for m in metrics]]
    show_ratio = workload != "MEM"
    if show_ratio:
        head.append("StackShift is … better")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = list(dict.fromkeys(NOT_APPLICABLE[(e, workload)] for e in engines
                               if (e, workload) in NOT_APPLICABLE))
    for store in stores:
        for engine in engines:
            key = f"{engine}/{store}/{workload}"
            if store not in SUPPORT.get(engine, {}).get(workload, ()):
                continue
            cell = cells.get(key)
            if cell is None:
                continue
            row = [ENGINES[engine], STORE_LABELS[store]]
            if cell["repetitions"] == 0:
                row += ["failed: " + "; ".join(cell["errors"])[:120]] + [""] * (len(metrics) - 1)
            else:
                row += [spread(cell, m) for m in metrics]
            if show_ratio:
                if engine == "stackshift":
                    row.append("")
                else:
                    ours = cells.get(f"stackshift/{store}/{workload}")
                    ratios = [advantage(median(ours, m.key), median(cell, m.key),
                                        m.higher_is_better)
                              for m in metrics if m.key != "extra_runs"]
                    row.append(" / ".join("\u00d7" + fmt(r, 1) if r is not None else "\u2013"
                                          for r in ratios))
            lines.append("| " + " | ".join(row) + " |")
    out = [f"### {workload}: {title}", "", *lines, ""]
    for note in notes:
        out.append(f"- n/a: {note}")
    if notes:
        out.append("")
    return out


def targets_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| Workload | Store | Target | Measured (median) | Met |", "|---|---|---|---|---|"]
    for r in rows:
        m = metric(r["workload"], r["metric"])
        measured = f"{fmt(r['value'], m.digits)} {m.label.split('(')[-1].rstrip(')')}"
        if m.key == "extra_runs":
            measured = fmt(r["value"], 0)
        if "ratio" in r:
            measured += f" = \u00d7{r['ratio']:.1f} DBOS"
        elif r["workload"] == "W5":
            measured += f" (budget {r['limit']:.1f} s)"
        label = f"{r['workload']} {m.label.split(' (')[0]}"
        lines.append(f"| {label} | {STORE_LABELS[r['store']]} | {r['target']} | {measured} |"
                     f" {'yes' if r['met'] else '**no**'} |")
    return lines


#: Said at the top of the results of a ``--quick`` run.
QUICK_NOTE = ("A smoke run (`--quick`): small sizes and one repetition, to see every"
              " workload run end to end. Its figures are not those of the workloads below"
              " at full size, and its targets table is no verdict on them.")


def markdown(data: dict[str, Any]) -> str:
    info = data["run"]
    cells = data["cells"]
    stores = [s for s in STORE_LABELS if s in info["stores"]]
    engines = [e for e in ENGINES if e in info["engines"]]
    lines = [
        "# Benchmark results",
        "",
        f"Measured {info['finished_at']} on this repository at `{info['commit']}`"
        f" with `{info['command'].strip()}`; {info['machine']}.",
        "",
        f"Load average (1 min) before the run: {info['load_before']:.2f}, after:"
        f" {info['load_after']:.2f}, mean over the run {info.get('load_mean', 0):.2f}."
        f" {info['load_note']}",
        "",
        *([_probe_line(info["probe"]), ""] if "probe" in info else []),
        *[line for u in info.get("updates", []) for line in (
            f"{' and '.join(u['workloads'])} measured again {u['finished_at']} at"
            f" `{u['commit']}` with `{u['command'].strip()}`: medians of"
            f" {u['repetitions']} repetitions, load average before {u['load_before']:.2f},"
            f" after {u['load_after']:.2f}, at most {u['load_max']:.2f}. The rows, targets"
            f" and ratios of {' and '.join(u['workloads'])} come from that run, every engine"
            " measured in it side by side.", "")],
        *([QUICK_NOTE, ""] if info.get("quick") else []),
        ("Every figure is the median of "
         f"{info['repetitions']} repetitions"
         f"{' (unless said otherwise above)' if info.get('updates') else ''},"
         " with the minimum and maximum in brackets." if info["repetitions"] > 1
         else "Every figure is from one repetition.")
        + " Ratios compare engines measured in this same run, never across runs.",
        "",
        "## Fairness",
        "",
        *[f"- {line}" for line in data["fairness"]],
        "",
        "## Targets (StackShift)",
        "",
        *targets_table(data["targets"]),
        "",
        "## Results",
        "",
        "The last column says how many times better StackShift's median is than the"
        " peer's in the same run (throughput: theirs divided into ours; times: ours"
        " divided into theirs).",
        "",
        "![Benchmark chart](results.png)",
        "",
    ]
    for workload in WORKLOADS:
        if workload in info["workloads"]:
            lines += results_table(workload, cells, stores, engines)
    lines += ["## What each workload does", "", *[f"- {d}" for d in data["method"]], ""]
    if data.get("analysis"):
        lines += ["## Notes on this run", "",
                  data["analysis"].strip(), ""]
    return "\n".join(lines)
