"""A cluster of ``roomkit serve`` nodes on one PostgreSQL, for real.

Every test starts two or three real ``roomkit serve tests.clusterapp:Ledger --storage
postgresql://...`` processes on 127.0.0.1 (port 0, each advertising its bound port), on
a fresh database of the tests' PostgreSQL (``tests/pg.py``), with a short lease and a
shared ``--cluster-secret``, and sends them real signals: kill -9, SIGSTOP and SIGCONT,
SIGTERM. Clients are the ``websockets`` package's and roomkit's own. Waiting is polling
with a generous bound from above; what is asserted is who serves a room and what it
holds, in order, never how fast.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from typing import Any, TypeVar

import attrs
import psycopg
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

import roomkit
from roomkit._metrics import FORWARD_OUTCOMES

from .helpers import ROOT, call, roomkit_env
from .pg import PostgresServer

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="stops and kills processes"
)

LEDGER = "tests.clusterapp:Ledger"
#: The nodes' lease, in seconds: short, so that takeovers are quick.
LEASE = 1.0
SECRET = "the tests' cluster secret"
#: The most any wait below takes; a healthy machine needs a fraction of it.
PATIENCE = 20.0

T = TypeVar("T")


@attrs.define
class Node:
    """A running ``roomkit serve`` node and what it wrote to stderr so far."""

    process: subprocess.Popen[str]
    port: int
    lines: list[str]

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, room: str) -> str:
        return f"ws://127.0.0.1:{self.port}/{room}"


@contextmanager
def node(
    database: str,
    *options: str,
    lease: float = LEASE,
    app: str = LEDGER,
    secret: str | None = SECRET,
) -> Iterator[Node]:
    """``roomkit serve LEDGER`` (or ``app``) as a member of the cluster on ``database``
    (with ``secret``, if any), once it listens; killed on the way out, however the
    block ends."""
    command = [sys.executable, "-m", "roomkit", "serve", app, "--port", "0"]
    command += ["--storage", database, "--lease", str(lease)]
    command += [] if secret is None else ["--cluster-secret", secret]
    command += ["--handshake-timeout", "2", *options]
    process = subprocess.Popen(
        command, cwd=ROOT, stderr=subprocess.PIPE, text=True, env=roomkit_env()
    )
    assert process.stderr is not None
    lines: list[str] = []
    port = None
    reader = threading.Thread(target=lines.extend, args=(process.stderr,), daemon=True)
    try:
        for line in process.stderr:
            lines.append(line)
            if match := re.search(r"listening on ws://[^:]+:(\d+)", line):
                port = int(match[1])
                break
        assert port is not None, f"the node did not start: {lines!r}"
        reader.start()
        yield Node(process, port, lines)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)  # a stopped one dies too
            process.kill()
        process.wait()
        if reader.is_alive():
            reader.join()
        process.stderr.close()


def eventually(attempt: Callable[[], T | None], what: str, within: float = PATIENCE) -> T:
    """What ``attempt`` returns first that is not None, trying every 50 ms."""
    deadline = time.monotonic() + within
    while True:
        result = attempt()
        if result is not None:
            return result
        assert time.monotonic() < deadline, f"not within {within} s: {what}"
        time.sleep(0.05)


@contextmanager
def client(url: str) -> Iterator[ClientConnection]:
    """A ``websockets`` client of ``url``, retrying while the cluster answers 503 (a
    room moving) or the node is not reachable."""

    def attempt() -> ClientConnection | None:
        try:
            return connect(url, open_timeout=5)
        except (InvalidStatus, OSError, TimeoutError) as exc:
            if isinstance(exc, InvalidStatus):
                assert exc.response.status_code == 503, exc
            return None

    ws = eventually(attempt, f"a handshake with {url}")
    with ws:
        yield ws


def served_by(url: str) -> tuple[int, list[Any]]:
    """The pid of the process that serves the room at ``url``, and its entries."""
    with client(url) as ws:
        return call(ws, "pid"), call(ws, "entries")


def append(url: str, value: Any) -> int | None:
    """Append ``value`` to the room at ``url``: the pid that served it; None if the
    connection was closed first (the commit failed, and nothing of it landed)."""
    with client(url) as ws:
        try:
            pid = int(call(ws, "pid"))
            call(ws, "append", value=value)
        except ConnectionClosed:
            return None
        return pid


def closed_with(ws: ClientConnection) -> int | None:
    """The close code ``ws`` gets, reading whatever comes before it."""
    try:
        while True:
            ws.recv(timeout=PATIENCE)
    except ConnectionClosed as exc:
        return None if exc.rcvd is None else exc.rcvd.code


def stored(database: str, room: str) -> dict[str, Any]:
    """The room's rows in the database, read directly."""
    with psycopg.connect(database) as db:
        rows = db.execute(
            "SELECT key, value FROM roomkit.kv WHERE namespace = '' AND room = %s", (room,)
        ).fetchall()
    return {key: json.loads(value) for key, value in rows}


def handshake(port: int, header: str) -> bytes:
    """The start of the answer to a WebSocket handshake for /lobby with ``header``."""
    with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE) as sock:
        sock.sendall(
            b"GET /lobby HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" + header.encode() + b"\r\n\r\n"
        )
        return sock.recv(4096)


def forwarded(at: Node, outcome: str) -> float:
    """How many handshakes the node ``at`` forwarded with ``outcome``, as its
    ``/metrics`` says."""
    with urllib.request.urlopen(f"http://127.0.0.1:{at.port}/metrics", timeout=PATIENCE) as page:
        families = text_string_to_metric_families(page.read().decode())
        samples = {(s.name, s.labels.get("outcome")): s.value for f in families for s in f.samples}
    return samples["roomkit_forwarded_total", outcome]


def owner_of(database: str, room: str) -> str | None:
    """The room's owner as the directory has it (None: released, or never claimed)."""
    with psycopg.connect(database) as db:
        row = db.execute(
            "SELECT owner FROM roomkit.rooms WHERE namespace = '' AND room = %s", (room,)
        ).fetchone()
    return None if row is None else row[0]


def released(database: str, room: str) -> bool | None:
    """True once the room has no owner in the directory (None until then)."""
    return True if owner_of(database, room) is None else None


def members(database: str) -> set[str]:
    with psycopg.connect(database) as db:
        return {member for (member,) in db.execute("SELECT member FROM roomkit.members")}


def test_a_client_of_any_node_reaches_the_owners_room_with_its_own_address(
    postgres_url: str,
) -> None:
    with ExitStack() as stack:
        a, b, c = (stack.enter_context(node(postgres_url, "--metrics")) for _ in range(3))
        with client(a.url("lobby")) as held:  # the room lives in a while a client is there
            assert call(held, "pid") == a.pid
            assert call(held, "append", value="via a") == 0
            for other in (b, c):
                with client(other.url("lobby")) as ws:
                    assert call(ws, "pid") == a.pid  # forwarded to the owner
                    host, port = ws.local_address[:2]
                    assert call(ws, "remote") == [host, port]  # the client's, not b's
                    assert call(ws, "header", name="roomkit-forwarded") is None  # the nodes'
                    assert call(ws, "header", name="host") == f"127.0.0.1:{other.port}"
                    call(ws, "append", value=f"via {other.port}")
            entries = ["via a", f"via {b.port}", f"via {c.port}"]
            assert served_by(c.url("lobby")) == (a.pid, entries)
        assert [forwarded(n, "spliced") for n in (a, b, c)] == [0, 1, 2]
        assert members(postgres_url) == {f"127.0.0.1:{n.port}" for n in (a, b, c)}
        # Only a node can vouch for a client's address: a client's own header is refused.
        now = int(time.time())
        for value in (f"for=203.0.113.7:4242;t={now};sig={'A' * 43}", f"for=1.2.3.4:5;t={now}"):
            assert handshake(a.port, f"roomkit-forwarded: {value}").startswith(b"HTTP/1.1 403 ")


def test_a_room_whose_clients_all_left_starts_again_on_the_node_its_next_client_reaches(
    postgres_url: str,
) -> None:
    # A lease far longer than the test: b's directory cache of "cached" outlives the
    # room's first life in a, and yet b serves it next.
    long = 60.0
    with node(postgres_url, lease=long) as a, node(postgres_url, lease=long) as b:
        for room in ("direct", "cached"):
            with client(a.url(room)) as ws:
                assert call(ws, "pid") == a.pid
                call(ws, "append", value="in a")
                if room == "cached":  # b forwards a client to a, and remembers a
                    assert served_by(b.url(room)) == (a.pid, ["in a"])
        for room in ("direct", "cached"):  # everyone left: a released the rooms
            eventually(partial(released, postgres_url, room), f"a release of {room}")
        # b serves both itself: "cached" after one 503 from a (b's entry was stale),
        # which the client retries.
        for room in ("direct", "cached"):
            with client(b.url(room)) as ws:
                assert (call(ws, "pid"), call(ws, "entries")) == (b.pid, ["in a"])
                assert owner_of(postgres_url, room) == f"127.0.0.1:{b.port}"


def test_kill_9_of_the_owner_moves_its_rooms_and_their_alarms_to_another_node(
    postgres_url: str,
) -> None:
    with node(postgres_url) as a, node(postgres_url) as b:
        with client(a.url("lobby")) as ws:  # nobody owns it: a, where it is asked for
            assert call(ws, "pid") == a.pid
            call(ws, "append", value="before")
        with client(a.url("alarmed")) as ws:
            call(ws, "set_alarm", delay=2 * LEASE)  # due after the kill, on no one
        a.process.kill()
        killed = time.monotonic()
        a.process.wait()
        assert served_by(b.url("lobby")) == (b.pid, ["before"])
        print(f"failover after kill -9: {time.monotonic() - killed:.2f} s (lease {LEASE} s)")
        # Nobody connects to "alarmed" again: b's poll of orphan alarms finds it.
        fired_by = eventually(
            lambda: stored(postgres_url, "alarmed").get("fired_by"), "the alarm fired"
        )
        assert fired_by == b.pid


def test_a_stopped_owner_is_fenced_and_its_stale_write_never_lands(postgres_url: str) -> None:
    with node(postgres_url) as a, node(postgres_url) as b:
        with client(a.url("stopped")) as old:
            assert call(old, "pid") == a.pid
            assert call(old, "append", value="acked") == 0
            os.kill(a.pid, signal.SIGSTOP)
            old.send(json.dumps({"op": "append", "value": "stale"}))  # waits in a's socket
            assert served_by(b.url("stopped")) == (b.pid, ["acked"])  # a's lease ran out
            with client(b.url("stopped")) as new:
                os.kill(a.pid, signal.SIGCONT)
                assert closed_with(old) == 1012  # "Room moved": no answer to "stale"
                assert call(new, "append", value="after") == 1
                # a forwards to b, while b holds the room
                assert served_by(a.url("stopped")) == (b.pid, ["acked", "after"])
        assert stored(postgres_url, "stopped")["count"] == 2
    # a ran no hook for "stale", even the first event it handled once resumed.
    assert "appending 'acked'\n" in a.lines
    assert "appending 'stale'\n" not in a.lines
    assert not any("Traceback" in line for line in a.lines + b.lines)


def test_sigterm_drains_the_rooms_to_another_node_at_once(postgres_url: str) -> None:
    # A lease far longer than the waits: the room can only move this soon if a's drain
    # released it. And a drain timeout far longer too, with a connection that a splices
    # to b open throughout: its client has no reason to leave, and the release must not
    # wait for it.
    long = 60.0
    drain = ("--drain-timeout", "30")
    with node(postgres_url, *drain, lease=long) as a, node(postgres_url, lease=long) as b:

        async def main() -> tuple[int, int, list[Any]]:
            opened = trio.Event()  # replaced below: then its open is the one after a's 1012
            async with roomkit.connect(b.url("drained"), on_open=lambda _: opened.set()) as room:
                await room.send(json.dumps({"op": "pid"}))
                first = json.loads(await room.receive())["result"]
                await room.send(json.dumps({"op": "append", "value": "kept"}))
                await room.receive()
                opened = trio.Event()
                a.process.terminate()
                with trio.fail_after(PATIENCE / 2):
                    await opened.wait()
                    await room.send(json.dumps({"op": "pid"}))
                    then = json.loads(await room.receive())["result"]
                    await room.send(json.dumps({"op": "entries"}))
                    return first, then, json.loads(await room.receive())["result"]

        # Which node owns a room is the placement's business: make "drained" a's and
        # "elsewhere" b's, each kept there by a client of its own (a's drain closes its).
        with client(a.url("drained")) as ws, client(b.url("elsewhere")) as at_b:
            assert call(ws, "pid") == a.pid
            with client(a.url("elsewhere")) as through_a:
                assert call(at_b, "pid") == call(through_a, "pid") == b.pid
                first, then, entries = trio.run(main)
                assert (first, then, entries) == (a.pid, b.pid, ["kept"])
                assert call(through_a, "pid") == b.pid  # still spliced while a drains
        a.process.wait(timeout=PATIENCE)
        assert a.process.returncode == 0
        assert members(postgres_url) == {f"127.0.0.1:{b.port}"}


def test_after_a_postgresql_restart_the_nodes_serve_on_with_every_acknowledged_write(
    postgres: PostgresServer, postgres_url: str
) -> None:
    if not postgres.restartable:
        pytest.skip("ROOMKIT_TEST_POSTGRES's server is never restarted")
    with node(postgres_url) as a, node(postgres_url) as b:
        with client(a.url("lobby")) as ws:
            assert call(ws, "append", value="before") == 0
            postgres.restart()
            # The client may have been closed (a commit failed: 1011; or a's lease ran out
            # while PostgreSQL was away: 1012); either way, the room comes back.
        eventually(partial(append, b.url("lobby"), "after"), "an append after it")
        assert served_by(a.url("lobby"))[1] == ["before", "after"]
        assert a.process.poll() is None and b.process.poll() is None


def test_workers_of_a_node_are_members_of_the_cluster(postgres_url: str) -> None:
    with node(postgres_url, "--workers", "2") as a, node(postgres_url) as b:
        rooms = [f"room-{i}" for i in range(6)]
        owners = {}
        with ExitStack() as held:
            for room in rooms:  # each room through a first (held there by its client)...
                ws = held.enter_context(client(a.url(room)))
                owners[room] = call(ws, "pid")
                call(ws, "append", value=room)
            assert len(set(owners.values())) == 2  # both workers hold rooms
            for room in rooms:  # ...and b reaches each through a's workers
                assert served_by(b.url(room)) == (owners[room], [room])
        a_members = {f"127.0.0.1:{a.port}/0", f"127.0.0.1:{a.port}/1"}
        assert members(postgres_url) == a_members | {f"127.0.0.1:{b.port}"}


def post(port: int, room: str, body: bytes) -> tuple[int, bytes]:
    """POST ``body`` to ``room`` on the node at ``port``: the status and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE) as sock:
        head = f"POST /{room} HTTP/1.1\r\nHost: x\r\ncontent-length: {len(body)}\r\n\r\n"
        sock.sendall(head.encode() + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head_bytes, _, content = answer.partition(b"\r\n\r\n")
    return int(head_bytes.split()[1]), content


def test_a_plain_request_to_any_node_reaches_the_owners_room(postgres_url: str) -> None:
    counter = "tests.httpapp:Counter"
    with ExitStack() as stack:
        a, b = (stack.enter_context(node(postgres_url, "--metrics", app=counter)) for _ in range(2))
        with client(a.url("lobby")):  # the room lives in a while a client is there
            for n, at in enumerate((a, b, b, a, b), start=1):
                status, answer = post(at.port, "lobby", f"via {at.port}".encode())
                assert status == 200, answer
                assert json.loads(answer) == {
                    "room": "lobby",
                    "count": n,
                    "body": f"via {at.port}",
                    "pid": a.pid,  # b forwarded it, signed, and a verified it
                }
            outcomes = set(FORWARD_OUTCOMES) - {"unreachable", "malformed"}
            assert sum(forwarded(b, outcome) for outcome in outcomes) == 3
            assert forwarded(b, "unreachable") == forwarded(a, "refused") == 0
