"""``_accept``: how ``serve`` and ``proxy`` read a request head.

In memory (``trio.testing.memory_stream_pair``), on ``autojump_clock``: the bytes a
client sends, and exactly what the reading returns.
"""

from __future__ import annotations

import trio
import trio.testing

from roomkit._accept import MAX_HEAD, Head, read_head, read_request
from roomkit._core.frontdoor import Response

HEAD = b"GET /lobby?x=1 HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\n\r\n"


def sent(*chunks: bytes, close: bool = False) -> trio.testing.MemoryReceiveStream:
    """A stream from which ``chunks`` can be received, each as one read, then EOF."""
    stream = trio.testing.MemoryReceiveStream()
    for chunk in chunks:
        stream.put_data(chunk)
    if close:
        stream.put_eof()
    return stream


async def test_a_head_is_parsed_and_what_follows_it_kept() -> None:
    read = await read_head(sent(HEAD[:10], HEAD[10:] + b"\x81\x00"))
    assert isinstance(read, Head)
    assert (read.request.method, read.request.target) == ("GET", "/lobby?x=1")
    assert read.request.headers["upgrade"] == "websocket"
    assert read.rest == b"\x81\x00"


async def test_a_head_past_the_limit_is_431_however_it_arrives() -> None:
    too_large = Response(431, "Request header fields too large")
    filler = b"X-Filler: " + b"a" * MAX_HEAD + b"\r\n"
    assert await read_head(sent(filler)) == too_large  # before its end arrives
    assert await read_head(sent(b"GET / HTTP/1.1\r\n" + filler + b"\r\n")) == too_large


async def test_a_head_that_is_not_http_is_400() -> None:
    read = await read_head(sent(b"HELLO\r\n\r\n"))
    assert isinstance(read, Response) and read.status == 400


async def test_a_peer_that_leaves_first_gives_nothing() -> None:
    assert await read_head(sent(HEAD[:20], close=True)) is None


async def test_read_request_drops_a_slow_client_at_its_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(HEAD[:20])
    start = trio.current_time()
    secured, read, reason = await read_request(None, 2.5, server)
    assert (secured, read, reason) == (server, None, "timeout")
    assert trio.current_time() - start == 2.5


async def test_read_request_without_tls_reads_on_the_stream_itself() -> None:
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(HEAD)
    secured, read, reason = await read_request(None, 10, server)
    assert secured is server and reason is None
    assert isinstance(read, Head) and read.rest == b""


async def _socket_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    """A connected TCP pair on 127.0.0.1: (the client's end, the server's end)."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    async with listener:
        port = listener.socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = await listener.accept()
    assert isinstance(server, trio.SocketStream)
    return client, server


async def test_a_head_already_received_over_tcp_is_read_without_waiting() -> None:
    client, server = await _socket_pair()
    async with client, server:
        await client.send_all(HEAD + b"\x81\x00")
        await trio.testing.wait_all_tasks_blocked()
        with trio.testing.assert_no_checkpoints():  # no deadline, no wait: it is there
            secured, read, failure = await read_request(None, 10, server)
        assert secured is server and failure is None
        assert isinstance(read, Head) and read.raw == HEAD and read.rest == b"\x81\x00"


async def test_over_tcp_the_rest_of_a_head_is_awaited_and_a_client_that_left_is_none() -> None:
    client, server = await _socket_pair()
    async with client, server:
        await client.send_all(HEAD[:10])
        await trio.testing.wait_all_tasks_blocked()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, HEAD[10:])
            _, read, _ = await read_request(None, 10, server)
        assert isinstance(read, Head) and read.raw == HEAD
    client, server = await _socket_pair()
    async with server:
        await client.send_all(HEAD[:10])
        await client.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert await read_request(None, 10, server) == (server, None, None)


async def test_over_tcp_a_head_that_stops_half_way_times_out(
    autojump_clock: trio.abc.Clock,
) -> None:
    # Nothing is in flight while the clock jumps: the half head is in before the wait.
    client, server = await _socket_pair()
    async with client, server:
        await client.send_all(HEAD[:10])  # and nothing more
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        assert await read_request(None, 10, server) == (server, None, "timeout")
        assert trio.current_time() == start + 10
