"""Calls between processes, for real: ``roomkit serve tests.callapp:Desk`` with
``--workers 2``, as the nodes of a cluster on the tests' PostgreSQL, and alone.

A room calls a room of another process from its turn (``self.rooms``, in
``Desk.on_request``); what is asserted is what the caller gets (results in order,
errors by class, ``ran``) and what the callee ran (its stderr) or stored (the
database, read directly once the answer came: an answer comes once durable). Each test
starts its processes once and checks several things with them, to stay short.
"""

from __future__ import annotations

import json
import secrets
import signal
import sqlite3
import sys
import time
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any

import pytest
import trio

from roomkit._core.calls import call_auth, call_head
from roomkit._roomid import RoomId

from .helpers import http
from .test_cluster import SECRET, Node, client, eventually, node, stored
from .test_workers import rooms_of, supervised

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="finds processes in /proc"
)

DESK = "tests.callapp:Desk"


def asked(room: str, method: str, *args: Any, timeout: float | None = 10, times: int = 1) -> bytes:
    """The POST that makes a Desk call ``method(*args)`` of ``room`` ``times`` times."""
    spec = {"room": room, "method": method, "args": list(args), "timeout": timeout, "times": times}
    return json.dumps(spec).encode()


async def desk(port: int, room: str, body: bytes) -> dict[str, Any]:
    """POST ``body`` to the Desk ``room`` on the server at ``port``: its JSON answer."""
    head = f"POST /{room} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n\r\n"
    status, _, answer = await http(port, head.encode() + body)
    assert status == 200, answer
    parsed: dict[str, Any] = json.loads(answer)
    return parsed


def total(db: Path, room: str) -> Any:
    """The stored ``total`` of ``room`` in the SQLite file ``db``, read directly."""
    with closing(sqlite3.connect(db)) as connection:
        row = connection.execute(
            "SELECT value FROM kv WHERE room = ? AND key = 'total'", (room,)
        ).fetchone()
    return None if row is None else json.loads(row[0])


#: The body of ``add(1)``, as a call's request carries it.
ADD_ONE = b'{"args":[1],"kwargs":{},"chain":[]}'


def raw_call(room: str, method: str, auth: str | None = None) -> bytes:
    """A call's request of ``method(1)`` of ``room``, as the network could send it."""
    return call_head(RoomId("", room), method, 5.0, ADD_ONE, auth) + ADD_ONE


def signed(method: str, room: str) -> str:
    """The auth of :func:`raw_call`'s request, signed with the cluster's secret now."""
    nonce = secrets.token_urlsafe(16)
    now = time.time()
    return call_auth(SECRET.encode(), method, "5.000", f"/{room}", ADD_ONE, now=now, nonce=nonce)


def forged() -> str:
    """An auth that is well formed and recent, but signed by nobody."""
    return f"t={int(time.time())};n={'n' * 22};sig={'A' * 43}"


REPLAYED = b"Forbidden: roomkit-call-auth: replayed: this signature was used here already"


async def test_rooms_of_two_workers_call_each_other(tmp_path: Path) -> None:
    db = tmp_path / "rooms.sqlite3"
    (a,), (b, sleepy) = rooms_of(0, 2, 1, "a"), rooms_of(1, 2, 2, "b")
    with supervised(DESK, "--workers", "2", "--storage", str(db)) as server:
        workers, port = server.workers(), server.port
        # A call's result comes once the callee's write is durable.
        assert await desk(port, a, asked(b, "add", 5)) == {"results": [5], "pid": workers[0]}
        assert total(db, b) == 5
        assert await desk(port, b, asked(a, "pid")) == {"results": [workers[0]], "pid": workers[1]}
        # Many calls in a row, in order.
        many = await desk(port, a, asked(b, "add", 1, times=20))
        assert many["results"] == list(range(6, 26))
        assert total(db, b) == 25
        # A raising method's error reaches the caller, its writes rolled back.
        error = {"class": "RoomCallError", "type": "ValueError", "message": "bad", "ran": False}
        assert await desk(port, a, asked(b, "fail", "bad")) == {"error": error}
        # a -> b -> a is a cycle, refused before it could deadlock.
        cycle = (await desk(port, a, asked(b, "via", a, "pid", [])))["error"]
        assert (cycle["class"], cycle["type"], cycle["ran"]) == ("RoomCallCycle",) * 2 + (False,)
        assert f"/{a} -> /{b} -> /{a}" in cycle["message"]
        # A call still running at its deadline: its fate is unknown.
        late = (await desk(port, a, asked(sleepy, "sleep", 2, timeout=0.5)))["error"]
        assert (late["class"], late["ran"]) == ("RoomCallTimeout", None)
        # A call from the network is refused: no secret could have signed it.
        status, answer = await raw(port, raw_call(b, "add"))
        assert (status, answer) == (403, b"Forbidden: roomkit-call is roomkit's own")
        assert total(db, b) == 25
    assert server.process.returncode == 0


async def test_a_single_server_refuses_a_call_from_the_network(tmp_path: Path) -> None:
    with supervised(DESK, "--storage", str(tmp_path / "rooms.sqlite3")) as server:
        status, answer = await raw(server.port, raw_call("lobby", "add"))
        assert (status, answer) == (403, b"Forbidden: roomkit-call is roomkit's own")
        assert not [line for line in server.lines if "ran add" in line]


def test_a_call_reaches_the_room_another_node_owns_and_learns_when_it_died(
    postgres_url: str,
) -> None:
    with ExitStack() as stack:
        a, b = (stack.enter_context(node(postgres_url, app=DESK)) for _ in range(2))
        with client(b.url("held")):  # the room lives in b while a client is there
            got = trio.run(desk, a.port, "caller", asked("held", "add", 2))
            assert got == {"results": [2], "pid": a.pid}
            assert stored(postgres_url, "held")["total"] == 2
            assert trio.run(desk, a.port, "caller", asked("held", "pid"))["results"] == [b.pid]
            # Forged, unsigned, or signed for another call: 403, and nothing runs.
            for auth in (None, "t=1;sig=" + "A" * 43, forged(), signed("pid", "held")):
                status, answer = trio.run(raw, b.port, raw_call("held", "add", auth))
                assert status == 403, answer
            assert len([line for line in b.lines if "ran add in held" in line]) == 1
            auth = signed("add", "held")
            status, answer = trio.run(raw, a.port, raw_call("held", "add", auth))
            assert (status, json.loads(answer)) == (200, {"result": 3})  # a forwarded it to b
            # The same request again, to either node: a replay, refused by its owner.
            for port in (a.port, b.port):
                status, answer = trio.run(raw, port, raw_call("held", "add", auth))
                assert (status, answer) == (403, REPLAYED)
            assert len([line for line in b.lines if "ran add in held" in line]) == 2
            # Signed, but no @rpc method: 404.
            auth = signed("on_request", "held")
            status, answer = trio.run(raw, b.port, raw_call("held", "on_request", auth))
            assert (status, answer) == (404, b"Desk has no @rpc method 'on_request'")
            # The owner dies during a call: whether it ran is unknown.
            died = trio.run(call_and_kill, a, b)["error"]
            assert (died["class"], died["ran"]) == ("RoomCallError", None), died
            assert "ended" in died["message"]
        # Once b's lease has run out, the room's next owner serves the next call.
        got = eventually(
            lambda: trio.run(desk, a.port, "caller", asked("held", "pid")).get("results"),
            "a call served once the room moved",
        )
        assert got == [a.pid]


async def call_and_kill(caller: Node, owner: Node) -> dict[str, Any]:
    """What a call from ``caller`` to ``held.sleep`` gets when ``owner`` is killed as
    the call runs."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(kill_when_sleeping, owner)
        return await desk(caller.port, "caller", asked("held", "sleep", 5))


async def kill_when_sleeping(owner: Node) -> None:
    def sleeping() -> bool | None:
        return any("ran sleep in held" in line for line in owner.lines) or None

    await trio.to_thread.run_sync(eventually, sleeping, "the call running")
    owner.process.send_signal(signal.SIGKILL)


async def raw(port: int, request: bytes) -> tuple[int, bytes]:
    """The status and body of the answer to ``request`` at ``port``."""
    status, _, answer = await http(port, request)
    return status, answer


def test_without_a_cluster_secret_a_call_to_another_node_is_refused(postgres_url: str) -> None:
    with ExitStack() as stack:
        a, b = (stack.enter_context(node(postgres_url, app=DESK, secret=None)) for _ in range(2))
        with client(b.url("held")):
            refused = trio.run(desk, a.port, "caller", asked("held", "add", 1))["error"]
            assert (refused["class"], refused["ran"]) == ("RoomCallError", False)
            assert "--cluster-secret" in refused["message"]
            # The owner cannot verify a call either: none from the network runs.
            assert trio.run(raw, b.port, raw_call("held", "add"))[0] == 403
            assert trio.run(raw, a.port, raw_call("held", "add"))[0] == 403
            assert not any("ran add" in line for line in a.lines + b.lines)
            # Calls within a node still work.
            assert trio.run(desk, b.port, "near", asked("held", "pid"))["results"] == [b.pid]


def test_calls_reach_the_workers_of_another_node(postgres_url: str) -> None:
    with (
        node(postgres_url, "--workers", "2", app=DESK) as a,
        node(postgres_url, app=DESK) as b,
        ExitStack() as held,
    ):
        rooms = rooms_of(0, 2, 1, "w") + rooms_of(1, 2, 1, "w")
        for room in rooms:  # each lives in one of a's workers while its client is there
            held.enter_context(client(a.url(room)))
        # b's calls are forwarded to a, handed to the room's worker, and checked there.
        pids = [trio.run(desk, b.port, "caller", asked(room, "pid"))["results"] for room in rooms]
        assert len({pid for (pid,) in pids}) == 2
        assert not {a.pid, b.pid} & {pid for (pid,) in pids}


def test_a_forged_call_to_a_node_of_two_workers_is_refused_in_either(postgres_url: str) -> None:
    with node(postgres_url, "--workers", "2", app=DESK) as a, ExitStack() as held:
        rooms = rooms_of(0, 2, 1, "f") + rooms_of(1, 2, 1, "f")
        for room in rooms:  # each lives in one of the workers while its client is there
            held.enter_context(client(a.url(room)))
        # Through the one port, each try reaches either worker: the one whose room it is
        # not hands it over untrusted (a well-formed forgery passes the first check),
        # and the room's worker refuses it. Unsigned or malformed: refused at once.
        for room in rooms:
            for auth in (None, "t=1;sig=" + "A" * 43, forged(), signed("pid", room)) * 3:
                status, answer = trio.run(raw, a.port, raw_call(room, "add", auth))
                assert status == 403, answer
        assert not any("ran add" in line for line in a.lines)
        # Signed for it, each runs once, in its room's worker.
        for room in rooms:
            status, answer = trio.run(raw, a.port, raw_call(room, "add", signed("add", room)))
            assert (status, json.loads(answer)) == (200, {"result": 1}), answer

        def ran() -> list[str] | None:  # its stderr is read by a thread: it may lag
            found = sorted(line.split()[-1] for line in a.lines if "ran add in" in line)
            return found if len(found) >= len(rooms) else None

        assert eventually(ran, "the signed calls' lines") == sorted(rooms)
