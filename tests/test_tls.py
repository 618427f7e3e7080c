"""TLS: ``wss://`` with a certificate from a throwaway CA (trustme), over real sockets.

Served by ``serve`` and by ``proxy``'s own listener. Clients: trio-websocket's, the
``websockets`` package's and ``roomkit.connect``; the command line's
``--certfile``/``--keyfile`` in a subprocess, for each command.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trustme
from websockets.sync.client import connect

import roomkit

from .helpers import Start, open_client, roomkit_command, roomkit_serve


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


class Chorus(roomkit.Room):
    """Greets each connection with its remote address (and the scheme a proxy says it
    came by); ``burst N`` broadcasts N messages in one hook (so they leave as one
    write); anything else is echoed."""

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        proto = request.headers.get("x-forwarded-proto")
        conn.send(json.dumps({"remote": request.remote, "proto": proto}))

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        if message.startswith("burst "):
            for i in range(int(message.split()[1])):
                self.broadcast(f"{i:04} " + "x" * 200)
        else:
            conn.send(f"echo {message}")


async def test_trio_websocket_client_over_wss_and_a_fan_out(
    start: Start, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    server = await start(Chorus, ssl_context=server_context)
    assert server.url == f"wss://127.0.0.1:{server.port}"
    async with (
        open_client(f"{server.url}/r", client_context) as a,
        open_client(f"{server.url}/r", client_context) as b,
    ):
        for ws in (a, b):
            with trio.fail_after(5):
                greeting = json.loads(await ws.get_message())
            assert greeting["remote"][0] == "127.0.0.1"  # the address, through TLS
        await a.send_message("burst 300")
        for ws in (a, b):  # every message, whole and in order, through TLS
            with trio.fail_after(10):
                got = [await ws.get_message() for _ in range(300)]
            assert got == [f"{i:04} " + "x" * 200 for i in range(300)]


async def test_websockets_package_client_over_wss(
    start: Start, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    server = await start(Chorus, ssl_context=server_context)

    def talk() -> list[Any]:
        with connect(f"{server.url}/sync", ssl=client_context) as ws:
            ws.recv(timeout=5)  # the greeting
            ws.send("hello")
            ws.send("burst 3")
            return [ws.recv(timeout=5) for _ in range(4)]

    replies = await trio.to_thread.run_sync(talk)
    assert replies[0] == "echo hello" and [r[:4] for r in replies[1:]] == ["0000", "0001", "0002"]


async def test_roomkit_connect_over_wss(
    start: Start, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    server = await start(Chorus, ssl_context=server_context)
    async with roomkit.connect(f"{server.url}/r", ssl_context=client_context) as client:
        with trio.fail_after(5):
            assert "remote" in json.loads(await client.receive())
            await client.send("hi")
            assert await client.receive() == "echo hi"


async def test_a_client_that_does_not_trust_the_certificate_does_not_connect(
    start: Start, server_context: ssl.SSLContext, autojump_clock: trio.testing.MockClock
) -> None:
    server = await start(Chorus, ssl_context=server_context)
    untrusting = ssl.create_default_context()  # the system's CAs: not ours
    async with roomkit.connect(f"{server.url}/r", ssl_context=untrusting, max_retries=0) as client:
        with trio.fail_after(30), pytest.raises(roomkit.ClientClosed, match="gave up"):
            await client.receive()
        assert client.connections == 0


async def test_serve_refuses_an_ssl_context_that_is_not_one_before_listening() -> None:
    with trio.fail_after(5), pytest.raises(TypeError, match=r"ssl\.SSLContext or None"):
        await roomkit.serve(Chorus, port=0, ssl_context="cert.pem")  # type: ignore[typeddict-item]


def test_an_ssl_context_needs_a_wss_url(client_context: ssl.SSLContext) -> None:
    async def main() -> None:
        async with roomkit.connect("ws://127.0.0.1:1/r", ssl_context=client_context):
            pass

    with pytest.raises(ValueError, match="wss://"):
        trio.run(main)


async def seconds_from_a_client_hello_to_the_end(port: int, context: ssl.SSLContext) -> float:
    """Send the listener at ``port`` a ClientHello, then nothing: the seconds it takes to
    end the connection (having answered with its own hello)."""
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO())
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        began = trio.current_time()
        await stream.send_all(outgoing.read())
        with trio.fail_after(10):
            while await stream.receive_some():
                pass  # the listener's hello
        return trio.current_time() - began


async def test_a_client_that_never_finishes_tls_is_dropped_after_the_handshake_timeout(
    start: Start,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = await start(Chorus, ssl_context=server_context, handshake_timeout=3)
    assert await seconds_from_a_client_hello_to_the_end(server.port, client_context) == 3


async def test_plain_http_to_a_tls_port_is_dropped_and_counted(
    start: Start, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    server = await start(Chorus, ssl_context=server_context, metrics=True)
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        await stream.send_all(b"GET /r HTTP/1.1\r\nHost: x\r\n\r\n")
        with trio.fail_after(5):
            data = await stream.receive_some()
        assert b"HTTP/1.1" not in data  # a TLS alert at most, then the end
    # The metrics page over HTTPS, which ends with a close_notify: reading to the end
    # raises nothing (a bare EOF would be BrokenResourceError).
    tls = trio.SSLStream(
        await trio.open_tcp_stream("127.0.0.1", server.port),
        client_context,
        server_hostname="127.0.0.1",
    )
    async with tls:
        await tls.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        page = b""
        with trio.fail_after(5):
            while data := await tls.receive_some():
                page += data
    refused = 'roomkit_handshakes_refused_total{reason="tls"} 1.0'
    assert refused in page.decode().splitlines()


@pytest.fixture
def pem_files(ca: trustme.CA, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(certfile)
    for more in cert.cert_chain_pems[1:]:
        more.write_to_path(certfile, append=True)
    cert.private_key_pem.write_to_path(keyfile)
    yield certfile, keyfile


def test_cli_serves_wss_with_certfile_and_keyfile(
    pem_files: tuple[Path, Path], client_context: ssl.SSLContext
) -> None:
    certfile, keyfile = pem_files
    options = ("--storage", ":memory:", "--certfile", str(certfile), "--keyfile", str(keyfile))
    with roomkit_serve("examples.chat:ChatRoom", *options) as (_, url):
        assert url.startswith("wss://127.0.0.1:")
        with connect(f"{url}/lobby?userId=ann", ssl=client_context) as ws:
            assert '"type":"welcome"' in str(ws.recv(timeout=5))


# The proxy's own listener.


async def start_proxy(nursery: trio.Nursery, backend: str, **kwargs: Any) -> roomkit.ProxyServer:
    front: roomkit.ProxyServer = await nursery.start(
        partial(roomkit.proxy, backend, port=0, **kwargs)
    )
    return front


async def test_a_proxy_listens_for_wss_with_an_ssl_context(
    start: Start,
    nursery: trio.Nursery,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    backend = await start(Chorus)
    front = await start_proxy(nursery, backend.url, ssl_context=server_context)
    assert front.tls and front.url == f"wss://127.0.0.1:{front.port}"

    def talk() -> list[Any]:
        with connect(f"{front.url}/r", ssl=client_context, open_timeout=5) as ws:
            greeting = json.loads(ws.recv(timeout=5))
            ws.send("hello")
            ws.send("burst 3")
            return [greeting, *(ws.recv(timeout=5) for _ in range(4))]

    greeting, *replies = await trio.to_thread.run_sync(talk)
    assert greeting["remote"][0] == "127.0.0.1"  # the proxy's address, as the backend sees it
    assert greeting["proto"] == "https"  # the scheme the client reached the proxy by
    assert replies[0] == "echo hello" and [r[:4] for r in replies[1:]] == ["0000", "0001", "0002"]
    async with open_client(f"{front.url}/r", client_context) as ws:  # trio-websocket's too
        with trio.fail_after(5):
            assert "remote" in json.loads(await ws.get_message())
            await ws.send_message("hi")
            assert await ws.get_message() == "echo hi"


async def read_to_the_end(
    front: roomkit.ProxyServer, client_context: ssl.SSLContext, request: bytes
) -> bytes:
    """Send ``request`` over TLS and read the answer to its end, which must be a
    close_notify: a bare EOF would raise BrokenResourceError."""
    tls = trio.SSLStream(
        await trio.open_tcp_stream("127.0.0.1", front.port),
        client_context,
        server_hostname="127.0.0.1",
    )
    async with tls:
        await tls.send_all(request)
        answer = b""
        with trio.fail_after(5):
            while data := await tls.receive_some():
                answer += data
    return answer


async def test_plain_http_to_the_proxys_tls_port_is_dropped_counted_and_logged(
    start: Start,
    nursery: trio.Nursery,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, "roomkit.proxy")
    backend = await start(Chorus)
    front = await start_proxy(nursery, backend.url, ssl_context=server_context)
    for _ in range(2):
        stream = await trio.open_tcp_stream("127.0.0.1", front.port)
        async with stream:
            await stream.send_all(b"GET /r HTTP/1.1\r\nHost: x\r\n\r\n")
            with trio.fail_after(5):
                data = await stream.receive_some()
            assert b"HTTP/1.1" not in data  # a TLS alert at most, then the end
    # Plain HTTP answers over TLS end with a close_notify.
    health = await read_to_the_end(
        front, client_context, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert health.startswith(b"HTTP/1.1 200 ") and health.endswith(b"ok")
    refused = await read_to_the_end(
        front,
        client_context,
        b"GET /r HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 12\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    assert refused.startswith(b"HTTP/1.1 426 ")
    dropped = [r for r in caplog.records if r.name == "roomkit.proxy"]
    assert [(r.levelname, r.__dict__["reason"], r.__dict__["dropped"]) for r in dropped] == [
        ("DEBUG", "tls", 1),
        ("DEBUG", "tls", 2),
    ]
    assert dropped[0].getMessage() == (
        f"proxy: handshake from {dropped[0].__dict__['remote']} refused: dropped tls"
    )


async def test_a_client_that_never_finishes_tls_with_the_proxy_is_dropped_in_time(
    nursery: trio.Nursery,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, "roomkit.proxy")
    front = await start_proxy(
        nursery, "ws://127.0.0.1:9", ssl_context=server_context, handshake_timeout=3
    )
    assert await seconds_from_a_client_hello_to_the_end(front.port, client_context) == 3
    [record] = [r for r in caplog.records if r.name == "roomkit.proxy"]
    assert (record.__dict__["reason"], record.__dict__["dropped"]) == ("timeout", 1)


def test_cli_proxy_listens_for_wss_with_certfile_and_keyfile(
    pem_files: tuple[Path, Path], client_context: ssl.SSLContext
) -> None:
    certfile, keyfile = pem_files
    files = ("--certfile", str(certfile), "--keyfile", str(keyfile))
    with (
        roomkit_serve("examples.chat:ChatRoom", "--storage", ":memory:") as (_, backend),
        roomkit_command("proxy", backend, "--port", "0", *files) as (_, url),
    ):
        assert url.startswith("wss://127.0.0.1:")
        with connect(f"{url}/lobby?userId=ann", ssl=client_context, open_timeout=10) as ws:
            assert '"type":"welcome"' in str(ws.recv(timeout=5))
