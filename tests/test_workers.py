"""``roomkit serve --workers N``: the supervisor and its worker processes, for real.

Every test starts a real ``roomkit serve --workers N`` (or a worker alone) in a
subprocess and sends real signals; processes are found in ``/proc`` (Linux), and
waiting is polling with a bound. Each keeps to what holds however the kernel spreads
connections over the workers: one connection per room.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import attrs
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from roomkit._workerspec import WorkerSpec
from roomkit.storage._sqlite import SQLiteCore

from .helpers import ROOT, call, roomkit_env, roomkit_serve
from .test_cli import without_root_overrides

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="finds processes in /proc"
)

WHERE = "tests.workerapps:Where"


@attrs.define
class Supervised:
    """A running ``roomkit serve --workers N`` and what it wrote to stderr so far."""

    process: subprocess.Popen[str]
    url: str
    lines: list[str]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def workers(self) -> dict[int, int]:
        """Its live workers: slot → pid."""
        return {spec_of(pid).index: pid for pid in children(self.process.pid)}

    def wait_for_line(self, pattern: str, within: float = 10) -> re.Match[str]:
        """The first line so far or to come, within ``within`` seconds, that matches."""
        found: list[re.Match[str]] = []

        def seen() -> bool:
            found.extend(m for line in self.lines if (m := re.search(pattern, line)))
            return bool(found)

        eventually(seen, within, f"no line matches {pattern!r}: {self.lines}")
        return found[0]

    def wait_for_new_worker(self, slot: int, old: int, within: float = 10) -> int:
        """The pid of the worker that replaced ``old`` in ``slot``, once it serves."""
        self.wait_for_line(rf"\[worker {slot}\]: pid \d+ serves", within)
        pid = self.workers().get(slot)
        assert pid is not None and pid != old
        return pid


@contextmanager
def supervised(target: str, *options: str, prefix: tuple[str, ...] = ()) -> Iterator[Supervised]:
    """``roomkit serve TARGET --port 0 OPTIONS`` (with ``--workers``), once it listens.

    On the way out it is sent SIGTERM and waited for (SIGKILL after 15 s).
    """
    process = subprocess.Popen(
        [*prefix, sys.executable, "-m", "roomkit", "serve", target, "--port", "0", *options],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env=roomkit_env(),
    )
    lines: list[str] = []
    assert process.stderr is not None
    stderr = process.stderr
    reader = threading.Thread(target=lambda: lines.extend(stderr), daemon=True)
    reader.start()
    try:
        started = Supervised(process, "", lines)
        match = started.wait_for_line(r"listening on (wss?://\S+)", within=30)
        started.url = match[1]
        yield started
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(timeout=5)
        process.stderr.close()


def eventually(predicate: Callable[[], bool], within: float, message: str = "") -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, message or f"not within {within} s"
        time.sleep(0.02)


def children(pid: int) -> list[int]:
    """The live (not zombie) children of process ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        state = process_state(int(entry))
        if state is not None and state[1] == pid and state[0] != "Z":
            found.append(int(entry))
    return found


def process_state(pid: int) -> tuple[str, int] | None:
    """Process ``pid``'s state letter and parent, or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
    return state, int(ppid)


def alive(pid: int) -> bool:
    state = process_state(pid)
    return state is not None and state[0] != "Z"


def spec_of(pid: int) -> WorkerSpec:
    """The WorkerSpec on worker ``pid``'s command line."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert argv[1:3] == [b"-m", b"roomkit._worker"], argv
    return WorkerSpec.from_json(argv[3].decode())


def healthz(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    return data


def closed_with(ws: ClientConnection) -> int:
    with pytest.raises(ConnectionClosed) as info:
        while True:
            ws.recv(timeout=10)
    assert info.value.rcvd is not None
    return info.value.rcvd.code


def test_workers_serve_the_port_the_supervisor_bound(tmp_path: Path) -> None:
    with supervised(WHERE, "--workers", "2", "--storage", str(tmp_path / "db")) as server:
        assert server.port != 0
        assert server.lines[0].endswith(f"roomkit listening on {server.url} (2 workers)\n")
        workers = server.workers()
        assert sorted(workers) == [0, 1]
        specs = [spec_of(pid) for pid in workers.values()]
        rundir = Path(specs[0].rundir)
        assert {spec.rundir for spec in specs} == {str(rundir)}
        assert rundir.stat().st_mode & 0o777 == 0o700
        served_by = set()
        for n in range(6):
            with connect(f"{server.url}/room-{n}") as ws:
                call(ws, "put", key="n", value=n)
                served_by.add(call(ws, "pid"))
        assert served_by <= set(workers.values())
        assert healthz(server.port).endswith(b"\r\n\r\nok")
    assert server.process.returncode == 0
    assert not rundir.exists()


def test_a_worker_that_dies_is_started_again_in_its_slot() -> None:
    with supervised(WHERE, "--workers", "2", "--storage", ":memory:") as server:
        old = server.workers()
        os.kill(old[0], signal.SIGKILL)
        killed = time.monotonic()
        server.wait_for_line(
            rf"\[worker 0\]: pid {old[0]} was killed by SIGKILL after [\d.]+ s; "
            "starting another at once"
        )
        new = server.wait_for_new_worker(0, old[0])
        assert time.monotonic() - killed < 5
        assert server.workers() == {0: new, 1: old[1]}
        with connect(f"{server.url}/after") as ws:
            assert call(ws, "pid") in (new, old[1])


def test_a_single_worker_is_supervised_too() -> None:
    with supervised(WHERE, "--workers", "1", "--storage", ":memory:") as server:
        assert server.lines[0].endswith("(1 workers)\n")
        (old,) = server.workers().values()
        os.kill(old, signal.SIGKILL)
        new = server.wait_for_new_worker(0, old)
        with connect(f"{server.url}/lobby") as ws:
            assert call(ws, "pid") == new


def test_a_stopped_worker_is_killed_and_replaced_and_the_others_answer_meanwhile() -> None:
    with supervised(WHERE, "--workers", "2", "--storage", ":memory:") as server:
        old = server.workers()
        os.kill(old[1], signal.SIGSTOP)
        # The live worker accepts every connection while the stopped one cannot.
        for _ in range(5):
            assert healthz(server.port).endswith(b"ok")
        match = server.wait_for_line(
            rf"\[worker 1\]: pid {old[1]} silent for ([\d.]+) s \(hung, or stopped\): killing it"
        )
        assert 1.0 <= float(match[1]) < 3
        server.wait_for_line(rf"\[worker 1\]: pid {old[1]} was killed by SIGKILL")
        new = server.wait_for_new_worker(1, old[1])
        assert server.workers() == {0: old[0], 1: new}
        assert not alive(old[1])


def test_a_worker_whose_event_loop_hangs_is_killed_and_replaced() -> None:
    with supervised(WHERE, "--workers", "2", "--storage", ":memory:") as server:
        with connect(f"{server.url}/stuck") as ws:
            pid = call(ws, "pid")
            slot = {p: s for s, p in server.workers().items()}[pid]
            ws.send(json.dumps({"op": "hang", "seconds": 30}))
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=10)
        server.wait_for_line(rf"\[worker {slot}\]: pid {pid} silent for [\d.]+ s")
        server.wait_for_new_worker(slot, pid)


def test_the_workers_end_when_the_supervisor_is_killed_a_hung_one_too() -> None:
    with supervised(WHERE, "--workers", "2", "--storage", ":memory:") as server:
        workers = server.workers()
        rundir = spec_of(workers[0]).rundir
        with connect(f"{server.url}/stuck") as ws:
            hung = call(ws, "pid")
            ws.send(json.dumps({"op": "hang", "seconds": 30}))
            eventually(lambda: process_state(hung) == ("R", server.process.pid), within=5)
            server.process.kill()
            server.process.wait()
            # Its event loop stuck, it cannot see its control socket end: the kernel
            # kills it (PR_SET_PDEATHSIG), and the other with it.
            eventually(lambda: not any(alive(pid) for pid in workers.values()), within=5)
    shutil.rmtree(rundir)  # left behind by the SIGKILL


def test_a_worker_drains_and_exits_when_its_control_socket_ends(tmp_path: Path) -> None:
    """The end of file alone (wherever there is no parent-death signal) ends a worker:
    run one by hand, with this process as its supervisor."""
    listener = socket.create_server(("127.0.0.1", 0))
    mine, theirs = socket.socketpair()
    spec = WorkerSpec(0, 1, str(tmp_path), (listener.fileno(),), theirs.fileno())
    command = ["serve", WHERE, "--storage", ":memory:", "--log-level", "warning"]
    worker = subprocess.Popen(
        [sys.executable, "-m", "roomkit._worker", spec.to_json(), *command],
        cwd=ROOT,
        env=roomkit_env(),
        pass_fds=(listener.fileno(), theirs.fileno()),
    )
    theirs.close()
    try:
        mine.settimeout(30)
        heard = b""
        while b"!" not in heard:  # heartbeats, then READY
            heard += mine.recv(64)
        assert set(heard) <= set(b".!")
        port = listener.getsockname()[1]
        listener.close()
        with connect(f"ws://127.0.0.1:{port}/lobby") as ws:
            assert call(ws, "pid") == worker.pid
            mine.close()
            assert closed_with(ws) == 1012
        assert worker.wait(timeout=10) == 0
    finally:
        worker.kill()
        worker.wait()


def test_sigterm_drains_every_worker_with_1012_and_exits_0(tmp_path: Path) -> None:
    db = tmp_path / "rooms.sqlite3"
    with supervised(WHERE, "--workers", "2", "--storage", str(db)) as server:
        workers = server.workers()
        with ExitStack() as stack:
            clients = [stack.enter_context(connect(f"{server.url}/room-{n}")) for n in range(6)]
            served_by = {call(ws, "pid") for ws in clients}
            server.process.send_signal(signal.SIGTERM)
            assert [closed_with(ws) for ws in clients] == [1012] * 6
        assert server.process.wait(timeout=15) == 0
        assert served_by <= set(workers.values())
        assert not any(alive(pid) for pid in workers.values())
        server.wait_for_line(r"SIGTERM: draining the workers")
    # The lock is free again.
    with roomkit_serve("tests.apps:KV", "--storage", str(db)) as (_, url), connect(f"{url}/x"):
        pass


def test_a_second_signal_kills_the_workers_and_exits_at_once(tmp_path: Path) -> None:
    options = ("--workers", "2", "--storage", ":memory:", "--drain-timeout", "60")
    with supervised(WHERE, *options) as server:
        workers = server.workers()
        with connect(f"{server.url}/ledger") as ws:
            call(ws, "put", key="linger", value=True)  # its on_close holds the drain up
            server.process.send_signal(signal.SIGTERM)
            assert closed_with(ws) == 1012
        with pytest.raises(subprocess.TimeoutExpired):
            server.process.wait(timeout=0.3)
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(timeout=5) == 128 + signal.SIGINT
        eventually(lambda: not any(alive(pid) for pid in workers.values()), within=5)
        server.wait_for_line(r"SIGINT: killing the workers and exiting at once")


def test_one_server_per_storage_file_with_workers_or_without(tmp_path: Path) -> None:
    db = tmp_path / "rooms.sqlite3"
    lock = tmp_path / "rooms.sqlite3.roomkit.lock"
    refusal = (
        f"cannot start: the storage file {db} is in use by another server "
        "(pid {pid}), which holds " + str(lock) + "; one server per storage file"
    )
    run = [sys.executable, "-m", "roomkit", "serve", WHERE, "--port", "0", "--storage", str(db)]
    with supervised(WHERE, "--workers", "2", "--storage", str(db)) as server:
        for extra in ([], ["--workers", "2"]):
            second = subprocess.run(
                [*run, *extra], cwd=ROOT, env=roomkit_env(), capture_output=True, text=True
            )
            assert second.returncode == 1
            assert refusal.format(pid=server.process.pid) in second.stderr
            assert "Traceback" not in second.stderr
    with roomkit_serve(WHERE, "--storage", str(db)) as (alone, _):
        second = subprocess.run(
            [*run, "--workers", "2"], cwd=ROOT, env=roomkit_env(), capture_output=True, text=True
        )
        assert second.returncode == 1
        assert refusal.format(pid=alone.pid) in second.stderr


def test_a_worker_that_cannot_start_stops_the_supervisor_with_status_1(tmp_path: Path) -> None:
    db = tmp_path / "rooms.sqlite3"
    SQLiteCore(db).close()
    db.chmod(0o444)
    result = subprocess.run(
        [
            *without_root_overrides(db),
            sys.executable,
            "-m",
            "roomkit",
            "serve",
            WHERE,
            "--port",
            "0",
            "--workers",
            "2",
            "--storage",
            str(db),
        ],
        cwd=ROOT,
        env=roomkit_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1, result.stderr
    assert re.search(
        rf"CRITICAL roomkit.server \[worker \d\]: cannot start: the storage file {db} "
        "cannot be written",
        result.stderr,
    ), result.stderr
    assert re.search(
        r"CRITICAL roomkit.supervisor \[worker \d\]: cannot start: pid \d+ exited with "
        r"status 1 before it served; stopping",
        result.stderr,
    ), result.stderr
    assert "listening" not in result.stderr


def test_json_log_lines_say_which_worker(tmp_path: Path) -> None:
    options = ("--workers", "2", "--storage", ":memory:", "--log-json")
    with supervised(WHERE, *options) as server:
        with connect(f"{server.url}/lobby") as ws:
            pid = call(ws, "pid")
        slot = {p: s for s, p in server.workers().items()}[pid]
        os.kill(pid, signal.SIGKILL)
        server.wait_for_line(r"was killed by SIGKILL")
    entries = [json.loads(line) for line in server.lines]
    connects = [e for e in entries if e["logger"] == "roomkit.connection" and e.get("room")]
    assert connects and all(e["worker"] == slot for e in connects)
    exits = [e for e in entries if "was killed by SIGKILL" in e["message"]]
    assert exits[0]["logger"] == "roomkit.supervisor"
    assert (exits[0]["worker"], exits[0]["pid"], exits[0]["status"]) == (slot, pid, -9)
    assert entries[0]["message"].startswith("roomkit listening on ")
    assert "worker" not in entries[0]
