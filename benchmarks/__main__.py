"""``python -m benchmarks [--quick] [--publish]``: every benchmark, one table.

Runs each scenario against roomkit and its peers (bare trio-websocket, the websockets
package's asyncio server, python-socketio on uvicorn, workerd serving the guide's
ChatRoom Durable Object), prints the absolute figures and the ratios to roomkit,
measures roomkit and websockets from both load generators (``loads.py``), checks the
targets, and writes
``benchmarks/results/latest.json`` and a PNG chart per scenario. ``--publish`` also
writes them into docs/ (``docs/benchmarks.md`` and ``docs/benchmarks/``). ``--load node``
measures fan-out and echo from Node's ``ws`` client instead of the Python one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from . import (
    chat,
    connect_storm,
    durable_writes,
    echo,
    fanout,
    forward,
    loads,
    memory,
    scale,
    workers,
)
from ._common import RESULTS, environment
from ._node import LOADS

DOCS = Path(__file__).parent.parent / "docs"
#: The servers of the main table, in its order.
PEERS = ("websockets", "trio-websocket", "socketio", "workerd")


def collect(quick: bool, load: str) -> dict[str, Any]:
    report: dict[str, Any] = {"quick": quick, "load": load, **environment()}
    for name, scenario in (("fanout", fanout), ("echo", echo)):
        began = time.monotonic()
        report[name] = scenario.run(quick, load)
        print(f"{name}: {time.monotonic() - began:.0f} s", flush=True)
    for name, module in (
        ("loads", loads),
        ("chat", chat),
        ("connect_storm", connect_storm),
        ("memory", memory),
        ("durable_writes", durable_writes),
        ("workers", workers),
        ("forward", forward),
        ("scale", scale),
    ):
        began = time.monotonic()
        report[name] = module.run(quick)
        print(f"{name}: {time.monotonic() - began:.0f} s", flush=True)
    return report


def rows(report: dict[str, Any]) -> list[tuple[str, str, dict[str, float], bool]]:
    """(scenario, unit, figures by server, higher is better) for the table and charts."""
    out = []
    for size, by_impl in report["fanout"]["results"].items():
        out.append((f"fan-out, {size}", "deliveries/s", by_impl, True))
    by = report["echo"]["results"]
    out.append(
        ("echo, pipelined", "msg/s", {k: v["pipelined_msg_per_s"] for k, v in by.items()}, True)
    )
    out.append(("echo, round trip p50", "ms", {k: v["rtt_p50_ms"] for k, v in by.items()}, False))
    out.append(("echo, round trip p99", "ms", {k: v["rtt_p99_ms"] for k, v in by.items()}, False))
    held = {k: float(v["highest_rate_held"]) for k, v in report["chat"]["results"].items()}
    out.append(("chat, rate held (p99 < 100 ms)", "msg/s per client", held, True))
    out.append(("connect storm", "handshakes/s", report["connect_storm"]["results"], True))
    mem = report["memory"]["results"]
    idle = {"roomkit": mem["roomkit"], "trio-websocket": mem["bare trio-websocket"]}
    idle["websockets"] = mem["websockets"]
    idle["workerd"] = mem["workerd"]
    out.append(("memory per idle connection", "KiB", idle, False))
    return out


def targets(report: dict[str, Any]) -> list[tuple[str, float, str, bool]]:
    """(target, measured ratio or figure, bound, met)."""
    first = next(iter(report["fanout"]["results"].values()))
    echo_by = report["echo"]["results"]
    mem = report["memory"]["results"]
    durable = report["durable_writes"]["results"]
    checks = [
        *(
            (
                f"fan-out vs websockets broadcast(), {size}",
                by["roomkit"] / by["websockets"],
                ">= 3.0",
            )
            for size, by in report["fanout"]["results"].items()
        ),
        *(
            (f"fan-out vs workerd, {size}", by_impl["roomkit"] / by_impl["workerd"], ">= 3.0")
            for size, by_impl in report["fanout"]["results"].items()
        ),
        (
            "fan-out vs a naive trio-websocket loop",
            first["roomkit"] / first["trio-websocket"],
            ">= 3.0",
        ),
        (
            "echo pipelined vs bare trio-websocket",
            echo_by["roomkit"]["pipelined_msg_per_s"]
            / echo_by["trio-websocket"]["pipelined_msg_per_s"],
            ">= 1.0",
        ),
        (
            "echo pipelined vs websockets",
            echo_by["roomkit"]["pipelined_msg_per_s"]
            / echo_by["websockets"]["pipelined_msg_per_s"],
            ">= 1.0",
        ),
        *(
            (
                f"echo round trip {q} vs websockets",
                echo_by["roomkit"][f"rtt_{q}_ms"] / echo_by["websockets"][f"rtt_{q}_ms"],
                "<= 1.0",
            )
            for q in ("p50", "p99")
        ),
        (
            "connect storm vs websockets",
            report["connect_storm"]["results"]["roomkit"]
            / report["connect_storm"]["results"]["websockets"],
            ">= 1.0",
        ),
        (
            "echo round trip p99 vs bare trio-websocket",
            echo_by["roomkit"]["rtt_p99_ms"] / echo_by["trio-websocket"]["rtt_p99_ms"],
            "<= 1.2",
        ),
        (
            "memory per idle connection vs bare trio-websocket",
            mem["roomkit"] / mem["bare trio-websocket"],
            "<= 1.2",
        ),
        (
            "a hibernated room beyond its socket (KiB)",
            report["memory"]["hibernated_room_beyond_its_socket_kib"],
            "<= 6.0",  # issue 13: a scope of its own per room (issue 7's 1 KiB withdrawn)
        ),
        (
            "durable writes (group commit) vs echo through a room",
            durable["durable, group commit"] / durable["echo through a room"],
            ">= 0.8",
        ),
    ]
    by_n = report["workers"]["results"]
    for scenario, what in (("echo", "echoed message"), ("fanout", "fan-out delivery")):
        ratio = by_n["2"][scenario]["server_cpu_us"] / by_n["1"][scenario]["server_cpu_us"]
        checks.append((f"CPU per {what}, --workers 2 vs 1", ratio, "<= 1.1"))
    # Plain TCP clients take os.splice; the copy through Python is the alternative
    # measured beside it (what TLS clients get), not a path plain clients take.
    p50 = report["forward"]["results"]["os.splice"]["p50_vs_direct"]
    checks.append(("echo p50 through a non-owner vs direct", p50, f"<= {forward.TARGET}"))
    checks += scale.targets(report["scale"])
    return [(name, value, bound, _holds(value, bound)) for name, value, bound in checks]


def _holds(value: float, bound: str) -> bool:
    op, limit = bound.split()
    return value >= float(limit) if op == ">=" else value <= float(limit)


def table(report: dict[str, Any]) -> str:
    lines = [
        f"roomkit benchmarks, {report['date']}, {report['machine']}, Python {report['python']}"
        + (" (quick)" if report["quick"] else ""),
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v) + ".",
        "",
        f"Fan-out and echo measured from the {report['load']} load generator.",
        "",
        "| scenario | unit | roomkit | websockets | trio-websocket | python-socketio | workerd |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for scenario, unit, by_impl, _ in rows(report):
        base = by_impl["roomkit"]
        cells = [f"{base:,.3g}" if base < 10 else f"{base:,.0f}"]
        for impl in PEERS:
            value = by_impl.get(impl)
            if value is None:
                cells.append("")
            else:
                shown = f"{value:,.3g}" if value < 10 else f"{value:,.0f}"
                cells.append(f"{shown} ({value / base:.2f}x)" if base else shown)
        lines.append(f"| {scenario} | {unit} | " + " | ".join(cells) + " |")
    lines += ["", "roomkit and websockets from both load generators (loads.py):", ""]
    lines.append(loads.table(report["loads"]))
    lines += ["", "`roomkit serve --workers N` (see benchmarking.md):", ""]
    lines.append(workers.table(report["workers"]))
    lines += ["", "Forwarding to the owner node (see benchmarks/forward.py):", ""]
    lines.append(forward.table(report["forward"]))
    durable = report["durable_writes"]["results"]
    if "broadcast, logged for recovery" in durable:  # runs before 2026-12-02 lack it
        logged = durable["broadcast, logged for recovery"]
        plain = durable["broadcast through a room"]
        lines += [
            "",
            f"A room with recovery (every broadcast logged, durable_writes.py): {logged:,.0f} "
            f"msg/s, {logged / plain:.2f}x the same room unlogged ({plain:,.0f}).",
        ]
    lines += ["", "Idle connections at scale (see benchmarks/scale.py):", ""]
    lines.append(scale.table(report["scale"]))
    lines += ["", "| target | measured | bound | met |", "| --- | --- | --- | --- |"]
    for name, value, bound, met in targets(report):
        lines.append(f"| {name} | {value:.2f} | {bound} | {'yes' if met else 'no'} |")
    return "\n".join(lines)


def charts(report: dict[str, Any], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for scenario, unit, by_impl, higher in rows(report):
        figure, axes = plt.subplots(figsize=(6, 2.6))
        names = list(by_impl)
        colors = ["#2b6cb0" if n == "roomkit" else "#a0aec0" for n in names]
        axes.barh(names, [by_impl[n] for n in names], color=colors)
        axes.invert_yaxis()
        axes.set_xlabel(unit + (" (higher is better)" if higher else " (lower is better)"))
        axes.set_title(scenario)
        figure.tight_layout()
        path = folder / (scenario.split(",")[0].replace(" ", "-") + "-" + str(len(paths)) + ".png")
        figure.savefig(path, dpi=110)
        plt.close(figure)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter runs: under two minutes")
    parser.add_argument("--publish", action="store_true", help="write the results into docs/")
    parser.add_argument(
        "--load", choices=LOADS, default=LOADS[0], help="the client of fan-out and echo"
    )
    parser.add_argument(
        "--report", type=Path, help="table and charts from a saved latest.json, not a new run"
    )
    args = parser.parse_args()
    report = json.loads(args.report.read_text()) if args.report else collect(args.quick, args.load)
    text = table(report)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    pictures = charts(report, RESULTS / "charts")
    if args.publish:
        shutil.rmtree(DOCS / "benchmarks", ignore_errors=True)
        published = charts(report, DOCS / "benchmarks")
        body = "\n".join(f"![{p.stem}](benchmarks/{p.name})" for p in published)
        (DOCS / "benchmarks.md").write_text(
            "# Benchmark results\n\nWritten by `python -m benchmarks --publish`; see "
            "[the method](benchmarking.md).\n\n" + text + "\n\n" + body + "\n"
        )
    print(f"results: {RESULTS / 'latest.json'}, charts: {pictures[0].parent}")


if __name__ == "__main__":
    main()
