"""The second load generator: Node's ``ws`` client (``benchmarks/js/load.mjs``), which
roomkit did not write, for fan-out and echo. Each call is one measurement in a process
of its own, started from (and so pinned with) the load's process; the figures are
timed inside Node, so that its start-up is not in them.

``--load node`` selects it for a run; ``benchmarks/loads.py`` measures roomkit and
websockets from both generators, to show whether the client is what is measured.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

from ._common import JS

LOAD = JS / "load.mjs"
#: The load generators a run can use; the first is the default.
LOADS = ("python", "node")


def _run(*args: object, socketio: bool) -> Any:
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("the node load generator needs Node.js on PATH")
    if not (JS / "node_modules" / "ws").exists():
        raise RuntimeError(f"no ws package: run `npm ci` in {JS} (make bench does)")
    command = [node, str(LOAD), *map(str, args)] + (["--socketio"] if socketio else [])
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()}")
    return json.loads(done.stdout)


def fanout(url: str, clients: int, messages: int, socketio: bool) -> float:
    """Deliveries a second, as ``benchmarks.fanout.fanout`` measures them."""
    return float(_run("fanout", url, clients, messages, socketio=socketio)["deliveries_per_s"])


def round_trips(url: str, count: int, socketio: bool) -> list[float]:
    """Each round trip's seconds, as ``benchmarks.echo.round_trips`` measures them."""
    return [float(t) for t in _run("rtt", url, count, socketio=socketio)["seconds"]]


def pipelined(url: str, count: int, window: int, socketio: bool) -> float:
    """Messages a second, ``window`` in flight, as ``benchmarks.echo.pipelined``."""
    return float(_run("pipelined", url, count, window, socketio=socketio)["msg_per_s"])
