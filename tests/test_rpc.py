"""Calls into rooms (``@roomkit.rpc``, ``server.rooms``), in one process.

Rules: roomkit.testing's in-memory transport and pytest-trio's ``autojump_clock``, but
for one test over real sockets (``serve``, the ``websockets`` package's client); every
wait is bounded by ``fail_after``; times asserted are virtual ones.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Sequence
from typing import Any

import attrs
import pytest
import trio
from websockets.sync.client import connect

import roomkit
from roomkit._core.calls import Failed, call_auth, parse_answer, timeout_value
from roomkit.storage import Changes, Claim, RoomId, SQLiteStore
from roomkit.storage._sqlite import SQLiteCore
from roomkit.testing import open_test_server

from .helpers import Start, exchange, memory_http, memory_stream
from .test_actor import host_of
from .test_member import Directory
from .test_storage import GatedStore


class Counter(roomkit.Room):
    """Counts in storage; tells its clients of each change."""

    rate_limit = None

    async def on_start(self) -> None:
        self.started = getattr(self, "started", 0) + 1
        self.count: int = await self.storage.get("count", 0)

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        self.broadcast(f"message {message}")

    @roomkit.rpc
    async def add(self, n: int, *, note: str = "") -> int:
        self.count += n
        await self.storage.put("count", self.count)
        self.broadcast(f"count {self.count}{note}")
        return self.count

    @roomkit.rpc
    async def fail(self, n: int) -> None:
        await self.storage.put("count", n)
        self.broadcast("never")
        raise ValueError(f"bad {n}")

    @roomkit.rpc
    async def nap(self, seconds: float) -> str:
        await trio.sleep(seconds)
        return "rested"

    @roomkit.rpc
    async def mutate(self, items: list[int]) -> list[int]:
        items.append(99)
        return items

    async def not_rpc(self) -> None:
        """No @rpc: not callable."""


async def test_a_call_runs_in_order_with_messages(autojump_clock: trio.abc.Clock) -> None:
    async with (
        open_test_server(Counter) as server,
        server.connect("/a") as client,
        trio.open_nursery() as nursery,
    ):
        stub = server.rooms.get("a")
        assert (stub.name, stub.prefix) == ("a", "")
        nursery.start_soon(stub.nap, 1)  # the room is busy: what follows queues
        await trio.testing.wait_all_tasks_blocked()
        await client.send("one")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(stub.add, 2)
        await trio.testing.wait_all_tasks_blocked()
        await client.send("two")
        await trio.testing.wait_all_tasks_blocked()
        assert await stub.call("add", 3, note="!") == 5
        assert [await client.receive() for _ in range(4)] == [
            "message one",
            "count 2",
            "message two",
            "count 5!",
        ]


async def test_a_call_wakes_a_hibernated_room(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_server(Counter) as server, server.connect("/a") as client:
        assert await server.rooms.get("a").add(4) == 4
        await client.receive()
        await server.hibernate("a")
        assert server.room("a") is None
        assert await server.rooms.get("a").add(1) == 5  # on_start read 4 back
        room = server.room("a")
        assert isinstance(room, Counter) and room.started == 1  # a new instance
        assert await client.receive() == "count 5"


async def test_a_call_starts_a_room_nobody_is_connected_to(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_test_server(Counter) as server:
        assert await server.rooms.get("b").add(7) == 7
        await trio.testing.wait_all_tasks_blocked()
        assert server.room("b") is None  # ended once idle
        assert await server.rooms.get("b").add(1) == 8  # its data stayed


class HeldStore(GatedStore):
    """test_storage's GatedStore over SQLite in memory, which also says when a held
    commit waits, and fails commits while ``broken``."""

    def __init__(self) -> None:
        super().__init__(SQLiteStore(SQLiteCore(":memory:"), in_thread=False))
        self.broken = False
        self.held = False
        self.waiting = trio.Event()

    def hold(self) -> None:
        super().hold()
        self.held = True

    def release(self) -> None:
        self.held = False
        super().release()

    async def commit(self, batch: Sequence[tuple[Claim, Changes]]) -> list[roomkit.FencedError]:
        if self.held:
            self.waiting.set()
        if self.broken:
            raise OSError("disk gone")
        return await super().commit(batch)


async def test_the_result_comes_only_after_the_commit(autojump_clock: trio.abc.Clock) -> None:
    store = HeldStore()
    async with open_test_server(Counter, storage=store) as server:
        async with server.connect("/a") as client, trio.open_nursery() as nursery:
            store.hold()
            results: list[int] = []

            async def call() -> None:
                results.append(await server.rooms.get("a").add(1))

            nursery.start_soon(call)
            await store.waiting.wait()
            await trio.sleep(5)
            assert results == []
            await client.receive_nothing()
            store.release()
            assert await client.receive() == "count 1"
        assert results == [1]
    await store.aclose()


async def test_a_failed_commit_answers_an_error_and_sends_nothing(
    autojump_clock: trio.abc.Clock,
) -> None:
    store = HeldStore()
    async with open_test_server(Counter, storage=store) as server:
        await server.rooms.get("a").add(1)  # the room's claim and first commit
        async with server.connect("/a") as client:
            store.broken = True
            with pytest.raises(roomkit.RoomCallError) as raised:
                await server.rooms.get("a").add(1)
            assert (raised.value.type, raised.value.ran) == ("StorageError", None)
            assert await client.receive_close() == (1011, "Storage failure")
    await store.aclose()


async def test_a_raising_method_is_rolled_back(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_server(Counter) as server, server.connect("/a") as client:
        stub = server.rooms.get("a")
        with pytest.raises(roomkit.RoomCallError) as raised:
            await stub.fail(41)
        error = raised.value
        assert (error.room, error.type, error.message, error.ran) == (
            "/a",
            "ValueError",
            "bad 41",
            False,
        )
        assert str(error) == "room /a: ValueError: bad 41"
        assert type(error) is roomkit.RoomCallError
        await client.receive_nothing()
        assert await stub.add(0) == 0  # its write never landed, in memory or in storage
        assert await client.receive() == "count 0"
        await server.hibernate("a")
        assert await stub.add(0) == 0


async def test_a_call_queued_past_its_deadline_never_runs(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_server(Counter) as server, trio.open_nursery() as nursery:
        stub = server.rooms.get("a")
        nursery.start_soon(stub.nap, 10)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        with pytest.raises(roomkit.RoomCallTimeout) as raised:
            await stub.call("add", 1, timeout=2)
        assert raised.value.ran is False
        assert trio.current_time() - start == 2
        await trio.sleep(10)
        assert await stub.add(0) == 0  # the add never ran


async def test_a_call_whose_deadline_passes_as_its_room_starts_never_runs(
    autojump_clock: trio.abc.Clock,
) -> None:
    class SlowStart(Counter):
        async def on_start(self) -> None:
            await trio.sleep(5)  # a slow load from storage, say
            await super().on_start()

    async with open_test_server(SlowStart) as server:
        stub = server.rooms.get("a")
        with pytest.raises(roomkit.RoomCallTimeout) as raised:
            await stub.call("add", 1, timeout=1)
        assert raised.value.ran is False  # and it is not run once the room has started
        await trio.sleep(10)
        assert await stub.add(0) == 0


async def test_a_call_running_at_its_deadline_still_completes(
    autojump_clock: trio.abc.Clock,
) -> None:
    class Slow(Counter):
        @roomkit.rpc
        async def slow_add(self, n: int) -> int:
            await trio.sleep(5)
            return await self.add(n)

    async with open_test_server(Slow) as server, server.connect("/a") as client:
        stub = server.rooms.get("a")
        with pytest.raises(roomkit.RoomCallTimeout) as raised:
            await stub.call("slow_add", 3, timeout=1)
        assert (raised.value.ran, raised.value.type) == (None, "RoomCallTimeout")
        assert await client.receive() == "count 3"  # it ran to its end
        assert await stub.add(0) == 3


class Ping(roomkit.Room):
    @roomkit.rpc
    async def ping(self, target: str, depth: int) -> list[str]:
        if depth == 0:
            return [self.name]
        return [self.name, *await self.rooms.get(target).ping(self.name, depth - 1)]

    @roomkit.rpc
    async def me(self) -> str:
        return await self.rooms.get(self.name).me()


async def test_cycles_are_refused_instead_of_deadlocking(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_server(Ping) as server:
        with trio.fail_after(1):
            assert await server.rooms.get("a").ping("b", 1) == ["a", "b"]
            with pytest.raises(roomkit.RoomCallCycle) as raised:
                await server.rooms.get("a").ping("b", 2)  # a -> b -> a
            assert (raised.value.room, raised.value.ran) == ("/a", False)
            assert raised.value.type == "RoomCallCycle"
            assert "/a -> /b -> /a" in raised.value.message
            with pytest.raises(roomkit.RoomCallCycle):
                await server.rooms.get("c").me()  # c -> c


class Greeter(roomkit.Room):
    """Calls the room ``a`` as it starts (a call from on_start), and keeps what it got."""

    async def on_start(self) -> None:
        try:
            self.heard = await self.rooms.get("a").name_of()
        except roomkit.RoomCallCycle as exc:
            self.heard = exc.message

    @roomkit.rpc
    async def name_of(self) -> str:
        return self.name

    @roomkit.rpc
    async def ask(self, target: str) -> str:
        return await self.rooms.get(target).heard_first()

    @roomkit.rpc
    async def heard_first(self) -> str:
        return self.heard


async def test_a_cycle_through_a_starting_room_is_refused(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_server(Greeter) as server:
        await server.rooms.get("a").name_of()  # a is live, its own on_start done
        with trio.fail_after(1):  # a -> b, whose on_start calls a: a cycle
            heard = await server.rooms.get("a").ask("b")
        assert "/a -> /b -> /a" in heard


@attrs.frozen
class Point:
    x: int
    y_value: int


class Geometry(roomkit.Room):
    protocol = roomkit.Protocol(Point, Point, field_names="camelCase")

    @roomkit.rpc
    async def shift(self, point: Point, by: int, raw: Any = None) -> Point:
        assert isinstance(point, Point)
        return Point(point.x + by, point.y_value + by)

    @roomkit.rpc
    async def wire(self, point: Point) -> dict[str, Any]:
        return {"seen": point.y_value}

    @roomkit.rpc
    async def lie(self) -> int:
        return "not an int"  # type: ignore[return-value]


async def test_arguments_and_results_go_by_their_annotations(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_test_server(Geometry) as server:
        stub = server.rooms.get("g")
        assert await stub.shift(Point(1, 2), by=10) == Point(11, 12)
        assert await stub.wire(Point(1, 5)) == {"seen": 5}
        with pytest.raises(roomkit.RoomCallError) as raised:
            await stub.lie()
        assert (raised.value.type, raised.value.ran) == ("TypeError", True)


async def test_mistakes_are_found_before_anything_is_sent(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_server({"/c": Counter}) as server:
        stub = server.rooms.get("a", "/c")
        with pytest.raises(AttributeError, match="not_rpc"):
            stub.not_rpc  # noqa: B018
        with pytest.raises(AttributeError):
            await stub.call("on_message", None, None)
        with pytest.raises(TypeError, match="add"):
            await stub.add()
        with pytest.raises(TypeError):
            await stub.add(1, 2)
        with pytest.raises(ValueError, match="prefix '/nope'"):
            server.rooms.get("a", "/nope")
        with pytest.raises(ValueError, match="no room name"):
            server.rooms.get("a/b", "/c")
        with pytest.raises(ValueError, match="timeout"):
            await stub.call("add", 1, timeout=0)
        assert server.room("a", "/c") is None  # nothing reached the room


async def test_arguments_are_copies(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_server(Counter) as server:
        items = [1, 2]
        result = await server.rooms.get("a").mutate(items)
        assert (items, result) == ([1, 2], [1, 2, 99])


async def test_a_call_during_shutdown_is_refused(autojump_clock: trio.abc.Clock) -> None:
    class Stopping(Counter):
        async def on_close(self, conn: roomkit.Connection, *_: Any) -> None:
            with pytest.raises(roomkit.RoomCallError) as raised:
                await self.rooms.get("other").add(1)
            self.refused = raised.value

    async with contextlib.AsyncExitStack() as stack, open_test_server(Stopping) as server:
        client = await stack.enter_async_context(server.connect("/a"))
        await client.send("x")
        await client.receive()
        room = server.room("a")
        # the server shut down with the client still open: on_close's call was refused
    assert isinstance(room, Stopping)
    assert (room.refused.ran, room.refused.message) == (False, "the server is shutting down")


def test_rpc_names_are_checked() -> None:
    with pytest.raises(TypeError, match="async def"):
        roomkit.rpc(lambda self: None)  # type: ignore[type-var]
    with pytest.raises(TypeError, match="private"):

        class Private(roomkit.Room):
            @roomkit.rpc
            async def _hidden(self) -> None: ...

    with pytest.raises(TypeError, match=r"Room\.broadcast"):

        class Shadow(roomkit.Room):
            @roomkit.rpc
            async def broadcast(self) -> None:  # type: ignore[override]
                ...


async def test_a_call_through_real_sockets(start: Start) -> None:
    server = await start(Counter)
    heard: list[str] = []
    joined, called = trio.Event(), trio.Event()
    token = trio.lowlevel.current_trio_token()

    def client() -> None:  # the websockets package's client, in a thread of its own
        with connect(f"{server.url}/lobby") as ws:
            ws.send("hi")
            heard.append(str(ws.recv(timeout=5)))
            trio.from_thread.run_sync(joined.set, trio_token=token)
            trio.from_thread.run(called.wait, trio_token=token)
            heard.append(str(ws.recv(timeout=5)))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, client)
            await joined.wait()
            assert await server.rooms.get("lobby").add(2, note="?") == 2
            called.set()
    assert heard == ["message hi", "count 2?"]


async def test_a_call_queued_as_the_server_shuts_down_is_refused(
    autojump_clock: trio.abc.Clock,
) -> None:
    outcomes: dict[str, object] = {}

    async def call(stub: roomkit.RoomStub, method: str, *args: Any) -> None:
        try:
            outcomes[method] = await stub.call(method, *args)
        except roomkit.RoomCallError as exc:
            outcomes[method] = (exc.ran, exc.message)

    async with (
        trio.open_nursery() as nursery,
        open_test_server(Counter, drain_timeout=60) as server,
    ):
        stub = server.rooms.get("a")
        nursery.start_soon(call, stub, "nap", 10)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(call, stub, "add", 1)  # queued behind the nap
        await trio.testing.wait_all_tasks_blocked()
        # the block's end shuts the server down while the nap runs
    assert outcomes == {"nap": "rested", "add": (False, "the room is shutting down")}


async def test_a_room_cancelled_while_a_calls_writes_commit_answers_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    store = HeldStore()
    outcomes: list[tuple[bool | None, str]] = []

    async def call(stub: roomkit.RoomStub) -> None:
        try:
            await stub.call("add", 1, timeout=None)  # it would wait for ever
        except roomkit.RoomCallError as exc:
            outcomes.append((exc.ran, exc.message))

    with trio.fail_after(60):
        async with (
            trio.open_nursery() as nursery,
            open_test_server(Counter, storage=store, drain_timeout=1) as server,
        ):
            await server.rooms.get("a").add(1)  # the room's claim and first commit
            store.hold()
            nursery.start_soon(call, server.rooms.get("a"))
            await store.waiting.wait()
            # the block's end shuts the server down: the drain times out, and the room
            # is cancelled with the call's commit still in flight
    assert outcomes == [(None, "the room was cancelled as the call's writes committed")]
    await store.aclose()


class Answering(Counter):
    async def on_request(self, request: roomkit.Request) -> roomkit.Response:
        await self.storage.put("asked", await self.storage.get("asked", 0) + 1)
        return roomkit.Response(200, "stored")


async def test_a_room_cancelled_while_a_requests_writes_commit_answers_its_outcome_unknown(
    autojump_clock: trio.abc.Clock,
) -> None:
    store = HeldStore()
    answers: list[roomkit.Response] = []
    async with open_test_server(Answering, storage=store) as server:
        await server.request("POST", "/b")  # the room's claim and first commit
        store.hold()

        async def post() -> None:
            answers.append(await server.request("POST", "/b"))

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(post)
                await store.waiting.wait()
                assert host_of(server).cancel_room(RoomId("", "b"))
        store.release()
    # not 503, which says that nothing took effect: the write it committed landed
    unknown = (500, "Internal error: the outcome is unknown")
    assert [(a.status, a.text) for a in answers] == [unknown]
    assert await store.inner.get_many(RoomId("", "b"), ["asked"]) == {"asked": "2"}
    await store.aclose()


# Calls from another process: a cluster member (with an in-memory cluster store) and a
# call as the network carries it, signed with the cluster's secret.

SECRET = "the cluster's secret"


def signed_call(room: str, method: str, body: bytes, *, timeout: float = 30.0) -> dict[str, str]:
    """The headers of a call of ``method`` to ``room`` with ``body``, signed now."""
    left = timeout_value(timeout)
    nonce = secrets.token_urlsafe(16)
    auth = call_auth(SECRET.encode(), method, left, f"/{room}", body, now=time.time(), nonce=nonce)
    return {
        "roomkit-call": method,
        "roomkit-call-timeout": left,
        "roomkit-call-auth": auth,
        "content-type": "application/json",
    }


async def test_a_call_from_another_process_refused_as_its_room_ends_gets_503(
    autojump_clock: trio.abc.Clock,
) -> None:
    add = b'{"args":[1],"kwargs":{},"chain":[]}'
    answers: list[roomkit.Response] = []
    refusals: list[tuple[bool | None, str]] = []

    async def remote() -> None:
        answers.append(
            await server.request("POST", "/a", body=add, headers=signed_call("a", "add", add))
        )

    async def napping() -> None:
        with pytest.raises(roomkit.RoomCallError, match="cancelled during the call"):
            await server.rooms.get("a").nap(10)

    async def local() -> None:
        try:
            await server.rooms.get("a").add(1)
        except roomkit.RoomCallError as exc:
            refusals.append((exc.ran, exc.message))

    async with (
        open_test_server(Counter, storage=Directory(), cluster_secret=SECRET) as server,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(napping)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(remote)  # both queued behind the nap
        nursery.start_soon(local)
        await trio.testing.wait_all_tasks_blocked()
        assert host_of(server).cancel_room(RoomId("", "a"))
        await trio.testing.wait_all_tasks_blocked()
    # the caller in another process tries again where the room goes; one here is told
    assert [(a.status, a.text) for a in answers] == [(503, "Service unavailable")]
    assert refusals == [(False, "the room was cancelled")]


async def test_a_calls_deadline_runs_from_its_visits_start_not_its_bodys_end(
    autojump_clock: trio.abc.Clock,
) -> None:
    add = b'{"args":[1],"kwargs":{},"chain":[]}'
    lines = [f"{name}: {value}" for name, value in signed_call("a", "add", add, timeout=2).items()]
    head = "\r\n".join(["POST /a HTTP/1.1", "host: x", *lines, f"content-length: {len(add)}"])
    storage = Directory()
    async with open_test_server(
        Counter, storage=storage, cluster_secret=SECRET, handshake_timeout=10
    ) as server:
        async with await memory_stream(server) as stream:
            await stream.send_all(head.encode() + b"\r\n\r\n" + add[:5])
            await trio.sleep(3)  # the rest of the body comes after the caller's deadline
            status, _, body = await exchange(stream, add[5:])
        assert status == 200
        error = parse_answer(body)
        assert isinstance(error, Failed)
        assert (error.kind, error.ran) == ("timeout", False)
        assert await server.rooms.get("a").add(0) == 0  # the call never ran


class Bounded(Counter):
    max_request_size = 256

    @roomkit.rpc
    async def repeat(self, text: str, times: int) -> str:
        await self.storage.put("count", times)
        return text * times


async def test_a_result_over_max_request_size_fails_its_turn_here_and_from_elsewhere(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_test_server(Bounded, storage=Directory(), cluster_secret=SECRET) as server:
        stub = server.rooms.get("a")
        assert await stub.repeat("x", 5) == "xxxxx"
        with pytest.raises(roomkit.RoomCallError) as raised:
            await stub.repeat("x", 300)  # its arguments fit, its answer does not
        body = b'{"args":["x",300],"kwargs":{},"chain":[]}'
        answer = await server.request(
            "POST", "/a", body=body, headers=signed_call("a", "repeat", body)
        )
        assert await stub.add(0) == 5  # neither write landed
    why = "repeat(): the result is 313 bytes encoded, over the room's max_request_size (256)"
    assert (raised.value.type, raised.value.message, raised.value.ran) == ("ValueError", why, False)
    assert answer.status == 200
    assert parse_answer(answer.body) == Failed("error", "ValueError", why, False)


async def test_a_signed_call_replayed_to_the_same_process_is_refused(
    autojump_clock: trio.abc.Clock,
) -> None:
    add = b'{"args":[1],"kwargs":{},"chain":[]}'
    headers = signed_call("a", "add", add)
    async with open_test_server(Counter, storage=Directory(), cluster_secret=SECRET) as server:
        first = await server.request("POST", "/a", body=add, headers=headers)
        again = await server.request("POST", "/a", body=add, headers=headers)
        longer = {**headers, "roomkit-call-timeout": "3600.000"}  # the timeout is signed
        stretched = await server.request("POST", "/a", body=add, headers=longer)
        assert await server.rooms.get("a").add(0) == 1  # it ran once
    assert (first.status, first.json()) == (200, {"result": 1})
    assert (again.status, again.text) == (
        403,
        "Forbidden: roomkit-call-auth: replayed: this signature was used here already",
    )
    assert (stretched.status, stretched.text) == (
        403,
        "Forbidden: roomkit-call-auth: bad signature",
    )


@pytest.mark.parametrize(
    ("auth", "problem"),
    [
        (None, "not signed"),
        ("t=1;sig=" + "A" * 43, "not t=...;n=...;sig=..."),
        (f"t=1;n={'n' * 22};sig={'A' * 43}", "t is more than 60 s away"),
    ],
)
async def test_a_call_from_the_network_badly_signed_is_refused_before_its_routing(
    autojump_clock: trio.abc.Clock, auth: str | None, problem: str
) -> None:
    headers = [f"{name}: {value}" for name, value in signed_call("a", "add", b"").items()]
    lines = [line for line in headers if not line.startswith("roomkit-call-auth")]
    lines += [] if auth is None else [f"roomkit-call-auth: {auth}"]
    head = "\r\n".join(["POST /a HTTP/1.1", "host: x", *lines, "content-length: 35", "", ""])
    store = Directory()
    async with open_test_server(Counter, storage=store, cluster_secret=SECRET) as server:
        # its body never comes: the answer is not the owner's, which would wait for it
        status, _, body = await memory_http(server, head.encode())
    assert (status, body.decode()) == (403, f"Forbidden: roomkit-call-auth: {problem}")
    assert store.acquired == []
