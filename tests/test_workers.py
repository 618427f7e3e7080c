"""``roomkit serve --workers N``: the supervisor and its worker processes, for real.

Every test starts a real ``roomkit serve --workers N`` (or a worker alone) in a
subprocess and sends real signals; processes are found in ``/proc`` (Linux), and
waiting is polling with a bound. The supervisor's own tests keep to one connection per
room; the end-to-end ones, below, check that a room lives in one worker whichever
accepts its connections (the hand-off), and what kill -9 and SIGSTOP of a worker leave
(fencing). Each is short; the many-kill variant is marked ``long``, for
``make test-long``.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Final

import attrs
import pytest
import trio
import trio_websocket
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

import roomkit
from roomkit._core import placement
from roomkit._roomid import RoomId
from roomkit._workerspec import WorkerSpec
from roomkit.storage._sqlite import BUSY_TIMEOUT, SQLiteCore

from .helpers import ROOT, call, http, open_client, roomkit_env, roomkit_serve
from .test_cli import without_root_overrides

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="finds processes in /proc"
)

WHERE = "tests.workerapp:Where"

#: Seconds of silence before a stopped or hung worker is killed, in these tests: the
#: default (10 s) would make each of them wait five times as long.
WORKER_TIMEOUT: Final = 2.0
#: ``roomkit serve``'s option for it.
FAST_KILL: Final = ("--worker-timeout", str(WORKER_TIMEOUT))


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
            exited = self.process.poll()
            if not found and exited is not None:  # no line is to come: say what it said
                time.sleep(0.5)  # the reader takes up what was left in the pipe
                raise AssertionError(f"exited with {exited} before {pattern!r}: {self.lines}")
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
        errors="replace",  # a byte that is no UTF-8 must not end the reader, and lose the rest
        env=roomkit_env(),
    )
    lines: list[str] = []
    assert process.stderr is not None
    stderr = process.stderr
    reader = threading.Thread(target=lambda: lines.extend(stderr), daemon=True)
    reader.start()
    try:
        started = Supervised(process, "", lines)
        try:
            match = started.wait_for_line(r"listening on (wss?://\S+)", within=60)
        except AssertionError as exc:  # say where each process is stuck, for the next look
            stuck = whereabouts(process.pid)
            raise AssertionError(f"{exc}; processes: {stuck}; exit: {process.poll()}") from None
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


def whereabouts(pid: int) -> list[str]:
    """Process ``pid`` and its children: each one's state, the kernel function it waits
    in, and its CPU ticks so far (what a start that hangs leaves to go on)."""
    found = []
    for each in (pid, *children(pid)):
        try:
            stat = Path(f"/proc/{each}/stat").read_text()
            wchan = Path(f"/proc/{each}/wchan").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        found.append(f"{each} {fields[0]} in {wchan or '-'}, cpu {fields[11]}+{fields[12]}")
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
    return http_get(port, "/healthz")


def http_get(port: int, path: str) -> bytes:
    """The whole response to ``GET path``, head and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
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
    with supervised(WHERE, "--workers", "2", "--storage", ":memory:", *FAST_KILL) as server:
        old = server.workers()
        os.kill(old[1], signal.SIGSTOP)
        # The live worker accepts every connection while the stopped one cannot.
        for _ in range(5):
            assert healthz(server.port).endswith(b"ok")
        match = server.wait_for_line(
            rf"\[worker 1\]: pid {old[1]} silent for ([\d.]+) s \(hung, or stopped\): killing it"
        )
        assert float(match[1]) >= WORKER_TIMEOUT  # not before its limit (later, if loaded)
        server.wait_for_line(rf"\[worker 1\]: pid {old[1]} was killed by SIGKILL")
        new = server.wait_for_new_worker(1, old[1])
        assert server.workers() == {0: old[0], 1: new}
        assert not alive(old[1])


def test_a_worker_whose_event_loop_hangs_is_killed_and_replaced() -> None:
    with supervised(WHERE, "--workers", "2", "--storage", ":memory:", *FAST_KILL) as server:
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


def test_a_storage_file_it_cannot_write_stops_the_supervisor_with_status_1(
    tmp_path: Path,
) -> None:
    """The supervisor opens the file itself before any worker does (making a new one
    ready, WAL and schema, once: workers that did it at once raced for its lock)."""
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
        rf"CRITICAL roomkit.server: cannot start: the storage file {db} cannot be written",
        result.stderr,
    ), result.stderr
    assert "[worker" not in result.stderr  # none was started
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


# End to end: whichever worker accepts a connection, its room lives in one worker (the
# hand-off), and what a worker that died or hung had acknowledged is stored (fencing).


def owner_slot(room: str, count: int) -> int:
    """The slot ``room`` (of a single Room class) lives in, among ``count``."""
    return int(placement.owner(RoomId("", room), [str(i) for i in range(count)]))


def rooms_of(slot: int, count: int, how_many: int, prefix: str) -> list[str]:
    """The first ``how_many`` room names ``prefix-N`` that live in ``slot``."""
    names = (f"{prefix}-{n}" for n in itertools.count())
    return list(itertools.islice((r for r in names if owner_slot(r, count) == slot), how_many))


def stored_keys(db: Path) -> dict[str, set[str]]:
    """Every room's keys in the SQLite file ``db``."""
    with contextlib.closing(sqlite3.connect(db)) as connection:
        rows = connection.execute("SELECT room, key FROM kv").fetchall()
    found: dict[str, set[str]] = collections.defaultdict(set)
    for room, key in rows:
        found[room].add(key)
    return found


def test_a_commit_waits_out_a_write_lock_held_past_sqlites_own_busy_timeout(
    tmp_path: Path,
) -> None:
    """A worker's commit waits for SQLite's write lock longer than the supervisor takes
    to kill a worker stopped inside its commit (``--worker-timeout``), and only then
    fails: here this test holds the lock 6 s, past a single process's 5 s
    (``BUSY_TIMEOUT``), under the 7 s of a worker of ``--worker-timeout 2``. The put
    waits, and is acknowledged and stored once the lock is free; it is not reset (1011)."""
    db = tmp_path / "rooms.sqlite3"
    with supervised(WHERE, "--workers", "1", "--storage", str(db), *FAST_KILL) as server:
        assert spec_of(server.workers()[0]).worker_timeout == WORKER_TIMEOUT
        with connect(f"{server.url}/held") as ws:
            assert call(ws, "put", key="before", value=0) is None  # the room's claim taken
            with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as holder:
                holder.execute("BEGIN IMMEDIATE")
                ws.send(json.dumps({"op": "put", "key": "held", "value": 1}))
                with pytest.raises(TimeoutError):  # not ConnectionClosed: no 1011
                    ws.recv(timeout=BUSY_TIMEOUT + 1)
                holder.execute("ROLLBACK")
            assert json.loads(ws.recv(timeout=5)) == {"op": "put", "result": None}
    assert {"before", "held"} <= stored_keys(db)["held"]


class Barrier:
    """Trio tasks that wait until ``count`` of them have come."""

    def __init__(self, count: int) -> None:
        self._left = count
        self._all_came = trio.Event()

    async def wait(self) -> None:
        self._left -= 1
        if self._left == 0:
            self._all_came.set()
        await self._all_came.wait()


async def kv(ws: trio_websocket.WebSocketConnection, said: list[str], op: str, **args: Any) -> Any:
    """Run one operation of ``Where``; broadcasts read meanwhile go to ``said``."""
    await ws.send_message(json.dumps({"op": op, **args}))
    with trio.fail_after(10):
        while True:
            message = json.loads(await ws.get_message())
            if "said" in message:
                said.append(message["said"])
            elif message.get("op") == op:
                return message["result"]


async def member(
    url: str, room: str, name: str, round_: int, everyone_in: Barrier, seen: dict[str, set[int]]
) -> None:
    """One client's visit: say something once everyone is in, hear everyone, write."""
    said: list[str] = []
    async with open_client(f"{url}/{room}") as ws:
        seen[room].add(await kv(ws, said, "pid"))
        await everyone_in.wait()
        await kv(ws, said, "say", text=f"{round_}:{name}")
        with trio.fail_after(10):
            while len([s for s in said if s.startswith(f"{round_}:")]) < 5:
                said.append(json.loads(await ws.get_message())["said"])
        assert sorted(said) == sorted(f"{round_}:{room}/{i}" for i in range(5))
        assert await kv(ws, said, "put", key=f"{name}:{round_}", value=round_) is None


@pytest.mark.parametrize("count", [2, 4])
async def test_every_room_lives_in_one_worker_whichever_accepts(tmp_path: Path, count: int) -> None:
    db = tmp_path / "rooms.sqlite3"
    rooms = [f"room-{n}" for n in range(8)]
    seen: dict[str, set[int]] = collections.defaultdict(set)
    options = ("--workers", str(count), "--storage", str(db), "--metrics")
    with supervised(WHERE, *options) as server:
        workers = server.workers()
        for round_ in range(3):  # each client connects again: another worker may accept
            everyone_in = Barrier(40)
            async with trio.open_nursery() as nursery:
                for room in rooms:
                    for i in range(5):
                        name = f"{room}/{i}"
                        nursery.start_soon(
                            member, server.url, room, name, round_, everyone_in, seen
                        )
        assert seen == {room: {workers[owner_slot(room, count)]} for room in rooms}
        # Other workers accepted some of them, and handed them over.
        page = http_get(server.port, "/metrics").decode()
        sent = re.findall(r'^roomkit_handoffs_total\{[^}]*"sent"[^}]*\} (\S+)$', page, re.M)
        assert sum(float(n) for n in sent) > 0, page
    assert server.process.returncode == 0
    written = {room: keys - {"goodbye"} for room, keys in stored_keys(db).items()}  # on_close's
    assert written == {
        room: {f"{room}/{i}:{round_}" for i in range(5) for round_ in range(3)} for room in rooms
    }


async def stream_writes(url: str, room: str, acked: dict[str, float], stop: trio.Event) -> None:
    """Put ``k0``, ``k1``, ... in ``room`` with ``roomkit.connect``, one at a time, each
    sent again until acknowledged; ``acked`` gets each key and when its ack came."""
    async with roomkit.connect(f"{url}/{room}", initial_delay=0.05, max_delay=0.2) as client:
        for n in itertools.count():
            if stop.is_set():
                return
            key = f"k{n}"
            while key not in acked:
                await client.send(json.dumps({"op": "put_key", "key": key, "value": n}))
                with trio.move_on_after(0.5):  # lost with a connection: sent again
                    while key not in acked:
                        reply = json.loads(await client.receive())
                        if reply.get("op") == "put_key" and reply["result"] == key:
                            acked[key] = time.time()


async def read_key(url: str, room: str, key: str) -> Any:
    async with open_client(f"{url}/{room}") as ws:
        return await kv(ws, [], "get", key=key)


@pytest.mark.parametrize("how", ["kill", "stop"])
async def test_a_dead_or_stopped_workers_rooms_come_back_with_every_acked_write(
    tmp_path: Path, how: str
) -> None:
    """kill -9 (or SIGSTOP) of a worker mid-stream: its rooms' clients come back, and
    its rooms' alarms fire, within 3 s (SIGSTOP: the time before it counts as hung,
    more); no acknowledged write is lost; the new worker owns its rooms under a new
    epoch, so that nothing the old one had in flight lands under the old."""
    db = tmp_path / "rooms.sqlite3"
    victims, others = rooms_of(0, 2, 2, "stream"), rooms_of(1, 2, 2, "stream")
    (alarmed,) = rooms_of(0, 2, 1, "alarm")
    acked: dict[str, dict[str, float]] = {room: {} for room in victims + others}
    # A restart takes well under a second on an idle machine; a loaded 2-core one (the
    # suite's own other processes) has taken 2.15 s, so the bound leaves room for that.
    allowed = 3.0 if how == "kill" else 3.0 + WORKER_TIMEOUT
    with supervised(WHERE, "--workers", "2", "--storage", str(db), *FAST_KILL) as server:
        victim = server.workers()[0]
        async with open_client(f"{server.url}/{alarmed}") as ws:
            await kv(ws, [], "set_alarm", delay=1.5)  # due 0.5 s after the kill, below
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for room in acked:
                nursery.start_soon(stream_writes, server.url, room, acked[room], stop)
            await trio.sleep(1.0)
            os.kill(victim, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
            struck = time.time()
            await trio.sleep(allowed + 0.5)
            stop.set()
        for room in victims + others:
            assert min(t for t in acked[room].values() if t > struck) - struck < allowed, room
        fired_at = await read_key(server.url, alarmed, "fired_at")
        assert struck < fired_at < struck + allowed
        replacement = server.workers()[0]
        assert replacement != victim and not alive(victim)
    assert server.process.returncode == 0
    stored = stored_keys(db)
    for room, keys in acked.items():
        assert set(keys) <= stored[room], room
    with contextlib.closing(sqlite3.connect(db)) as connection:
        claims = {
            room: (epoch, owner)
            for room, epoch, owner in connection.execute("SELECT room, epoch, owner FROM rooms")
        }
    for room in victims:  # claimed again, by the worker that replaced the victim
        epoch, owner = claims[room]
        assert epoch >= 2 and owner.endswith(f":{replacement}"), claims[room]


@pytest.mark.long
async def test_many_kills_and_stops_lose_no_acknowledged_write(tmp_path: Path) -> None:
    """``make test-long``: a worker killed or stopped every few seconds, 12 times."""
    db = tmp_path / "rooms.sqlite3"
    rooms = rooms_of(0, 2, 2, "stream") + rooms_of(1, 2, 2, "stream")
    acked: dict[str, dict[str, float]] = {room: {} for room in rooms}
    with supervised(WHERE, "--workers", "2", "--storage", str(db), *FAST_KILL) as server:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for room in rooms:
                nursery.start_soon(stream_writes, server.url, room, acked[room], stop)
            for strike in range(12):
                slot = strike % 2
                victim = server.workers()[slot]
                os.kill(victim, signal.SIGKILL if strike % 4 < 2 else signal.SIGSTOP)
                struck = time.time()
                await trio.sleep(2.0 + WORKER_TIMEOUT + 0.5)
                for room in rooms:
                    assert any(t > struck for t in acked[room].values()), (strike, room)
                assert server.workers()[slot] != victim
            stop.set()
    assert server.process.returncode == 0
    stored = stored_keys(db)
    for room, keys in acked.items():
        assert set(keys) <= stored[room], room


async def test_plain_requests_reach_their_rooms_worker_whichever_accepts(tmp_path: Path) -> None:
    db = tmp_path / "rooms.sqlite3"
    rooms = rooms_of(0, 2, 2, "http") + rooms_of(1, 2, 2, "http")
    options = ("--workers", "2", "--storage", str(db), "--metrics")
    with supervised("tests.httpapp:Counter", *options) as server:
        workers = server.workers()
        for round_ in range(1, 11):  # each POST is a new connection: either worker accepts
            for room in rooms:
                body = f"{room}:{round_}".encode()
                request = (
                    f"POST /{room} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n\r\n"
                ).encode()
                status, _, answer = await http(server.port, request + body)
                assert status == 200, answer
                assert json.loads(answer) == {
                    "room": room,
                    "count": round_,
                    "body": body.decode(),
                    "pid": workers[owner_slot(room, 2)],
                }
        # The worker that accepted some of them handed them to the room's.
        page = http_get(server.port, "/metrics").decode()
        sent = re.findall(r'^roomkit_handoffs_total\{[^}]*"sent"[^}]*\} (\S+)$', page, re.M)
        assert sum(float(n) for n in sent) > 0, page
        answered = re.findall(r"^roomkit_http_requests_total\{[^}]*\} (\S+)$", page, re.M)
        assert sum(float(n) for n in answered) == 40, page  # each counted once, where answered
    assert server.process.returncode == 0
