"""``python -m benchmarks.handoff [--quick]``: what a hand-off between workers costs.

Two worker processes (``serve_on`` with ``WorkerSpec``s of one run directory), each on
a port of its own, so that the client chooses where it lands: on the room's own worker
(direct), or on the other one, which hands the connection over (plain: the socket
itself, SCM_RIGHTS) or relays it (TLS). For each path: the p50 of a 100-byte echo's
round trip on an open connection, and handshakes (connect, ``101``, close) one after
the other, their p50 and how many a second; each the median of ``ROUNDS`` rounds,
the paths in turn. Prints one table.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import trio
import trio_websocket
import trustme

import roomkit
from roomkit._roomid import RoomId
from roomkit._server import SERVE_OPTIONS, serve_on
from roomkit._workerspec import WorkerSpec

ROOT = Path(__file__).parent.parent
#: Rounds of every path, one after the other; each figure is the median of its rounds.
ROUNDS = 5


class Echo(roomkit.Room):
    rate_limit = None  # a benchmark floods on purpose

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        conn.send(message)


async def worker(spec: WorkerSpec, certs: list[str]) -> None:
    """One worker, on the listening socket it inherited, until its stdin ends."""
    options: dict[str, Any] = {}
    if certs:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*certs)
        options["ssl_context"] = context

    async def listen() -> tuple[list[trio.SocketListener], str, int]:
        sock = trio.socket.from_stdlib_socket(socket.socket(fileno=spec.listen_fds[0]))
        return [trio.SocketListener(sock)], "127.0.0.1", sock.getsockname()[1]

    async with trio.open_nursery() as nursery:
        run = partial(serve_on, listen, Echo, worker=spec)
        await nursery.start(run, SERVE_OPTIONS.complete(options))
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
        nursery.cancel_scope.cancel()


async def echo_p50(url: str, context: ssl.SSLContext | None, count: int) -> float:
    async with trio_websocket.open_websocket_url(url, ssl_context=context) as ws:
        times = []
        for _ in range(count):
            began = time.perf_counter()
            await ws.send_message("x" * 100)
            await ws.get_message()
            times.append(time.perf_counter() - began)
    return statistics.median(times)


async def handshakes(url: str, context: ssl.SSLContext | None, count: int) -> tuple[float, float]:
    """The p50 of a handshake, and handshakes (opened and closed) a second."""
    times = []
    began_all = time.perf_counter()
    for _ in range(count):
        began = time.perf_counter()
        async with trio_websocket.open_websocket_url(url, ssl_context=context):
            times.append(time.perf_counter() - began)
    return statistics.median(times), count / (time.perf_counter() - began_all)


def start_workers(rundir: str, certs: list[str]) -> tuple[list[subprocess.Popen[str]], list[int]]:
    processes, ports = [], []
    for index in range(2):
        sock = socket.create_server(("127.0.0.1", 0))
        ports.append(sock.getsockname()[1])
        spec = WorkerSpec(index, 2, rundir, (sock.fileno(),), -1)
        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.handoff", "--worker", spec.to_json(), *certs],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            pass_fds=(sock.fileno(),),
        )
        sock.close()
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
        processes.append(process)
    return processes, ports


async def measure(quick: bool) -> list[tuple[str, float, float, float]]:
    count = 200 if quick else 2000
    rundir = tempfile.mkdtemp(prefix="rk-bench-")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    placement = WorkerSpec(0, 2, rundir, (), -1).placement
    room = next(f"r{i}" for i in range(100) if placement.owner(RoomId("", f"r{i}")) == "1")
    rows = []
    with tempfile.NamedTemporaryFile(suffix=".pem") as certfile:
        cert.private_key_and_cert_chain_pem.write_to_path(certfile.name)
        for tls in (False, True):
            certs = [certfile.name] if tls else []
            processes, (other, owner) = start_workers(rundir, certs)
            context = client_context if tls else None
            scheme = "wss" if tls else "ws"
            paths = (("direct", owner), ("relay" if tls else "hand-off", other))
            figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name, _ in paths}
            try:
                for _ in range(ROUNDS):  # the paths in turn, so that noise falls on both
                    for name, port in paths:
                        url = f"{scheme}://127.0.0.1:{port}/{room}"
                        await echo_p50(url, context, count // 10)  # warm up
                        p50 = await echo_p50(url, context, count)
                        shake, rate = await handshakes(url, context, count // 4)
                        figures[name].append((p50, shake, rate))
                for name, runs in figures.items():
                    columns = zip(*runs, strict=True)
                    p50, shake, rate = (statistics.median(column) for column in columns)
                    rows.append((f"{scheme} {name}", p50, shake, rate))
            finally:
                for process in processes:
                    assert process.stdin is not None
                    process.stdin.close()
                    process.wait()
    os.rmdir(rundir)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", metavar="SPEC")
    parser.add_argument("certs", nargs="*")
    args = parser.parse_args()
    if args.worker:
        trio.run(worker, WorkerSpec.from_json(args.worker), args.certs)
        return
    rows = trio.run(measure, args.quick)
    print(f"{'path':<14} {'echo p50':>10} {'handshake p50':>14} {'handshakes/s':>13}")
    for name, p50, shake, rate in rows:
        print(f"{name:<14} {p50 * 1e6:>8.0f} µs {shake * 1e3:>11.2f} ms {rate:>13.0f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
