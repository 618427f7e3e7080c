"""The reconnecting Python client against real roomkit servers (and some broken ones)."""

from __future__ import annotations

import itertools
from functools import partial
from typing import Any, ClassVar

import pytest
import trio
import trio.testing

import roomkit
import roomkit._client
from examples.chat import Chat, ChatRoom, Message, Ping, Pong, Welcome
from roomkit._core.frontdoor import handshake_response, parse_head

from .helpers import Start


class Recorder(roomkit.Room):
    got: ClassVar[list[str]] = []
    opened: ClassVar[list[float]] = []  # when each connection was opened

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        Recorder.opened.append(trio.current_time())

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        Recorder.got.append(message)
        if message.startswith("close "):
            code = int(message.split()[1])
            conn.close(code, "go away")
        else:
            conn.send(f"echo {message}")


@pytest.fixture(autouse=True)
def _reset() -> None:
    Recorder.got = []
    Recorder.opened = []


async def test_send_and_receive(start: Start) -> None:
    server = await start(Recorder)
    async with roomkit.connect(f"{server.url}/r") as client:
        await client.send("hello")
        with trio.fail_after(5):
            assert await client.receive() == "echo hello"
        assert client.connected and client.connections == 1


async def test_typed_messages_with_the_rooms_protocol(start: Start) -> None:
    server = await start(ChatRoom)
    protocol = ChatRoom.protocol
    async with roomkit.connect(f"{server.url}/lobby?userId=ann", protocol=protocol) as client:
        with trio.fail_after(5):
            assert await client.receive() == Welcome("ann", ["ann"])
            await client.send(Ping())
            assert await client.receive() == Pong()
            await client.send(Chat("hi"))
            message = await client.receive()
            assert isinstance(message, Message) and message.text == "hi"
            await client.send('{"type": "chat"}')  # raw text goes as it is
            error = await client.receive()
            assert error == roomkit.ErrorMessage("invalid 'chat' message: field 'text' is missing")


async def serve_in(scope: trio.CancelScope, port: int, task_status: Any) -> None:
    with scope:
        await roomkit.serve(Recorder, port=port, task_status=task_status)


async def test_survives_a_server_restart_and_delivers_queued_sends_in_order(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    first = trio.CancelScope()
    server: roomkit.Server = await nursery.start(serve_in, first, 0)
    async with roomkit.connect(f"{server.url}/r", hello="join") as client:
        assert await client.receive() == "echo join"
        await client.send("before")
        assert await client.receive() == "echo before"
        first.cancel()  # the server goes away (1001)...
        await trio.sleep(1)
        assert not client.connected and client.close_code == 1001
        for text in ("one", "two", "three"):  # ...and the client keeps what it is given
            await client.send(text)
        await trio.sleep(3)
        await nursery.start(serve_in, trio.CancelScope(), server.port)  # back, same port
        with trio.fail_after(60):
            await client.wait_connected()
            replies = [await client.receive() for _ in range(4)]
        assert replies == ["echo join", "echo one", "echo two", "echo three"]
        assert Recorder.got == ["join", "before", "join", "one", "two", "three"]
        assert client.connections == 2


async def test_backoff_grows_to_its_ceiling(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, monkeypatch: Any
) -> None:
    monkeypatch.setattr(roomkit._client.random, "uniform", lambda low, high: high)  # no jitter
    tries: list[float] = []

    async def busy(stream: trio.SocketStream) -> None:  # refuses every handshake: 503
        tries.append(trio.current_time())
        await stream.receive_some()
        await stream.send_all(roomkit._core.frontdoor.Response(503, "busy").to_bytes())

    listeners = await nursery.start(partial(trio.serve_tcp, busy, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    async with roomkit.connect(f"ws://127.0.0.1:{port}/r", max_delay=8) as client:
        await trio.sleep(40)
        assert not client.connected
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    assert gaps[:6] == [1, 2, 4, 8, 8, 8]


@pytest.mark.parametrize("code", [1008, 4000, 4999])
async def test_dont_come_back_codes_stop_the_client(start: Start, code: int) -> None:
    server = await start(Recorder)
    async with roomkit.connect(f"{server.url}/r", initial_delay=0.01) as client:
        await client.send(f"close {code}")
        with trio.fail_after(5), pytest.raises(roomkit.ClientClosed) as info:
            await client.receive()
        assert (info.value.code, info.value.reason) == (code, "go away")
        assert [message async for message in client] == []
        with pytest.raises(roomkit.ClientClosed):
            await client.send("too late")
        assert client.connections == 1


async def test_other_closes_come_back(start: Start, autojump_clock: trio.testing.MockClock) -> None:
    server = await start(Recorder)
    async with roomkit.connect(f"{server.url}/r") as client:
        await client.send("close 3000")
        await trio.sleep(20)  # virtual: long enough for any first backoff
        assert client.connected and client.connections == 2 and client.close_code == 3000
        await client.send("after")
        with trio.fail_after(5):
            assert await client.receive() == "echo after"


@pytest.mark.parametrize(("code", "wait"), [(1012, 0.0), (1001, 0.5), (3000, 0.5)])
async def test_after_a_1012_close_the_client_comes_back_at_once(
    start: Start,
    autojump_clock: trio.testing.MockClock,
    monkeypatch: Any,
    code: int,
    wait: float,
) -> None:
    monkeypatch.setattr(roomkit._client.random, "uniform", lambda low, high: high)  # no jitter
    server = await start(Recorder)
    async with roomkit.connect(f"{server.url}/r") as client:
        await client.wait_connected()
        began = trio.current_time()
        await client.send(f"close {code}")
        await trio.sleep(5)
        assert client.connections == 2 and client.close_code == code
    assert Recorder.opened[1] - began == wait


async def test_after_a_restart_a_failed_first_try_does_not_count(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, monkeypatch: Any
) -> None:
    monkeypatch.setattr(roomkit._client.random, "uniform", lambda low, high: high)  # no jitter
    first: roomkit.Server = await nursery.start(serve_in, trio.CancelScope(), 0)
    async with roomkit.connect(f"{first.url}/r") as client:
        await client.wait_connected()
        began = trio.current_time()
        first.shutdown(restart=True)
        await trio.sleep(1.2)
        assert client.close_code == 1012 and not client.connected
        await nursery.start(serve_in, trio.CancelScope(), first.port)
        with trio.fail_after(10):
            await client.wait_connected()
    # Tries at 0 (at once, refused: free), 0.5 (refused), then 0.5 + 1.0; had the free
    # try counted, the second would have been at 1.0 and the third at 3.0.
    assert Recorder.opened[1] - began == 1.5


class Refusing(roomkit.Room):
    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        raise roomkit.Reject(int(request.query["status"]))


async def test_a_4xx_refusal_stops_the_client_and_a_503_does_not(
    start: Start, autojump_clock: trio.testing.MockClock
) -> None:
    server = await start(Refusing)
    async with roomkit.connect(f"{server.url}/r?status=403") as client:
        with trio.fail_after(30), pytest.raises(roomkit.ClientClosed) as info:
            await client.receive()
        assert info.value.status == 403
    async with roomkit.connect(f"{server.url}/r?status=503", max_retries=3) as client:
        with trio.fail_after(100), pytest.raises(roomkit.ClientClosed) as info:
            await client.receive()
        assert "gave up after 4 failed tries" in str(info.value)


async def test_a_server_that_stops_answering_pings_is_left(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    opened: list[float] = []

    async def mute(stream: trio.SocketStream) -> None:  # a handshake, then silence
        head = b""
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some()
        parsed = parse_head(head)
        assert not isinstance(parsed, roomkit._core.frontdoor.Response)
        answer = handshake_response(parsed)
        assert isinstance(answer, bytes)
        await stream.send_all(answer)
        opened.append(trio.current_time())
        await trio.sleep_forever()

    listeners = await nursery.start(partial(trio.serve_tcp, mute, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    async with roomkit.connect(
        f"ws://127.0.0.1:{port}/r", ping_interval=5, ping_timeout=5, initial_delay=0.01
    ) as client:
        await trio.sleep(25)
        assert client.connections >= 2
    assert 10 <= opened[1] - opened[0] <= 11  # a ping at 5 s, no pong by 10 s


def test_bad_urls_are_refused() -> None:
    async def main() -> None:
        async with roomkit.connect("http://example.com/r"):
            pass

    with pytest.raises(ValueError, match="ws:// or wss://"):
        trio.run(main)


def test_which_closes_are_final() -> None:
    assert roomkit._client.is_final_close(1008, "rate limit exceeded")
    assert not roomkit._client.is_final_close(1008, "slow consumer")
    assert roomkit._client.is_final_close(4000) and roomkit._client.is_final_close(4999)
    assert not any(roomkit._client.is_final_close(code) for code in (1000, 1001, 1011, 3000))
