"""Plain HTTP into rooms: ``Room.on_request`` behind the real front door.

Over ``roomkit.testing``'s in-memory transport (``TestServer.request``, or a bare
in-memory stream for a peer that misbehaves) under ``autojump_clock``, with exact
virtual times; then over real sockets with raw bytes and, if installed, ``curl``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
import trio
import trio.testing

import roomkit
from roomkit._roomid import RoomId
from roomkit.storage import Changes, Claim, SQLiteStore
from roomkit.testing import open_test_server

from .helpers import Start, exchange, http, memory_stream
from .test_actor import host_of
from .test_storage import GatedStore


class Api(roomkit.Room):
    """Answers every request with what it was asked, and keeps a count in storage."""

    errors: ClassVar[list[str]] = []
    starts: ClassVar[int] = 0
    log: ClassVar[list[str]] = []

    async def on_start(self) -> None:
        Api.starts += 1

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        conn.send("hello")

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        Api.log.append(f"message {message}")
        conn.send(f"got {message}")

    async def on_request(self, request: roomkit.Request) -> roomkit.Response:
        Api.log.append(f"request {request.method}")
        count = int(await self.storage.get("count") or 0) + 1
        await self.storage.put("count", count)
        if request.query.get("fail") == "raise":
            raise ValueError("asked to fail")
        if request.query.get("fail") == "type":
            return "not a response"  # type: ignore[return-value]
        if request.query.get("wait"):
            await trio.sleep(float(request.query["wait"]))
        self.broadcast(f"request {request.method}")
        return roomkit.Response(
            200,
            {
                "method": request.method,
                "path": request.path,
                "room": request.room,
                "query": dict(request.query),
                "header": request.headers.get("x-test"),
                "body": request.body.decode("latin-1"),
                "count": count,
            },
            {"x-room": self.name},
        )

    async def on_error(self, conn: roomkit.Connection | None, error: Exception) -> None:
        Api.errors.append(f"{type(error).__name__}: {error}")


class Socket(roomkit.Room):
    """A WebSocket-only room: it has no on_request."""


class Small(Api):
    max_request_size = 8


@pytest.fixture(autouse=True)
def _reset() -> None:
    Api.errors.clear()
    Api.log.clear()
    Api.starts = 0


async def test_every_method_reaches_on_request_with_its_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(Api) as server:
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
            response = await server.request(
                method, "/lobby?a=1&b=x%20y", body=b"payload", headers={"X-Test": "t"}
            )
            assert response.status == 200
            assert response.content_type == "application/json"
            assert ("x-room", "lobby") in response.headers
            assert response.json() == {
                "method": method,
                "path": "/lobby",
                "room": "lobby",
                "query": {"a": "1", "b": "x y"},
                "header": "t",
                "body": "payload",
                "count": response.json()["count"],
            }
        assert [r for r in Api.log] == [
            f"request {m}" for m in ("GET", "POST", "PUT", "DELETE", "PATCH")
        ]


async def test_a_room_without_on_request_answers_426(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server({"/ws": Socket, "/api": Api}) as server:
        response = await server.request("POST", "/ws/x", body=b"{}")
        assert (response.status, response.text) == (426, "Expected websocket")
        assert ("upgrade", "websocket") in response.headers
        assert (await server.request("POST", "/api/x")).status == 200
        assert (await server.request("POST", "/nowhere/x")).status == 426


async def test_a_body_over_the_limit_gets_413_by_length_and_chunked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(Small) as server:
        assert (await server.request("POST", "/r", body=b"12345678")).json()["body"] == "12345678"
        too_long = await server.request("POST", "/r", body=b"123456789")
        assert (too_long.status, too_long.text) == (413, "Request body too large: at most 8 bytes")
        chunked = {"transfer-encoding": "chunked"}
        fits = await server.request("POST", "/r", body=b"1234", headers=chunked)
        assert fits.json()["body"] == "1234"
        assert (
            await server.request("POST", "/r", body=b"123456789", headers=chunked)
        ).status == 413
        # 413 at once from the length: the body is never waited for.
        stream = await memory_stream(server)
        status, _, _ = await exchange(
            stream, b"POST /r HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\n"
        )
        assert status == 413
    assert Api.log == ["request POST", "request POST"]


async def test_expect_100_continue_is_answered_before_the_body(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(Api) as server:
        stream = await memory_stream(server)
        async with stream:
            await stream.send_all(
                b"POST /r HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nexpect: 100-continue\r\n\r\n"
            )
            assert await stream.receive_some() == b"HTTP/1.1 100 Continue\r\n\r\n"
            assert Api.log == []  # the room has seen nothing yet
            status, _, body = await exchange(stream, b"hi")
        assert status == 200 and json.loads(body)["body"] == "hi"


async def test_a_slow_body_gets_408_at_the_handshake_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(Api, handshake_timeout=4) as server:
        started = trio.current_time()
        stream = await memory_stream(server)
        status, _, body = await exchange(
            stream, b"POST /r HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nab"
        )
        assert (status, body) == (408, b"Request timeout: the body came too slowly")
        assert trio.current_time() - started == 4
        assert Api.log == []


async def test_the_response_waits_for_the_turns_commit() -> None:
    store = GatedStore(await SQLiteStore.open(":memory:"))
    async with open_test_server(Api, storage=store) as server:
        assert (await server.request("POST", "/r")).json()["count"] == 1
        store.hold()
        answered: list[roomkit.Response] = []

        async def post() -> None:
            answered.append(await server.request("POST", "/r"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(post)
            await trio.testing.wait_all_tasks_blocked()
            assert Api.log == ["request POST"] * 2 and answered == []  # ran, not yet durable
            store.release()
        assert answered[0].json()["count"] == 2


async def test_a_failed_commit_answers_500() -> None:
    class Failing(GatedStore):
        fail = False

        async def commit(self, batch: Sequence[tuple[Claim, Changes]]) -> list[roomkit.FencedError]:
            if self.fail:
                raise OSError("disk full")
            return await super().commit(batch)

    store = Failing(await SQLiteStore.open(":memory:"))
    async with open_test_server(Api, storage=store) as server:
        assert (await server.request("POST", "/r")).json()["count"] == 1
        store.fail = True
        failed = await server.request("POST", "/r")
        assert (failed.status, failed.text) == (500, "Internal error")
        store.fail = False
        assert (await server.request("POST", "/r")).json()["count"] == 2  # nothing landed


async def test_raising_or_returning_no_response_answers_500_and_rolls_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(Api) as server, server.connect("/r") as client:
        assert await client.receive() == "hello"
        for fail in ("raise", "type"):
            failed = await server.request("POST", f"/r?fail={fail}")
            assert (failed.status, failed.text) == (500, "Internal error")
        await client.receive_nothing()  # the turns' sends were dropped
        ok = await server.request("POST", "/r")
        assert ok.json()["count"] == 1  # the failed turns' writes were dropped
        assert await client.receive() == "request POST"
    assert Api.errors == [
        "ValueError: asked to fail",
        "TypeError: Api.on_request returned str, not a roomkit.Response",
    ]


async def test_requests_and_messages_take_turns(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(Api) as server, server.connect("/r") as client:
        assert await client.receive() == "hello"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.request, "POST", "/r?wait=5")
            await trio.testing.wait_all_tasks_blocked()
            await client.send("one")  # while the request's turn sleeps
            await client.send("two")
            assert await client.receive() == "request POST"  # the turn ended first
            assert await client.receive() == "got one"
            assert await client.receive() == "got two"
    assert Api.log == ["request POST", "message one", "message two"]


async def test_a_request_wakes_a_hibernated_room_and_starts_an_empty_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(Api) as server:
        async with server.connect("/r") as client:
            assert await client.receive() == "hello"
            await server.hibernate("r")
            assert server.room("r") is None and Api.starts == 1
            assert (await server.request("POST", "/r")).json()["count"] == 1
            assert Api.starts == 2  # a fresh instance, woken for it
            assert await client.receive() == "request POST"
        # Nobody connected: made for the request, and gone once idle.
        assert (await server.request("PUT", "/empty")).json()["count"] == 1
        assert Api.starts == 3
        await trio.testing.wait_all_tasks_blocked()
        assert server.room("empty") is None
        assert (await server.request("PUT", "/empty")).json()["count"] == 2  # it was stored


async def test_server_pages_are_the_servers_for_get_and_head_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(Api, metrics=True, demo_page=True) as server:
        for path in ("/healthz", "/roomkit.js", "/metrics", "/"):
            page = await server.request("GET", path)
            assert page.status == 200 and "method" not in page.text
            raw = f"HEAD {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode()
            status, headers, body = await exchange(await memory_stream(server), raw)
            assert (status, body) == (200, b"") and int(headers["content-length"]) > 0
            assert "x-room" not in headers
            posted = await server.request("POST", path)
            name = path.strip("/") or "default"
            assert (posted.status, posted.json()["room"]) == (200, name)
        assert (await server.request("GET", "/healthz")).text == "ok"
        metrics = (await server.request("GET", "/metrics")).text
        assert 'roomkit_http_requests_total{room_class="Api",status="200"} 4.0' in metrics


async def test_head_reaches_the_room_and_gets_no_body(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(Api) as server:
        stream = await memory_stream(server)
        status, headers, body = await exchange(stream, b"HEAD /r HTTP/1.1\r\nhost: x\r\n\r\n")
        assert (status, body) == (200, b"")
        assert int(headers["content-length"]) > 0 and headers["x-room"] == "r"
        assert Api.log == ["request HEAD"]


async def test_the_route_hook_and_the_origin_check_apply_to_plain_requests(
    autojump_clock: trio.testing.MockClock,
) -> None:
    asked: list[tuple[str, str]] = []

    def route(request: roomkit.Request) -> roomkit.RouteChoice:
        asked.append((request.method, request.room))
        if request.headers.get("authorization") != "Bearer ok":
            raise roomkit.Reject(401, "Who are you?")
        return ("/api", "chosen")

    options: dict[str, Any] = {"route": route, "allowed_origins": ["https://ok.example"]}
    async with open_test_server({"/api": Api, "/ws": Socket}, **options) as server:
        refused = await server.request("POST", "/api/x")
        assert (refused.status, refused.text) == (401, "Who are you?")
        auth = {"authorization": "Bearer ok"}
        chosen = await server.request("POST", "/ws/x", headers=auth)
        assert chosen.json()["room"] == "chosen"
        bad = await server.request("POST", "/api/x", headers={**auth, "origin": "https://evil"})
        assert (bad.status, bad.text) == (403, "Origin not allowed")
        good = await server.request(
            "POST", "/api/x", headers={**auth, "origin": "https://ok.example"}
        )
        assert good.status == 200
        assert (await server.request("GET", "/healthz")).status == 200  # the hook is not asked
    assert asked == [("POST", "x"), ("POST", "x"), ("POST", "x")]


async def test_without_a_room_that_answers_http_the_route_hook_is_not_asked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    asked: list[str] = []

    def route(request: roomkit.Request) -> None:
        asked.append(request.path)

    async with open_test_server(Socket, route=route) as server:
        assert (await server.request("POST", "/x")).status == 426
    assert asked == []


async def test_a_call_header_from_the_network_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(Api, metrics=True) as server:
        forged = await server.request("POST", "/r", headers={"roomkit-call": "add"}, body=b"{}")
        assert (forged.status, forged.text) == (403, "Forbidden: roomkit-call is roomkit's own")
        metrics = (await server.request("GET", "/metrics")).text
        assert 'roomkit_handshakes_refused_total{reason="forged"} 1.0' in metrics
    assert Api.log == []


async def test_a_response_with_a_bad_header_fails_the_turn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Splitting(Api):
        async def on_request(self, request: roomkit.Request) -> roomkit.Response:
            return roomkit.Response(200, "x", {"x-a": "1\r\nset-cookie: evil=1"})

    async with open_test_server(Splitting) as server:
        failed = await server.request("GET", "/r")
        assert (failed.status, failed.text) == (500, "Internal error")
        assert all(name != "set-cookie" for name, _ in failed.headers)
    assert Api.errors == [
        "ValueError: the value of header 'x-a' must be printable ASCII, with no CR or LF: "
        "'1\\r\\nset-cookie: evil=1'"
    ]


class Stuck(Api):
    """Its on_request waits for the test."""

    release: ClassVar[trio.Event]

    async def on_request(self, request: roomkit.Request) -> roomkit.Response:
        Api.log.append("stuck")
        await Stuck.release.wait()
        return roomkit.Response(200, "done")


async def test_requests_in_a_cancelled_room_get_503_not_a_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    Stuck.release = trio.Event()
    async with open_test_server(Stuck) as server:
        answers: list[roomkit.Response] = []

        async def post() -> None:
            answers.append(await server.request("POST", "/r"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(post)  # its turn waits
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(post)  # queued behind it
            await trio.testing.wait_all_tasks_blocked()
            assert host_of(server).cancel_room(RoomId("", "r"))
        assert [(a.status, a.text) for a in answers] == [(503, "Service unavailable")] * 2
        Stuck.release.set()
        assert (await server.request("POST", "/r")).text == "done"  # a new room
    assert Api.log == ["stuck", "stuck"]


async def test_a_request_beyond_max_connections_gets_503(
    autojump_clock: trio.testing.MockClock,
) -> None:
    Stuck.release = trio.Event()
    async with open_test_server(Stuck, max_connections=1) as server:
        answers: list[roomkit.Response] = []

        async def post() -> None:
            answers.append(await server.request("POST", "/r"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(post)  # waits for its room: it holds the one place
            await trio.testing.wait_all_tasks_blocked()
            full = await server.request("POST", "/r")
            assert (full.status, full.text) == (503, "Server is full")
            with pytest.raises(roomkit.ClientClosed) as refused:
                async with server.connect("/r"):
                    pass
            assert refused.value.status == 503
            Stuck.release.set()
        assert [a.text for a in answers] == ["done"]
        assert (await server.request("POST", "/r")).text == "done"  # its place is free again


# Real sockets.


async def test_raw_http_over_a_socket(start: Start) -> None:
    server = await start(Api)
    status, headers, body = await http(
        server.port,
        b"POST /sock?q=1 HTTP/1.1\r\nhost: x\r\nx-test: raw\r\ncontent-length: 3\r\n\r\nabc",
    )
    assert (status, headers["connection"], headers["content-type"]) == (
        200,
        "close",
        "application/json",
    )
    answer = json.loads(body)
    assert (answer["room"], answer["query"], answer["header"], answer["body"]) == (
        "sock",
        {"q": "1"},
        "raw",
        "abc",
    )
    chunked = b"PUT /sock HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    await stream.send_all(chunked + b"2\r\nab\r\n")
    status, _, body = await exchange(stream, b"1\r\nc\r\n0\r\n\r\n")
    assert (status, json.loads(body)["body"]) == (200, "abc")


class Slow(roomkit.Room):
    """Takes a while over each request, and says when one has begun."""

    began: ClassVar[trio.Event]

    async def on_request(self, request: roomkit.Request) -> roomkit.Response:
        await self.storage.put("seen", True)
        Slow.began.set()
        await trio.sleep(0.3)
        return roomkit.Response(200, "done")


async def test_a_request_in_its_room_as_the_server_shuts_down_is_answered(start: Start) -> None:
    Slow.began = trio.Event()
    server = await start(Slow)
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    await stream.send_all(b"POST /r HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
    with trio.fail_after(5):
        await Slow.began.wait()
    server.shutdown()  # the front door is cancelled: the turn goes on, and answers
    status, _, body = await exchange(stream, b"")
    assert (status, body) == (200, b"done")


async def test_requests_whose_bodies_arrive_count_toward_max_connections(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(Api, max_connections=2) as server:
        slow = [await memory_stream(server) for _ in range(2)]
        for stream in slow:  # two bodies on their way: the server is full
            await stream.send_all(b"POST /r HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n")
        await trio.testing.wait_all_tasks_blocked()
        full = await server.request("POST", "/r")
        assert (full.status, full.text) == (503, "Server is full")
        for stream in slow:
            status, _, _ = await exchange(stream, b"ok")
            assert status == 200
        assert (await server.request("POST", "/r")).status == 200  # places free again


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_posts_into_a_room(start: Start, tmp_path: Path) -> None:
    server = await start(Api)
    url = f"http://127.0.0.1:{server.port}/lobby?via=curl"
    # A body over 1 KiB: curl sends Expect: 100-continue and waits for the 100.
    data = tmp_path / "body"
    data.write_text("x" * 2000)
    command = ["curl", "-sS", "-X", "POST", "-H", "x-test: curl", "--data-binary", f"@{data}", url]
    done = await trio.run_process(command, capture_stdout=True)
    answer = json.loads(done.stdout)
    assert (answer["room"], answer["header"], answer["body"]) == ("lobby", "curl", "x" * 2000)
    data.write_text("x" * (2 << 20))  # over max_request_size: refused from its length
    command = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--data-binary", f"@{data}"]
    done = await trio.run_process([*command, url], capture_stdout=True, check=False)
    assert done.stdout == b"413"
