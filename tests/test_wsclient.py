"""The Python client's WebSocket (``roomkit._wsclient``), through ``roomkit.connect``,
against a server roomkit did not write (the ``websockets`` package's) and raw peers
that misbehave, under asyncio and under Trio.

Rules as in test_client.py: plain tests running ``anyio.run`` on each backend, real
sockets on 127.0.0.1 port 0, real time bounded with ``fail_after``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio
import anyio.abc
import pytest
from websockets.sync.server import ServerConnection, serve
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request

import roomkit
from roomkit._core.frontdoor import Response

from .clientservers import serve_raw

backends = pytest.mark.parametrize("backend", ["asyncio", "trio"])


@contextmanager
def websockets_server(
    handler: Callable[[ServerConnection], None], **options: float
) -> Iterator[str]:
    """The ``websockets`` package's server in a thread, for the block; its URL."""
    with serve(handler, "127.0.0.1", 0, **options) as server:
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        try:
            yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}"
        finally:
            server.shutdown()
            thread.join(10)


def talk(ws: ServerConnection) -> None:
    """``fragments``: a message in three frames; ``binary``: bytes; ``close``: 4001;
    anything else is echoed."""
    for message in ws:
        if message == "fragments":
            ws.send(["one ", "two ", "three"])
        elif message == "binary":
            ws.send(b"\x00\xff")
        elif message == "close":
            ws.close(4001, "banned")
        else:
            ws.send(message)


@backends
def test_against_the_websockets_package_server(backend: str) -> None:
    async def main(url: str) -> None:
        closes: list[roomkit.CloseEvent] = []
        options = {"ping_interval": 0.05, "ping_timeout": 0.2}  # its pongs come back
        async with roomkit.connect(f"{url}/r", **options, on_close=closes.append) as client:
            with anyio.fail_after(5):
                await client.send("hello")
                assert await client.receive() == "hello"
                await client.send("fragments")  # assembled from its frames
                assert await client.receive() == "one two three"
                await client.send("binary")
                assert await client.receive() == b"\x00\xff"
                await anyio.sleep(0.5)  # pings both ways, answered both ways
                assert closes == [] and client.connections == 1
                await client.send("close")
                with pytest.raises(roomkit.ClientClosed) as info:
                    await client.receive()
            assert (info.value.code, info.value.reason) == (4001, "banned")

    with websockets_server(talk, ping_interval=0.1, ping_timeout=0.1) as url:
        anyio.run(main, url, backend=backend)


async def accept(stream: anyio.abc.SocketStream) -> WSConnection:
    """The server's side of a handshake, by hand."""
    ws = WSConnection(ConnectionType.SERVER)
    while True:
        ws.receive_data(await stream.receive())
        if any(isinstance(event, Request) for event in ws.events()):
            await stream.send(ws.send(AcceptConnection()))
            return ws


@backends
def test_a_frame_the_client_cannot_parse_closes_with_1002_and_it_comes_back(
    backend: str,
) -> None:
    async def main() -> None:
        closes: list[CloseConnection] = []

        async def garbled(stream: anyio.abc.SocketStream) -> None:
            async with stream:
                ws = await accept(stream)
                await stream.send(b"\x83\x00")  # opcode 3: reserved
                ws.receive_data(await stream.receive())
                closes.extend(e for e in ws.events() if isinstance(e, CloseConnection))

        log: list[roomkit.CloseEvent] = []
        reopened = anyio.Event()

        def opened(event: roomkit.OpenEvent) -> None:
            if event.connections == 2:
                reopened.set()

        async with serve_raw(garbled) as url:
            options = {"initial_delay": 0.01, "ping_interval": None, "on_open": opened}
            async with roomkit.connect(f"{url}/r", on_close=log.append, **options):
                with anyio.fail_after(5):
                    await reopened.wait()
        assert closes[0].code == 1002
        assert log[0].code == 1002 and log[0].will_reconnect

    anyio.run(main, backend=backend)


@backends
def test_a_refusals_body_is_the_reason_up_to_4_kib(backend: str) -> None:
    async def main() -> None:
        async def refuse(stream: anyio.abc.SocketStream) -> None:
            async with stream:
                await stream.receive()
                await stream.send(Response(403, "n" * 10_000).to_bytes())

        async with serve_raw(refuse) as url, roomkit.connect(f"{url}/r") as client:
            with anyio.fail_after(5), pytest.raises(roomkit.ClientClosed) as info:
                await client.receive()
        assert info.value.status == 403 and info.value.reason == "n" * 4096

    anyio.run(main, backend=backend)


@backends
def test_a_server_that_never_answers_the_handshake_costs_one_timeout_per_try(
    backend: str,
) -> None:
    async def main() -> None:
        tries = 0

        async def silent(stream: anyio.abc.SocketStream) -> None:
            nonlocal tries
            tries += 1
            async with stream:
                await anyio.sleep_forever()

        async with serve_raw(silent) as url:
            began = anyio.current_time()
            options = {"connect_timeout": 0.2, "max_retries": 0}
            async with roomkit.connect(f"{url}/r", **options) as client:
                with anyio.fail_after(5), pytest.raises(roomkit.ClientClosed, match="gave up"):
                    await client.receive()
            assert anyio.current_time() - began >= 0.2  # the timeout was waited out
        assert tries == 1

    anyio.run(main, backend=backend)


@pytest.mark.parametrize("reply", [b"", b"HTTP/1.1 101 Switching Protocols\r\n", b"SSH-2.0\r\n"])
@backends
def test_a_server_that_hangs_up_in_the_handshake_is_a_failed_try(
    backend: str, reply: bytes
) -> None:
    async def main() -> None:
        async def hang_up(stream: anyio.abc.SocketStream) -> None:
            async with stream:
                await stream.receive()
                await stream.send(reply)

        async with serve_raw(hang_up) as url:
            async with roomkit.connect(f"{url}/r", max_retries=0) as client:
                with anyio.fail_after(5), pytest.raises(roomkit.ClientClosed, match="gave up"):
                    await client.receive()
            assert client.connections == 0

    anyio.run(main, backend=backend)
