"""The load generators measured against each other: fan-out and echo for roomkit and
the websockets package, each from the Python client (``_wire.py``) and from Node's
``ws`` (``_node.py``), which roomkit did not write.

If the client were what is measured, the ratio of the two servers would change with
it. Each server is started once per scenario and the two clients take turns on it,
run after run, so that the machine's noise falls on both alike.
``python -m benchmarks.loads [--quick]``
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from . import echo, fanout
from ._common import pin_load, server, write_results
from ._node import LOADS

IMPLS = ("roomkit", "websockets")
CLIENTS = 200
UNITS = {
    f"fan-out, {CLIENTS} clients": "deliveries/s",
    "echo, pipelined": "msg/s",
    "echo, round trip p50": "ms",
    "echo, round trip p99": "ms",
}


def _measure(impl: str, quick: bool) -> dict[str, dict[str, float]]:
    """Each scenario's figure for ``impl``, by load generator."""
    messages, runs = (200, 3) if quick else (500, 5)
    trips, count = (500, 5_000) if quick else (2_000, 20_000)
    rates: dict[str, list[float]] = {load: [] for load in LOADS}
    with server(impl, "fanout") as (url, _):
        for _ in range(runs):
            for load in LOADS:
                rates[load].append(fanout.deliveries(load, url, CLIENTS, messages, False))
    times: dict[str, list[float]] = {load: [] for load in LOADS}
    echoes: dict[str, list[float]] = {load: [] for load in LOADS}
    with server(impl, "echo") as (url, _):
        for load in LOADS:
            echo.trip_times(load, url, trips // 10, False)  # warm up
        for _ in range(runs):
            for load in LOADS:
                times[load] += echo.trip_times(load, url, trips, False)
                echoes[load].append(echo.pipelined_rate(load, url, count, False))
    return {
        load: {
            f"fan-out, {CLIENTS} clients": statistics.median(rates[load]),
            "echo, pipelined": statistics.median(echoes[load]),
            "echo, round trip p50": echo.percentile(times[load], 50) * 1000,
            "echo, round trip p99": echo.percentile(times[load], 99) * 1000,
        }
        for load in LOADS
    }


def run(quick: bool) -> dict[str, Any]:
    pin_load()
    by_impl = {impl: _measure(impl, quick) for impl in IMPLS}
    # results[scenario][load][impl]
    results: dict[str, dict[str, dict[str, float]]] = {}
    for impl, by_load in by_impl.items():
        for load, figures in by_load.items():
            for scenario, value in figures.items():
                results.setdefault(scenario, {}).setdefault(load, {})[impl] = value
    return {"clients": CLIENTS, "results": results}


def table(report: dict[str, Any]) -> str:
    """Per scenario, websockets over roomkit from each generator, and the two ratios' quotient."""
    base, peer = IMPLS
    python, node = LOADS
    lines = [
        f"| scenario | unit | Python client: {base}, {peer} | Node's ws: {base}, {peer} "
        "| Node's ratio / Python's |",
        "| --- | --- | --- | --- | --- |",
    ]
    quotients = agreement(report)
    for scenario, by_load in report["results"].items():
        cells = []
        for load in (python, node):
            by_impl = by_load[load]
            shown = ", ".join(f"{v:,.3g}" if v < 10 else f"{v:,.0f}" for v in by_impl.values())
            cells.append(f"{shown} ({by_impl[peer] / by_impl[base]:.2f}x)")
        row = [scenario, UNITS[scenario], *cells, f"{quotients[scenario]:.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def agreement(report: dict[str, Any]) -> dict[str, float]:
    """Per scenario, the Node client's ratio over the Python client's (1.0: they agree)."""
    base, peer = IMPLS
    python, node = LOADS
    return {
        scenario: (by_load[node][peer] / by_load[node][base])
        / (by_load[python][peer] / by_load[python][base])
        for scenario, by_load in report["results"].items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    report = run(parser.parse_args().quick)
    print(table(report))
    write_results("loads", report)


if __name__ == "__main__":
    main()
