"""A fan-out of runs: ``app.start_many`` against ``app.start`` in a loop.

    .venv/bin/python -m bench.start_many [--store sqlite-full|sqlite-normal|postgres]
        [--runs 1000] [--rounds 3]

One thread starts ``--runs`` runs of one job on a fresh database, first in one
``start_many`` call (one transaction), then one ``start`` call per run (one
transaction each, as a loop in a script does), and prints both times and their
ratio, each round. No worker runs.
"""

from __future__ import annotations

import time

from bench.common import helper_parser, scratch_url
from bench.engines.stackshift_engine import build


def fan_out(store: str, runs: int) -> tuple[float, float]:
    """Seconds of one ``start_many`` call and of ``runs`` ``start`` calls."""
    with scratch_url(store, "fanout") as (url, _):
        app = build(url)
        try:
            app.migrate()
            payloads = [{"n": n} for n in range(runs)]
            app.start_many("noop", payloads[:10])  # warm-up: connections, statements
            app.start("noop", {})
            began = time.perf_counter()
            app.start_many("noop", payloads)
            many = time.perf_counter() - began
            began = time.perf_counter()
            for payload in payloads:
                app.start("noop", payload)
            return many, time.perf_counter() - began
        finally:
            app.close()


def main() -> None:
    parser = helper_parser(__doc__)
    parser.add_argument("--runs", type=int, default=1000)
    args = parser.parse_args()
    for n in range(1, args.rounds + 1):
        many, single = fan_out(args.store, args.runs)
        print(f"{args.store} round {n}: {args.runs:,} runs in {many * 1000:,.0f} ms with"
              f" start_many, {single * 1000:,.0f} ms with a start call each"
              f" (x{single / many:.1f})", flush=True)


if __name__ == "__main__":
    main()
