"""``python -m benchmarks.history [--rounds N] [--lease S] [--kinds K,...] [--quick]``: the long
history check.

tests/test_history.py's check, for minutes: three ``roomkit serve`` nodes on a
throwaway PostgreSQL (tests/pg.py; with ``ROOMKIT_TEST_POSTGRES`` set, that server,
never restarted: the PostgreSQL faults are left out), more rooms and clients, and the
four faults of tests/historyrun.py (kill -9 of an owner, SIGSTOP past the lease, a
PostgreSQL restart, a SIGTERM drain) round after round, in a shuffled order (or only
those ``--kinds`` names, ``--kinds stop`` to look at stops alone). Prints the
operations, the faults, what was lost (0 is the only right answer), every violation
the checker found, the stale writes the nodes refused (from their /metrics), and the
failover times against the lease; writes ``benchmarks/results/history.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path
from typing import Any

import trio

from tests.historyrun import Plan, run, spread, summary
from tests.pg import open_server

from ._common import write_results

KINDS = ("kill", "stop", "postgres", "drain")


def plan(
    rounds: int, lease: float, seed: int, restartable: bool, kinds: tuple[str, ...] = KINDS
) -> Plan:
    rng = random.Random(seed)
    faults: list[str] = []
    for _ in range(rounds):
        round_ = [kind for kind in kinds if restartable or kind != "postgres"]
        rng.shuffle(round_)
        faults += round_
    return Plan(
        faults=tuple(faults), rooms=8, clients_per_room=3, lease=lease, settle=4.0, seed=seed
    )


def measure(
    rounds: int, lease: float, seed: int, logs: Path, kinds: tuple[str, ...] = KINDS
) -> dict[str, Any]:
    with open_server() as server:
        url = server.new_database()
        try:
            schedule = plan(rounds, lease, seed, server.restartable, kinds)
            history = trio.run(run, schedule, url, server.restart, logs)
        finally:
            server.drop_databases()
    history.dump(logs / "history.jsonl")
    verdict = history.verdict()
    report = summary(history, verdict)
    report["violations_found"] = [
        {"kind": v.kind.value, "room": v.room, "ops": v.ops, "detail": v.detail}
        for v in verdict.violations[:20]
    ]
    report["failovers"] = [
        {"fault": f.kind, "room": f.room, "seconds": f.seconds} for f in verdict.failovers
    ]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the four faults")
    parser.add_argument("--lease", type=float, default=1.0, help="the nodes' lease, seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help="the faults of each round, comma-separated"
    )
    parser.add_argument("--quick", action="store_true", help="one round")
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="roomkit-history-"))
    print(f"the nodes' logs: {logs}", flush=True)
    kinds = tuple(kind for kind in args.kinds.split(",") if kind)
    if not kinds or set(kinds) - set(KINDS):
        parser.error(f"--kinds takes some of {', '.join(KINDS)}")
    report = measure(1 if args.quick else args.rounds, args.lease, args.seed, logs, kinds)
    shown = {k: v for k, v in report.items() if k != "failovers"}
    print(json.dumps(shown, indent=2))
    by_kind: dict[str, list[float]] = {}
    for failover in report["failovers"]:
        if failover["seconds"] is not None:
            by_kind.setdefault(failover["fault"], []).append(failover["seconds"])
    for kind, times in sorted(by_kind.items()):
        figures = spread(sorted(times))
        assert figures is not None
        print(
            f"failover after {kind}: {len(times)} rooms, min {figures['min']:.2f} s, "
            f"median {figures['median']:.2f} s, p95 {figures['p95']:.2f} s, "
            f"max {figures['max']:.2f} s (lease {args.lease} s)"
        )
    write_results("history", report)


if __name__ == "__main__":
    main()
