"""Echo, per message: the server's CPU time for each echoed message, beside the rate.

One server of ``benchmarks._servers`` (pinned to core 0), the load of ``benchmarks.echo``
on core 1. For each run it prints pipelined msg/s, the server's CPU µs per message (user
+ system, from /proc; steadier than a rate on a shared machine), and round-trip p50/p99.
``--hold SECONDS`` keeps the server up, with the pipelined load repeating, so that a
profiler can be attached to the PID it prints (py-spy record --pid PID).

``python -m benchmarks.profile_echo [--impl roomkit] [--count 20000] [--runs 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

from ._common import pin_load, server
from .echo import percentile, pipelined, round_trips


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """Process ``pid``'s CPU seconds (user + system), or only its thread ``thread``'s."""
    stat = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--impl", default="roomkit")
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--trips", type=int, default=2_000)
    parser.add_argument("--hold", type=float, default=0.0)
    args = parser.parse_args()
    pin_load()
    with server(args.impl, "echo") as (url, pid):
        asyncio.run(pipelined(url, 2_000, False))  # warm up
        if args.hold:
            print(f"pid {pid}", flush=True)
            until = time.monotonic() + args.hold
            while time.monotonic() < until:
                asyncio.run(pipelined(url, args.count, False))
            return
        for _ in range(args.runs):
            before = cpu_seconds(pid)
            rate = asyncio.run(pipelined(url, args.count, False))
            cpu = (cpu_seconds(pid) - before) / args.count * 1e6
            before = cpu_seconds(pid)
            times = asyncio.run(round_trips(url, args.trips, False))
            rtt_cpu = (cpu_seconds(pid) - before) / args.trips * 1e6
            p50, p99 = percentile(times, 50) * 1e6, percentile(times, 99) * 1e6
            print(
                f"{args.impl:<12} {rate:>9,.0f} msg/s  {cpu:5.1f} µs CPU/msg  "
                f"rtt p50 {p50:5.1f} µs  p99 {p99:5.1f} µs  {rtt_cpu:5.1f} µs CPU/trip",
                flush=True,
            )


if __name__ == "__main__":
    main()
