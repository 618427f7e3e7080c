"""The reconnecting Python client against real servers (and some broken ones), under
asyncio and under Trio.

Rules: every test is a plain function that runs its body with ``anyio.run`` on each
backend (pytest-trio's ``trio_mode`` claims every ``async def`` test for Trio alone, so
anyio's own pytest plugin cannot share them). The roomkit server runs in a thread of
its own (``tests.clientservers``), one for the module unless a test stops it; misbehaving
peers are anyio listeners in the test's own loop. Real sockets on 127.0.0.1, port 0,
real time: waits are short, bounded with ``fail_after``, and where a schedule matters
the jitter is taken out and the waits the client chose are asserted exactly (through
``on_reconnect``), the times it took only roughly.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Request, TextMessage

import roomkit
import roomkit._client
from examples.chat import Chat, ChatRoom, Message, Ping, Pong, Welcome
from roomkit._core.frontdoor import Response

from .clientservers import (
    EnvelopeServer,
    ThreadServer,
    binary_frame,
    m_frame,
    serve_raw,
    welcome_frame,
)

BACKENDS = ["asyncio", "trio"]

backends = pytest.mark.parametrize("backend", BACKENDS)


def run(backend: str, main: Callable[[], Awaitable[None]]) -> None:
    anyio.run(main, backend=backend)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with ThreadServer() as server:
        yield server.url


@pytest.fixture
def no_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every wait is its ceiling."""
    monkeypatch.setattr(roomkit._client.random, "uniform", lambda low, high: high)


class Log:
    """Every event the callbacks see, with the time it came."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.times: list[float] = []

        self._changed = anyio.Event()

    def __call__(self, event: Any) -> None:
        self.events.append(event)
        self.times.append(anyio.current_time())
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, kind: type, count: int = 1) -> None:
        """Until ``count`` events of ``kind`` have come (at most 5 s)."""
        with anyio.fail_after(5):
            while len(self.of(kind)) < count:
                await self._changed.wait()

    def callbacks(self) -> dict[str, Log]:
        return {"on_open": self, "on_close": self, "on_reconnect": self}

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def time_of(self, event: Any) -> float:
        return self.times[self.events.index(event)]


@backends
def test_send_and_receive(backend: str, url: str) -> None:
    async def main() -> None:
        async with roomkit.connect(f"{url}/echo/r") as client:
            await client.send("hello")
            with anyio.fail_after(5):
                assert await client.receive() == "echo hello"
            assert client.connected and client.connections == 1

    run(backend, main)


@backends
def test_typed_messages_with_the_rooms_protocol(backend: str, url: str) -> None:
    async def main() -> None:
        protocol = ChatRoom.protocol
        async with roomkit.connect(f"{url}/chat/lobby?userId=ann", protocol=protocol) as client:
            with anyio.fail_after(5):
                assert await client.receive() == Welcome("ann", ["ann"])
                await client.send(Ping())
                assert await client.receive() == Pong()
                await client.send(Chat("hi"))
                message = await client.receive()
                assert isinstance(message, Message) and message.text == "hi"
                await client.send('{"type": "chat"}')  # raw text goes as it is
                error = await client.receive()
        assert error == roomkit.ErrorMessage("invalid 'chat' message: field 'text' is missing")

    run(backend, main)


@backends
def test_without_a_protocol_an_error_reply_is_its_json_text(backend: str, url: str) -> None:
    async def main() -> None:
        async with roomkit.connect(f"{url}/chat/plain?userId=bo") as client:
            with anyio.fail_after(5):
                assert json.loads(await client.receive())["type"] == "welcome"
                await client.send('{"type": "chat"}')
                reply = await client.receive()
        assert json.loads(reply) == {
            "type": "error",
            "message": "invalid 'chat' message: field 'text' is missing",
        }

    run(backend, main)


@backends
def test_hello_and_headers_go_with_every_handshake(backend: str, url: str) -> None:
    async def main() -> None:
        headers = {"Authorization": "Bearer t0ken"}
        async with roomkit.connect(f"{url}/echo/h", hello="hi", headers=headers) as client:
            with anyio.fail_after(5):
                assert await client.receive() == "echo hi"
                await client.send("header authorization")
                assert await client.receive() == "Bearer t0ken"

    run(backend, main)


@backends
def test_survives_a_server_restart_and_delivers_queued_sends_in_order(backend: str) -> None:
    async def main() -> None:
        first = ThreadServer()
        log = Log()
        connect = roomkit.connect(
            f"{first.url}/echo/r", hello="join", initial_delay=0.05, **log.callbacks()
        )
        async with connect as client:
            with anyio.fail_after(5):
                assert await client.receive() == "echo join"
                await client.send("before")
                assert await client.receive() == "echo before"
            await first.astop()  # the server goes away (1001)...
            await log.wait_for(roomkit.CloseEvent)
            assert client.close_code == 1001
            for text in ("one", "two", "three"):  # ...and the client keeps what it is given
                await client.send(text)
            async with ThreadServer(first.port):  # back, same port
                with anyio.fail_after(5):
                    await client.wait_connected()
                    replies = [await client.receive() for _ in range(4)]
                assert replies == ["echo join", "echo one", "echo two", "echo three"]
                assert client.connections == 2
        assert log.of(roomkit.CloseEvent)[0] == roomkit.CloseEvent(1001, "Going away", True)
        assert repr(log.of(roomkit.CloseEvent)[0]).startswith("CloseEvent(code=1001,")
        assert log.of(roomkit.OpenEvent) == [roomkit.OpenEvent(1), roomkit.OpenEvent(2)]

    run(backend, main)


@backends
def test_a_server_back_early_in_an_outage_has_its_client_back_within_early_max_delay(
    backend: str, no_jitter: None
) -> None:
    """The deploy of issue 14: with waits up to max_delay (10 s), the client came back
    seconds after the server; in the early period they are capped (here at 0.2 s)."""

    async def main() -> None:
        first = ThreadServer()
        log = Log()
        options = {"initial_delay": 0.05, "early_max_delay": 0.2, **log.callbacks()}
        async with roomkit.connect(f"{first.url}/echo/r", **options) as client:
            await client.wait_connected()
            await first.astop()
            await anyio.sleep(1.5)  # ten tries or so, all refused
            assert not client.connected
            async with ThreadServer(first.port):
                with anyio.fail_after(5):
                    await client.wait_connected()
                delays = [e.delay for e in log.of(roomkit.ReconnectEvent)]
        # Every wait, the one that found the server back included, as on_reconnect
        # announced it before sleeping it: none past the early cap.
        assert delays[:3] == [0.05, 0.1, 0.2] and set(delays[3:]) == {0.2}

    run(backend, main)


async def read_head(stream: anyio.abc.SocketStream) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        head += await stream.receive()
    return head


@backends
def test_backoff_grows_to_its_ceiling(backend: str, no_jitter: None) -> None:
    async def main() -> None:
        tries: list[float] = []

        async def busy(stream: anyio.abc.SocketStream) -> None:  # refuses every handshake
            async with stream:
                tries.append(anyio.current_time())
                await read_head(stream)
                await stream.send(Response(503, "busy").to_bytes())

        log = Log()
        async with serve_raw(busy) as url:
            options = {"initial_delay": 0.02, "early_max_delay": 0.16, "max_delay": 0.08}
            async with roomkit.connect(f"{url}/r", **options, **log.callbacks()) as client:
                await anyio.sleep(1)
                assert not client.connected
        reconnects = log.of(roomkit.ReconnectEvent)
        assert [e.delay for e in reconnects[:6]] == [0.04, 0.08, 0.08, 0.08, 0.08, 0.08]
        assert [e.attempt for e in reconnects[:6]] == [2, 3, 4, 5, 6, 7]
        gaps = [b - a for a, b in itertools.pairwise(tries)]
        assert all(delay <= gap for delay, gap in zip([0.04, 0.08, 0.08], gaps, strict=False))

    run(backend, main)


@pytest.mark.parametrize("code", [1008, 4000, 4999])
@backends
def test_dont_come_back_codes_stop_the_client(backend: str, url: str, code: int) -> None:
    async def main() -> None:
        log = Log()
        async with roomkit.connect(f"{url}/echo/r", initial_delay=0.01, on_close=log) as client:
            await client.send(f"close {code}")
            with anyio.fail_after(5), pytest.raises(roomkit.ClientClosed) as info:
                await client.receive()
            assert (info.value.code, info.value.reason) == (code, "go away")
            assert [message async for message in client] == []
            with pytest.raises(roomkit.ClientClosed):
                await client.send("too late")
            assert client.connections == 1
        assert log.events == [roomkit.CloseEvent(code, "go away", will_reconnect=False)]

    run(backend, main)


@backends
def test_other_closes_come_back(backend: str, url: str) -> None:
    async def main() -> None:
        log = Log()
        options = {"initial_delay": 0.01, **log.callbacks()}
        async with roomkit.connect(f"{url}/echo/r", **options) as client:
            await client.send("close 3000")
            await log.wait_for(roomkit.OpenEvent, 2)
            assert client.connected and client.close_code == 3000
            await client.send("after")
            with anyio.fail_after(5):
                assert await client.receive() == "echo after"
        assert log.events[:3] == [
            roomkit.OpenEvent(1),
            roomkit.CloseEvent(3000, "go away", will_reconnect=True),
            roomkit.ReconnectEvent(1, log.events[2].delay),
        ]
        assert log.events[3:] == [
            roomkit.OpenEvent(2),
            roomkit.CloseEvent(1000, "", will_reconnect=False),  # the server's answer
        ]

    run(backend, main)


@pytest.mark.parametrize(("code", "wait"), [(1012, 0.0), (1001, 0.3), (3000, 0.3)])
@backends
def test_after_a_1012_close_the_client_comes_back_at_once(
    backend: str, url: str, no_jitter: None, code: int, wait: float
) -> None:
    async def main() -> None:
        log = Log()
        async with roomkit.connect(f"{url}/echo/r", initial_delay=0.3, **log.callbacks()) as c:
            await c.wait_connected()
            await c.send(f"close {code}")
            await log.wait_for(roomkit.OpenEvent, 2)
        reconnect = log.of(roomkit.ReconnectEvent)[0]
        assert reconnect == roomkit.ReconnectEvent(0 if code == 1012 else 1, wait)
        closed, opened = log.of(roomkit.CloseEvent)[0], log.of(roomkit.OpenEvent)[1]
        # The wait is pinned by on_reconnect's delay, above; the clock only shows it was
        # slept, not skipped (an upper bound would be a timing assertion on real sockets).
        assert log.time_of(opened) - log.time_of(closed) >= wait

    run(backend, main)


@backends
def test_after_a_restart_a_failed_first_try_does_not_count(backend: str, no_jitter: None) -> None:
    async def main() -> None:
        first = ThreadServer()
        log = Log()
        async with roomkit.connect(
            f"{first.url}/echo/r", initial_delay=0.1, on_reconnect=log
        ) as client:
            await client.wait_connected()
            await first.astop(restart=True)
            await anyio.sleep(0.5)  # at once (refused: free), 0.1 (refused), then 0.2, 0.2
            async with ThreadServer(first.port):
                await anyio.sleep(0.4)
        events = log.events
        assert events[:3] == [
            roomkit.ReconnectEvent(0, 0.0),
            roomkit.ReconnectEvent(1, 0.1),  # had the free try counted: 2, 0.2
            roomkit.ReconnectEvent(2, 0.2),
        ]

    run(backend, main)


@backends
def test_a_4xx_refusal_stops_the_client_and_a_503_does_not(backend: str, url: str) -> None:
    async def main() -> None:
        async with roomkit.connect(f"{url}/refuse/r?status=403") as client:
            with anyio.fail_after(5), pytest.raises(roomkit.ClientClosed) as info:
                await client.wait_connected()  # woken when the client stops
            assert (info.value.status, info.value.reason) == (403, "not you")
            with pytest.raises(roomkit.ClientClosed):
                await client.receive()
        options = {"max_retries": 3, "initial_delay": 0.01}
        async with roomkit.connect(f"{url}/refuse/r?status=503", **options) as client:
            with anyio.fail_after(5), pytest.raises(roomkit.ClientClosed) as info:
                await client.receive()
            assert "gave up after 4 failed tries" in str(info.value)
            assert info.value.status is None and client.connections == 0

    run(backend, main)


@backends
def test_a_server_that_stops_answering_pings_is_left(backend: str) -> None:
    async def main() -> None:
        opened: list[float] = []

        async def mute(stream: anyio.abc.SocketStream) -> None:  # a handshake, then silence
            async with stream:
                ws = WSConnection(ConnectionType.SERVER)
                while True:
                    try:
                        ws.receive_data(await stream.receive())
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        return  # the client hung up, having waited for no pong
                    for event in ws.events():
                        if isinstance(event, Request):
                            await stream.send(ws.send(AcceptConnection()))
                            opened.append(anyio.current_time())
                        elif isinstance(event, CloseConnection):
                            return  # hangs up: no pong ever, nor a close frame

        async with serve_raw(mute) as url:
            log = Log()
            options = {"ping_interval": 0.2, "ping_timeout": 0.2, "initial_delay": 0.01}
            async with roomkit.connect(f"{url}/r", **options, on_open=log) as client:
                await log.wait_for(roomkit.OpenEvent, 2)
                assert (client.close_code, client.close_reason) == (1006, "no pong")
        assert 0.4 <= opened[1] - opened[0] < 0.4 + 0.3  # a ping at 0.2 s, no pong by 0.4

    run(backend, main)


@backends
def test_a_message_over_max_message_size_closes_with_1009_and_comes_back(
    backend: str, url: str
) -> None:
    async def main() -> None:
        log = Log()
        options = {"max_message_size": 1000, "initial_delay": 0.01, "on_open": log}
        async with roomkit.connect(f"{url}/echo/big", **options) as client:
            await client.send("big 1000")
            with anyio.fail_after(5):
                assert await client.receive() == "x" * 1000  # at the limit: fine
            await client.send("big 1001")
            await log.wait_for(roomkit.OpenEvent, 2)
            assert client.close_code == 1009

    run(backend, main)


@backends
def test_max_message_size_counts_text_in_utf8_bytes_as_the_server_does(
    backend: str, url: str
) -> None:
    async def main() -> None:
        log = Log()
        options = {"max_message_size": 1000, "initial_delay": 0.01, "on_open": log}
        async with roomkit.connect(f"{url}/echo/utf8", **options) as client:
            await client.send("\u00e9" * 497)  # "echo " and 994 bytes: 999
            with anyio.fail_after(5):
                assert await client.receive() == "echo " + "\u00e9" * 497
            await client.send("\u00e9" * 498)  # 503 characters, but 1001 bytes
            await log.wait_for(roomkit.OpenEvent, 2)
            assert client.close_code == 1009

    run(backend, main)


@backends
def test_sends_while_disconnected_wait_in_a_bounded_queue(backend: str) -> None:
    async def main() -> None:
        async with roomkit.connect("ws://127.0.0.1:1/r", max_queue=2) as client:
            client.send_nowait("one")
            await client.send("two")
            with pytest.raises(anyio.WouldBlock):
                client.send_nowait("three")
            with anyio.move_on_after(0.1) as waited:
                await client.send("three")
            assert waited.cancelled_caught

    run(backend, main)


class Oops(Exception):
    pass


@backends
def test_an_exception_in_the_block_comes_out_as_raised(backend: str, url: str) -> None:
    async def main() -> None:
        async with roomkit.connect(f"{url}/echo/r") as client:
            await client.wait_connected()
            raise Oops("mine")

    with pytest.raises(Oops, match="mine") as info:
        run(backend, main)
    assert type(info.value) is Oops  # not an ExceptionGroup around it


@backends
def test_keyboard_interrupt_in_the_block_comes_out_as_raised(backend: str, url: str) -> None:
    async def main() -> None:
        async with roomkit.connect(f"{url}/echo/r") as client:
            await client.wait_connected()
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(backend, main)


@backends
def test_cancelling_the_block_cancels_the_client(backend: str, url: str) -> None:
    async def main() -> None:
        log = Log()
        with anyio.move_on_after(0.3) as scope:
            async with roomkit.connect(f"{url}/echo/r", **log.callbacks()) as client:
                await client.wait_connected()
                await anyio.sleep_forever()
        assert scope.cancelled_caught
        assert log.events == [roomkit.OpenEvent(1)]  # cancelled: no close handshake
        with pytest.raises(roomkit.ClientClosed):
            await client.receive()

    run(backend, main)


@asynccontextmanager
async def native_timeout(backend: str, seconds: float) -> AsyncIterator[None]:
    """The event loop's own timeout around a block, as an application would write it:
    ``asyncio.timeout`` (whose cancellation asyncio delivers once), or Trio's."""
    if backend == "asyncio":
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                yield
    else:
        with trio.move_on_after(seconds):
            yield


@backends
@pytest.mark.parametrize("leave", ["cancelled", "interrupted"])
def test_a_cancelled_or_interrupted_block_does_not_wait_for_the_closing_handshake(
    backend: str, leave: str
) -> None:
    async def main() -> None:
        async def deaf(stream: anyio.abc.SocketStream) -> None:  # never answers a close
            async with stream:
                ws = WSConnection(ConnectionType.SERVER)
                ws.receive_data(await read_head(stream))
                await stream.send(ws.send(AcceptConnection()))
                with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                    while True:
                        await stream.receive()

        async with serve_raw(deaf) as url:
            start = anyio.current_time()
            timeout = 0.3 if leave == "cancelled" else 60  # interrupted: never cancelled
            with contextlib.suppress(KeyboardInterrupt):
                async with native_timeout(backend, timeout), roomkit.connect(f"{url}/r") as client:
                    await client.wait_connected()
                    if leave == "interrupted":
                        raise KeyboardInterrupt
                    await anyio.sleep_forever()
            assert anyio.current_time() - start < roomkit._client.CLOSE_WAIT / 2

    run(backend, main)


@backends
def test_a_callback_that_raises_is_logged_and_the_client_goes_on(
    backend: str, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: roomkit.OpenEvent) -> None:
        raise Oops("in a callback")

    async def main() -> None:
        async with roomkit.connect(f"{url}/echo/r", on_open=broken) as client:
            await client.send("still here")
            with anyio.fail_after(5):
                assert await client.receive() == "echo still here"

    with caplog.at_level(logging.ERROR, "roomkit.client"):
        run(backend, main)
    assert [r.message for r in caplog.records] == ["the OpenEvent callback raised"]
    assert isinstance(caplog.records[0].exc_info and caplog.records[0].exc_info[1], Oops)


@backends
def test_a_callback_can_send_without_waiting(backend: str, url: str) -> None:
    async def main() -> None:
        clients: list[roomkit.Client] = []

        def greet(event: roomkit.OpenEvent) -> None:
            clients[0].send_nowait(f"open {event.connections}")

        async with roomkit.connect(f"{url}/echo/r", on_open=greet) as client:
            clients.append(client)
            with anyio.fail_after(5):
                assert await client.receive() == "echo open 1"

    run(backend, main)


@backends
def test_the_envelope_delivers_each_payload_once_and_comes_back_to_its_session(
    backend: str,
) -> None:
    """Seen up to 5, dropped; back: the replay (5 again, 6, 7), then 8 live."""
    server = EnvelopeServer(
        [
            [
                welcome_frame(),
                m_frame(4, "four"),
                binary_frame(5, b"\x00five"),
                m_frame(None, "unlogged"),
                '["presence_state", {}]',  # a kind it does not know: dropped
            ],
            [
                welcome_frame(session="tok2", seq=7, resumed=True, recovered=True),
                m_frame(5, "five again"),
                m_frame(6, "six"),
                binary_frame(7, b"seven"),
                binary_frame(0, b"unlogged too"),
                m_frame(8, "eight"),
            ],
        ]
    )

    async def main() -> None:
        log = Log()
        options = {"initial_delay": 0.01, **log.callbacks()}
        async with serve_raw(server) as url:
            # Earlier roomkit.* parameters in the URL are replaced by the client's own.
            target = f"{url}/r?userId=ada&roomkit.seq=1"
            async with roomkit.connect(target, **options) as client:
                with anyio.fail_after(5):
                    received = [await client.receive() for _ in range(7)]
                assert client.session == roomkit.Session("c1", "e1", 7, True, True)
        assert received == [
            "four",
            b"\x00five",
            "unlogged",
            "six",  # "five again" was seen already: dropped
            b"seven",
            b"unlogged too",
            "eight",
        ]
        first, second = server.requests
        assert first.subprotocols == second.subprotocols == ["roomkit.v1"]
        assert first.target == "/r?userId=ada"
        resume = "roomkit.session=tok1&roomkit.epoch=e1&roomkit.seq=5"
        assert second.target == f"/r?userId=ada&{resume}"
        assert log.of(roomkit.OpenEvent) == [
            roomkit.OpenEvent(1, resumed=False, recovered=None),
            roomkit.OpenEvent(2, resumed=True, recovered=True),
        ]
        assert log.of(roomkit.CloseEvent)[0] == roomkit.CloseEvent(1006, "", True)

    run(backend, main)


@backends
def test_a_resync_is_told_to_the_application(backend: str) -> None:
    """recovered false: the client's position is the welcome's, in the new epoch."""
    server = EnvelopeServer(
        [
            [welcome_frame(), m_frame(4, "four")],
            [
                welcome_frame(epoch="e2", seq=2, recovered=False),
                m_frame(2, "before the welcome's head"),
                m_frame(3, "three"),
            ],
        ]
    )

    async def main() -> None:
        log = Log()
        options = {"initial_delay": 0.01, "on_open": log}
        async with serve_raw(server) as url, roomkit.connect(f"{url}/r", **options) as client:
            with anyio.fail_after(5):
                assert [await client.receive() for _ in range(2)] == ["four", "three"]
            assert client.session == roomkit.Session("c1", "e2", 2, False, False)
        assert log.events == [roomkit.OpenEvent(1), roomkit.OpenEvent(2, False, False)]
        assert server.requests[1].target.endswith("roomkit.epoch=e1&roomkit.seq=4")

    run(backend, main)


@backends
def test_typed_messages_are_decoded_from_the_envelopes_payload(backend: str) -> None:
    protocol = ChatRoom.protocol
    error = '{"type": "error", "message": "no"}'
    server = EnvelopeServer(
        [[welcome_frame(), m_frame(4, protocol.server.encode(Pong())), m_frame(None, error)]]
    )

    async def main() -> None:
        async with serve_raw(server) as url, roomkit.connect(url, protocol=protocol) as client:
            with anyio.fail_after(5):
                assert await client.receive() == Pong()
                assert await client.receive() == roomkit.ErrorMessage("no")

    run(backend, main)


@backends
def test_a_server_that_does_not_select_the_envelope_is_spoken_to_as_today(backend: str) -> None:
    frames = [m_frame(4, "x"), welcome_frame(), b"\x00" * 3]
    server = EnvelopeServer([frames, []], select=False)

    async def main() -> None:
        log = Log()
        async with serve_raw(server) as url:
            connect = roomkit.connect(f"{url}/r?a=1", initial_delay=0.01, on_open=log)
            async with connect as client:
                with anyio.fail_after(5):
                    assert [await client.receive() for _ in range(3)] == frames
                await log.wait_for(roomkit.OpenEvent, 2)
                assert client.session is None
        assert [r.target for r in server.requests] == ["/r?a=1", "/r?a=1"]  # no session
        assert server.requests[0].subprotocols == ["roomkit.v1"]  # though it was offered
        assert log.events == [roomkit.OpenEvent(1), roomkit.OpenEvent(2)]

    run(backend, main)


@backends
def test_a_connection_opens_with_its_welcome(backend: str) -> None:
    """A first frame that is not a welcome: a failed try. A close before the welcome: a
    close as any other (here one that says "don't come back"), but no open."""
    server = EnvelopeServer(
        [[m_frame(1, "no welcome")], [CloseConnection(4001, "banned")]],
    )

    async def main() -> None:
        log = Log()
        options = {"initial_delay": 0.01, **log.callbacks()}
        async with serve_raw(server) as url, roomkit.connect(url, **options) as client:
            with anyio.fail_after(5), pytest.raises(roomkit.ClientClosed) as info:
                await client.receive()
        assert (info.value.code, info.value.reason) == (4001, "banned")
        assert [type(e) for e in log.events] == [roomkit.ReconnectEvent]
        assert client.connections == 0 and client.session is None

    run(backend, main)


@backends
def test_max_message_size_counts_the_envelopes_payload_not_its_frame(backend: str) -> None:
    quotes, control = '"' * 1000, "\x00" * 1000  # escaped in JSON: 2 and 6 bytes each
    server = EnvelopeServer(
        [
            [welcome_frame(), m_frame(4, quotes), m_frame(5, control), m_frame(6, "x" * 1001)],
            [welcome_frame(session="tok2", seq=6, resumed=True, recovered=True)],
        ]
    )

    async def main() -> None:
        log = Log()
        options = {"max_message_size": 1000, "initial_delay": 0.01, "on_open": log}
        async with serve_raw(server) as url, roomkit.connect(url, **options) as client:
            with anyio.fail_after(5):
                assert [await client.receive() for _ in range(2)] == [quotes, control]
            await log.wait_for(roomkit.OpenEvent, 2)
            assert client.close_code == 1009
        # The message over the limit is skipped, as a plain client loses it: not asked
        # for again, which would only close the connection again.
        assert server.requests[1].target.endswith("roomkit.seq=6")

    run(backend, main)


@pytest.mark.parametrize(
    ("parts", "reason"),
    [
        # 1009 bytes of a longer binary message: its seq and a byte over 1000.
        (
            [BytesMessage(binary_frame(5, bytes(1001)), message_finished=False)],
            "a binary message is at most 1008",
        ),
        # The same in two frames, its seq split between them.
        (
            [
                BytesMessage(bytes(3), message_finished=False),
                BytesMessage(binary_frame(5, bytes(1001))[3:], message_finished=False),
            ],
            "a binary message is at most 1008",
        ),
        # 6032 bytes of a longer text one: over the worst escaping of 1000 bytes of text.
        (
            [TextMessage('["m",5,"' + "x" * 6024, message_finished=False)],
            "a text message is at most 6031",
        ),
    ],
)
@backends
def test_a_frame_over_its_bound_closes_with_1009_at_once_and_is_skipped(
    backend: str, parts: list[BytesMessage | TextMessage], reason: str
) -> None:
    """A frame longer than any payload of max_message_size can make is refused as its
    bytes come (the rest of it is never waited for, nor held), and its number counts as
    seen, so that the room does not replay it; what follows it still comes."""
    server = EnvelopeServer(
        [
            [welcome_frame(), binary_frame(4, bytes(1000)), *parts],  # 1008 bytes: fine
            [welcome_frame(session="tok2", seq=5, resumed=True, recovered=True), m_frame(6, "6")],
        ]
    )

    async def main() -> None:
        log = Log()
        options = {"max_message_size": 1000, "initial_delay": 0.01, "on_close": log}
        async with serve_raw(server) as url, roomkit.connect(url, **options) as client:
            with anyio.fail_after(5):
                assert await client.receive() == bytes(1000)
                assert await client.receive() == "6"
        first_close = log.events[0]
        assert (first_close.code, first_close.reason) == (1009, f"{reason} bytes")
        assert server.requests[1].target.endswith("roomkit.seq=5")

    run(backend, main)


@backends
def test_a_welcome_that_does_not_come_within_connect_timeout_is_a_failed_try(
    backend: str,
) -> None:
    async def main() -> None:
        async def silent(stream: anyio.abc.SocketStream) -> None:  # selects it, says nothing
            async with stream:
                ws = WSConnection(ConnectionType.SERVER)
                ws.receive_data(await read_head(stream))
                await stream.send(ws.send(AcceptConnection(subprotocol="roomkit.v1")))
                with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                    while True:
                        await stream.receive()

        log = Log()
        options = {"connect_timeout": 0.1, "initial_delay": 0.01, **log.callbacks()}
        async with serve_raw(silent) as url, roomkit.connect(url, **options) as client:
            await log.wait_for(roomkit.ReconnectEvent, 2)
            assert not client.connected and client.connections == 0
        assert [e.attempt for e in log.events[:2]] == [2, 3]  # failed tries, counted (as 503s)

    run(backend, main)


def test_bad_urls_are_refused() -> None:
    async def main() -> None:
        async with roomkit.connect("http://example.com/r"):
            pass

    with pytest.raises(ValueError, match="ws:// or wss://"):
        anyio.run(main)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"headers": {"X-A": "a\r\nX-Injected: 1"}}, ValueError, "X-A header's value"),
        ({"headers": {"X A": "v"}}, ValueError, "'X A' is not a header name"),
        ({"headers": {"X-A": "\u20ac"}}, ValueError, "cannot be sent"),
        ({"headers": {"X-A": 1}}, TypeError, "a header is a str"),
        ({"ping_interval": 0}, ValueError, "ping_interval must be more than 0"),
        ({"ping_timeout": float("nan")}, ValueError, "ping_timeout must be more than 0"),
        ({"connect_timeout": -1}, ValueError, "connect_timeout must be more than 0"),
        ({"max_retries": -1}, ValueError, "max_retries must be None or an int"),
        ({"max_message_size": 0}, ValueError, "max_message_size must be an int, 1 or more"),
        ({"max_queue": -1}, ValueError, "max_queue must be an int, 0 or more"),
    ],
)
def test_bad_options_are_refused_before_any_try(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    async def main() -> None:
        async with roomkit.connect("ws://127.0.0.1:1/r", **options):
            pass

    with pytest.raises(error, match=match) as info:  # not an ExceptionGroup, at a try
        anyio.run(main)
    assert type(info.value) is error


def test_which_closes_are_final() -> None:
    assert roomkit._client.is_final_close(1008, "rate limit exceeded")
    assert not roomkit._client.is_final_close(1008, "slow consumer")
    assert roomkit._client.is_final_close(4000) and roomkit._client.is_final_close(4999)
    assert not any(roomkit._client.is_final_close(code) for code in (1000, 1001, 1011, 3000))


@asynccontextmanager
async def cuttable(target: str) -> AsyncIterator[tuple[str, Callable[[], Awaitable[None]]]]:
    """A TCP relay to ``target`` (``ws://host:port``); its URL, and a function that cuts
    every connection through it at once, as a network that drops does (no close frame)."""
    host, port = target.removeprefix("ws://").rsplit(":", 1)
    streams: list[anyio.abc.SocketStream] = []

    async def relay(client: anyio.abc.SocketStream) -> None:
        async with client, await anyio.connect_tcp(host, int(port)) as server:
            streams.extend((client, server))
            async with anyio.create_task_group() as tasks:
                for source, sink in ((client, server), (server, client)):
                    tasks.start_soon(_pipe, source, sink, tasks.cancel_scope)

    async def cut() -> None:
        for stream in streams:
            await anyio.aclose_forcefully(stream)
        streams.clear()

    async with serve_raw(relay) as url:
        yield url, cut


async def _pipe(
    source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream, both: anyio.CancelScope
) -> None:
    with contextlib.suppress(
        anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError
    ):
        async for data in source:
            await sink.send(data)
    both.cancel()


@backends
def test_end_to_end_a_dropped_client_gets_exactly_what_it_missed_then_live(
    backend: str,
) -> None:
    """The issue's case against roomkit's server: seen 3, dropped, 4 to 10 broadcast
    meanwhile, back as the same session with exactly 4 to 10, then 11 live."""

    async def main() -> None:
        log = Log()
        async with ThreadServer() as server, cuttable(server.url) as (relay, cut):
            options = {"initial_delay": 0.3, **log.callbacks()}
            async with (
                roomkit.connect(f"{relay}/numbered/r", **options) as ann,
                roomkit.connect(f"{server.url}/numbered/r") as bob,
            ):
                await ann.wait_connected()
                await bob.wait_connected()
                with anyio.fail_after(5):
                    await bob.send("b 3")
                    assert [await ann.receive() for _ in range(3)] == ["n1", "n2", "n3"]
                    await cut()
                    await log.wait_for(roomkit.CloseEvent)
                    await bob.send("b 7")  # while ann is away (at least 0.3 s)
                    await log.wait_for(roomkit.OpenEvent, 2)
                    await bob.send("b 1")
                    received = [await ann.receive() for _ in range(8)]
                assert ann.session is not None and ann.session.seq == 10
        assert received == [f"n{n}" for n in range(4, 12)]
        assert log.of(roomkit.OpenEvent) == [
            roomkit.OpenEvent(1, resumed=False, recovered=None),
            roomkit.OpenEvent(2, resumed=True, recovered=True),
        ]

    run(backend, main)
