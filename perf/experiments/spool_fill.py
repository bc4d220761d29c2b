"""What the zero fill of a segment's allocation saves the spool's write, inside served requests.

    .venv/bin/python -m perf.experiments.spool_fill [--rounds 20] [--requests 2000]

One app serves single scores with its prediction log on (perf.experiments.prediction_log_cost's
app); its spool allocates with the fill (as served) and without it (space left as fallocate made
it, so a frame's first store to each page faults into the filesystem), by turns, the order
alternating. The log's call (PredictionLog.one: the frame's stores into the mapping, and the
spool's Python when it allocates) is timed with perf_counter_ns inside the requests, the fill's own
pwrite included. Reported: the mean call a request in each pass, as medians and quartiles of the
passes, and the paired ratio (fill ÷ without). A benchmark, not a test."""

from __future__ import annotations

import argparse
import json
import sys
import time

from perf import add_model_argument, existing_model
from perf.common import log

# Imported before anything loads prometheus_client: it sets the multiprocess directory the metrics need.
from perf.experiments.prediction_log_cost import served_singles, spread
from service.predlog.spool import Spool

STATES = ("fill", "without")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_argument(parser)
    parser.add_argument("--rounds", type=int, default=20, help="passes of each state, interleaved (>= 2)")
    parser.add_argument("--requests", type=int, default=2000, help="requests per pass")
    args = parser.parse_args(argv)
    scoring, serve_all = served_singles(existing_model(args.model), args.requests)
    prediction_log = scoring.log
    spool = prediction_log.spool
    one = prediction_log.one
    spent = [0]

    def timed_one(*arguments) -> None:
        started = time.perf_counter_ns()
        one(*arguments)
        spent[0] += time.perf_counter_ns() - started

    def without_fill(end: int, through_mapping: bool = True) -> None:
        Spool._allocate(spool, end, through_mapping=False)

    prediction_log.one = timed_one  # type: ignore[method-assign]

    def serve(state: str) -> float:
        if state == "fill":
            spool.__dict__.pop("_allocate", None)
        else:
            spool._allocate = without_fill  # type: ignore[method-assign]
        spent[0] = 0
        serve_all()
        return spent[0] / args.requests / 1e3

    for state in STATES:  # warm
        serve(state)
    passes: dict[str, list[float]] = {state: [] for state in STATES}
    for round_ in range(args.rounds):
        for state in STATES if round_ % 2 == 0 else STATES[::-1]:
            passes[state].append(serve(state))
    ratios = [f / w for f, w in zip(passes["fill"], passes["without"], strict=True)]
    found = {
        "requests": args.requests,
        "rounds": args.rounds,
        "call_us": {state: spread(values) for state, values in passes.items()},
        "fill_over_without": spread(ratios),
    }
    log(
        f"the log's call inside the requests: {found['call_us']['fill']['median']:.2f} µs with the fill "
        f"(quartiles {found['call_us']['fill']['q1']:.2f} to {found['call_us']['fill']['q3']:.2f}), "
        f"{found['call_us']['without']['median']:.2f} µs without "
        f"({found['call_us']['without']['q1']:.2f} to {found['call_us']['without']['q3']:.2f}); "
        f"paired ratio {found['fill_over_without']['median']:.2f} "
        f"({found['fill_over_without']['q1']:.2f} to {found['fill_over_without']['q3']:.2f})"
    )
    json.dump(found, sys.stdout, indent=1)
    print()
    return found


if __name__ == "__main__":
    main()
