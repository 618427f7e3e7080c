"""TLS: ``wss://`` with a certificate from a throwaway CA (trustme), over real sockets.

Clients: trio-websocket's, the ``websockets`` package's and ``roomkit.connect``; the
command line's ``--certfile``/``--keyfile`` in one subprocess.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trustme
from websockets.sync.client import connect

import roomkit

from .helpers import Start, open_client, roomkit_serve


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
    """Greets each connection with its remote address; ``burst N`` broadcasts N
    messages in one hook (so they leave as one write); anything else is echoed."""

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        conn.send(json.dumps({"remote": request.remote}))

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


def test_an_ssl_context_needs_a_wss_url(client_context: ssl.SSLContext) -> None:
    async def main() -> None:
        async with roomkit.connect("ws://127.0.0.1:1/r", ssl_context=client_context):
            pass

    with pytest.raises(ValueError, match="wss://"):
        trio.run(main)


async def test_a_client_that_never_finishes_tls_is_dropped_after_the_handshake_timeout(
    start: Start,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = await start(Chorus, ssl_context=server_context, handshake_timeout=3)
    # A ClientHello, then silence: the server answers and waits for the rest.
    tls = client_context.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO())
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        began = trio.current_time()
        await stream.send_all(outgoing.read())
        with trio.fail_after(10):
            while await stream.receive_some():
                pass  # the server's hello
        assert trio.current_time() - began == 3


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
            assert '"type": "welcome"' in str(ws.recv(timeout=5))
