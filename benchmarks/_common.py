"""What every benchmark shares: servers on core 0, load on core 1, medians, reports."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

RESULTS = Path(__file__).parent / "results"
#: The JavaScript side: workerd, and Node's ws (``npm ci`` installs them here).
JS = Path(__file__).parent / "js"
T = TypeVar("T")


@contextmanager
def server(impl: str, scenario: str, *options: str) -> Iterator[tuple[str, int]]:
    """A server of ``benchmarks._servers``, pinned to core 0: its URL and process id."""
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks._servers", impl, scenario, "--cpu", "0", *options],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        if not url.startswith("ws://"):
            raise RuntimeError(f"{impl} {scenario} did not start")
        _wait_listening(url, process)  # uvicorn and workerd print the port before they listen
        yield url, process.pid
    finally:
        process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()


def _wait_listening(url: str, process: subprocess.Popen[str], timeout: float = 10.0) -> None:
    host, port = url.removeprefix("ws://").split(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens at {url}") from None
            time.sleep(0.05)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server that does not say its own)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_workers_up(
    port: int, workers: int, process: subprocess.Popen[bytes], within: float
) -> None:
    """Until ``roomkit serve --metrics`` on ``port`` answers, and says that every one of
    its ``workers`` is up (none: it answers); RuntimeError after ``within`` seconds, or
    if ``process`` ends first."""
    deadline = time.monotonic() + within
    while process.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as page:
                text = page.read().decode()
            if len(re.findall(r'^roomkit_worker_up\{worker="\d+"\} 1\.0$', text, re.M)) == workers:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"roomkit serve did not start (exit status {process.poll()})")


def stop(process: subprocess.Popen[bytes], within: float) -> None:
    """SIGTERM (a drain), then SIGKILL if ``process`` has not ended ``within`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=within)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def family(pid: int) -> list[int]:
    """``pid`` and its children (a supervisor's workers)."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        pids += [int(child) for child in (task / "children").read_text().split()]
    return pids


def pin_load() -> None:
    """Run the load on core 1, away from the server on core 0."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})


def median_of(runs: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(runs))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def environment() -> dict[str, Any]:
    """The machine, the versions and the date a result belongs to."""
    packages = ("roomkit", "trio", "trio-websocket", "wsproto", "websockets", "python-socketio")
    versions = {}
    for name in packages:
        try:
            versions[name] = version(name)
        except Exception:
            versions[name] = None
    versions.update(_js_versions())
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "python": platform.python_version(),
        "versions": versions,
    }


def _js_versions() -> dict[str, str | None]:
    node = shutil.which("node")
    found = {"node": None if node is None else _output(node, "--version")}
    for name in ("workerd", "ws"):
        package = JS / "node_modules" / name / "package.json"
        found[name] = json.loads(package.read_text())["version"] if package.exists() else None
    return found


def _output(*command: str) -> str:
    return subprocess.run(command, capture_output=True, text=True).stdout.strip()


def write_results(name: str, results: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({**environment(), **results}, indent=2) + "\n")
    return path
