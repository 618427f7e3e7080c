"""Metrics: the plain counters as pure logic, and ``GET /metrics`` over a real socket.

Scrapes are parsed with prometheus-client's own text parser. Servers listen on
127.0.0.1 port 0; time that must pass (hibernation, alarms) is ``autojump_clock``'s,
over ``roomkit.testing``'s in-memory transport (the scrape too), so that the clock never
jumps with I/O in flight. The front door's timeout is real time, kept short.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any, Final

import pytest
import trio
import trio.testing
import trio_websocket
from prometheus_client.parser import text_string_to_metric_families
from wsproto.events import TextMessage

import roomkit
from roomkit._exposition import MetricsCollector
from roomkit._metrics import (
    CUT_REASONS,
    FORWARD_OUTCOMES,
    REFUSAL_REASONS,
    Histogram,
    Metrics,
    RoomMetrics,
)
from roomkit.testing import TestServer, open_test_server

from .helpers import Start, expect_close, http, memory_http, open_client
from .test_connection import raw_handshake, read_close

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

UPGRADE = (
    b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


SCRAPE: Final = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"


async def scrape(server: roomkit.Server | TestServer) -> Samples:
    if isinstance(server, TestServer):
        status, headers, body = await memory_http(server, SCRAPE)
    else:
        status, headers, body = await http(server.port, SCRAPE)
    assert status == 200
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(body.decode("utf-8"))


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


# The plain counters.


def test_histogram_buckets_are_upper_bounds_inclusive() -> None:
    histogram = Histogram((0.1, 1.0))
    for seconds in (0.05, 0.1, 0.5, 1.0, 3.0):
        histogram.observe(seconds)
    assert histogram.counts == [2, 2, 1]
    assert histogram.cumulative() == [(0.1, 2), (1.0, 4), (float("inf"), 5)]
    assert histogram.sum == pytest.approx(4.65)


def test_room_metrics_start_at_zero_and_time_each_hook_apart() -> None:
    counters = RoomMetrics()
    assert counters.messages_received == counters.bytes_sent == counters.alarms_run == 0
    assert counters.cut == dict.fromkeys(CUT_REASONS, 0)
    counters.hook_ran("on_message", 0.002)
    counters.hook_ran("on_message", 0.003)
    counters.hook_ran("on_connect", 0.5)
    assert sorted(counters.hooks) == ["on_connect", "on_message"]
    assert sum(counters.hooks["on_message"].counts) == 2
    assert counters.hooks["on_connect"].sum == 0.5


def test_metrics_are_kept_per_class_name() -> None:
    metrics = Metrics()

    class Chat(roomkit.Room):
        pass

    same_name = type("Chat", (roomkit.Room,), {})
    assert metrics.room(Chat) is metrics.room(same_name)
    assert list(metrics.rooms) == ["Chat"]
    metrics.refuse("origin")
    assert metrics.refused == dict.fromkeys(REFUSAL_REASONS, 0) | {"origin": 1}


class FakeRoom:
    def __init__(self, room_class: type, awake: bool, connections: int) -> None:
        self.room_class = room_class
        self.awake = awake
        self._connections = [object()] * connections

    def connections(self) -> list[object]:
        return self._connections


def test_collector_computes_gauges_from_the_live_rooms() -> None:
    class Chat(roomkit.Room):
        pass

    class Game(roomkit.Room):
        pass

    metrics = Metrics()
    metrics.room(Chat).messages_sent = 7
    metrics.room(Game)
    rooms: list[FakeRoom] = [FakeRoom(Chat, True, 3), FakeRoom(Chat, False, 2)]
    collector = MetricsCollector(metrics, lambda: rooms)
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in collector.collect()
        for sample in family.samples
    }
    assert value(samples, "roomkit_connections", room_class="Chat") == 5
    assert value(samples, "roomkit_connections", room_class="Game") == 0
    assert value(samples, "roomkit_rooms", room_class="Chat", state="awake") == 1
    assert value(samples, "roomkit_rooms", room_class="Chat", state="hibernated") == 1
    assert value(samples, "roomkit_rooms", room_class="Game", state="awake") == 0
    assert value(samples, "roomkit_messages_sent_total", room_class="Chat") == 7


def test_collector_reads_the_forwards_counts_and_how_many_are_open() -> None:
    metrics = Metrics()
    metrics.forwarded["spliced"] = 3
    metrics.forwarded["unreachable"] = 1
    metrics.forwarding = 2
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in MetricsCollector(metrics, list).collect()
        for sample in family.samples
    }
    assert value(samples, "roomkit_forwarded_total", outcome="spliced") == 3
    assert value(samples, "roomkit_forwarded_total", outcome="unreachable") == 1
    assert value(samples, "roomkit_forwarded_total", outcome="refused") == 0
    assert value(samples, "roomkit_forwarded_connections") == 2


# GET /metrics on a running server.


class Echo(roomkit.Room):
    rate_limit = roomkit.RateLimit(per_second=1, burst=2)
    max_message_size = 100
    hibernate_after = 10

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        if "reject" in request.query:
            raise roomkit.Reject(403, "go away")

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        await self.storage.put("last", message)
        conn.send(message)


async def test_metrics_are_off_unless_asked_for(start: Start) -> None:
    server = await start(Echo)
    status, _, body = await http(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, body) == (426, b"Expected websocket")


async def test_a_scrape_lists_every_metric_at_zero_before_any_traffic(start: Start) -> None:
    server = await start({"/echo": Echo}, metrics=True)
    samples = await scrape(server)
    assert value(samples, "roomkit_connections", room_class="Echo") == 0
    assert value(samples, "roomkit_messages_received_total", room_class="Echo") == 0
    for reason in CUT_REASONS:
        assert (
            value(samples, "roomkit_connections_cut_total", room_class="Echo", reason=reason) == 0
        )
    for reason in REFUSAL_REASONS:
        assert value(samples, "roomkit_handshakes_refused_total", reason=reason) == 0
    for outcome in FORWARD_OUTCOMES:
        assert value(samples, "roomkit_forwarded_total", outcome=outcome) == 0
    assert value(samples, "roomkit_forwarded_connections") == 0
    assert value(samples, "roomkit_storage_commit_duration_seconds_count") == 0
    assert ("process_open_fds", frozenset()) in samples  # prometheus-client's, on Linux


async def test_traffic_moves_the_counters(start: Start) -> None:
    server = await start(Echo, metrics=True)
    async with open_client(f"{server.url}/a") as ann, open_client(f"{server.url}/b") as bob:
        await ann.send_message("hello")
        assert await ann.get_message() == "hello"
        samples = await scrape(server)
        assert value(samples, "roomkit_connections", room_class="Echo") == 2
        assert value(samples, "roomkit_connections_opened_total", room_class="Echo") == 2
        assert value(samples, "roomkit_rooms", room_class="Echo", state="awake") == 2
        assert value(samples, "roomkit_messages_received_total", room_class="Echo") == 1
        assert value(samples, "roomkit_messages_sent_total", room_class="Echo") == 1
        # A 5-byte text message: 2 bytes of header and a 4-byte mask from the client;
        # 2 bytes of header back.
        assert value(samples, "roomkit_received_bytes_total", room_class="Echo") == 11
        assert value(samples, "roomkit_sent_bytes_total", room_class="Echo") == 7
        hooks = "roomkit_hook_duration_seconds_count"
        assert value(samples, hooks, room_class="Echo", hook="on_connect") == 2
        assert value(samples, hooks, room_class="Echo", hook="on_message") == 1
        assert value(samples, hooks, room_class="Echo", hook="on_start") == 2
        assert value(samples, "roomkit_storage_commit_duration_seconds_count") == 1  # one put
        await bob.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert server.room_count == 0
    samples = await scrape(server)
    assert value(samples, "roomkit_connections", room_class="Echo") == 0
    assert value(samples, "roomkit_rooms", room_class="Echo", state="awake") == 0
    assert (
        value(samples, "roomkit_hook_duration_seconds_count", room_class="Echo", hook="on_close")
        == 2
    )


async def test_cut_connections_are_counted_by_reason(
    start: Start, mock_clock: trio.testing.MockClock
) -> None:
    server = await start(Echo, metrics=True)
    async with open_client(f"{server.url}/r") as flood, open_client(f"{server.url}/r") as big:
        for _ in range(10):
            await flood.send_message("x")
        assert (await expect_close(flood)).code == 1008
        await big.send_message("x" * 101)
        assert (await expect_close(big)).code == 1009
    samples = await scrape(server)
    cut = "roomkit_connections_cut_total"
    assert value(samples, cut, room_class="Echo", reason="rate_limit") == 1
    assert value(samples, cut, room_class="Echo", reason="message_too_big") == 1
    assert value(samples, cut, room_class="Echo", reason="slow_consumer") == 0


async def test_a_connection_cut_twice_counts_once(start: Start) -> None:
    server = await start(Echo, metrics=True)
    stream, ws = await raw_handshake(server.port, "/r")
    await stream.send_all(ws.send(TextMessage("x" * 101)))
    assert (await read_close(stream, ws)).code == 1009
    await stream.send_all(b"\x81\x05hello")  # and an unmasked frame: a protocol error too
    with trio.fail_after(5):
        while await stream.receive_some():
            pass
    await stream.aclose()
    await trio.testing.wait_all_tasks_blocked()
    samples = await scrape(server)
    cut = "roomkit_connections_cut_total"
    assert value(samples, cut, room_class="Echo", reason="message_too_big") == 1
    assert value(samples, cut, room_class="Echo", reason="protocol_error") == 0


class _Unnamed:
    """A hook made by a decorator that leaves no ``__name__``: a partial, per instance."""

    def __init__(self, function: Callable[..., Awaitable[None]]) -> None:
        self.function = function

    def __get__(self, room: object, owner: type) -> Callable[..., Awaitable[None]]:
        return functools.partial(self.function, room)


async def _echo(room: roomkit.Room, conn: roomkit.Connection, message: Any) -> None:
    conn.send(message)


class Decorated(roomkit.Room):
    on_message = _Unnamed(_echo)


async def test_hooks_are_timed_by_their_names_whatever_they_are(start: Start) -> None:
    server = await start(Decorated, metrics=True)
    async with open_client(f"{server.url}/r") as ws:
        await ws.send_message("hi")
        with trio.fail_after(5):
            assert await ws.get_message() == "hi"
    samples = await scrape(server)
    hooks = "roomkit_hook_duration_seconds_count"
    assert value(samples, hooks, room_class="Decorated", hook="on_message") == 1


async def test_hibernated_rooms_are_counted_apart(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(Echo, metrics=True) as server, server.connect("/r"):
        samples = await scrape(server)
        assert value(samples, "roomkit_rooms", room_class="Echo", state="awake") == 1
        assert value(samples, "roomkit_rooms", room_class="Echo", state="hibernated") == 0
        await trio.sleep(11)  # hibernate_after
        samples = await scrape(server)
        assert value(samples, "roomkit_rooms", room_class="Echo", state="awake") == 0
        assert value(samples, "roomkit_rooms", room_class="Echo", state="hibernated") == 1
        assert value(samples, "roomkit_connections", room_class="Echo") == 1


async def test_refused_handshakes_are_counted_by_reason(start: Start) -> None:
    server = await start({"/echo": Echo}, metrics=True, allowed_origins=["https://ok.example"])
    for target, headers in [
        (b"/nowhere/r", b""),
        (b"/echo/r", b"Origin: https://evil.example\r\n"),
        (b"/echo/r?reject", b""),
    ]:
        request = b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n" + UPGRADE + headers + b"\r\n"
        status, _, _ = await http(server.port, request)
        assert status in (403, 404)
    bad_version = UPGRADE.replace(b"Version: 13", b"Version: 8")
    request = b"GET /echo/r HTTP/1.1\r\nHost: x\r\n" + bad_version + b"\r\n"
    assert (await http(server.port, request))[0] == 426
    assert (await http(server.port, b"NOT HTTP\r\n\r\n"))[0] == 400
    await http(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # not a handshake
    samples = await scrape(server)
    refused = {
        reason: value(samples, "roomkit_handshakes_refused_total", reason=reason)
        for reason in REFUSAL_REASONS
    }
    expected = dict.fromkeys(REFUSAL_REASONS, 0.0)
    assert refused == expected | {
        "not_found": 1,
        "origin": 1,
        "rejected": 1,
        "bad_handshake": 1,
        "bad_request": 1,
    }


async def test_a_head_that_never_comes_is_counted(start: Start) -> None:
    server = await start(Echo, metrics=True, handshake_timeout=0.1)
    async with await trio.open_tcp_stream("127.0.0.1", server.port) as silent:
        await silent.send_all(b"GET /r HTTP/1.1\r\n")  # and nothing more
        with trio.fail_after(6):
            assert await silent.receive_some() == b""  # dropped without an answer
    samples = await scrape(server)
    assert value(samples, "roomkit_handshakes_refused_total", reason="timeout") == 1


class Full(roomkit.Room):
    max_connections = 1


async def test_a_full_room_and_a_full_server_are_counted(start: Start) -> None:
    room_full = await start(Full, metrics=True)
    server_full = await start(Echo, metrics=True, max_connections=1)
    for server in (room_full, server_full):
        async with open_client(f"{server.url}/r"):
            with pytest.raises(trio_websocket.HandshakeError):
                async with open_client(f"{server.url}/r"):
                    pass
    refused = "roomkit_handshakes_refused_total"
    samples = await scrape(room_full)
    assert value(samples, refused, reason="room_full") == 1
    assert value(samples, refused, reason="server_full") == 0
    samples = await scrape(server_full)
    assert value(samples, refused, reason="server_full") == 1


class Alarmed(roomkit.Room):
    failures = 0

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        await self.storage.set_alarm(delay=1)

    async def on_alarm(self, info: roomkit.AlarmInfo) -> None:
        self.broadcast(json.dumps({"retry": info.retry_count}))
        if info.retry_count == 0:
            raise RuntimeError("first try fails")

    async def on_error(self, conn: roomkit.Connection | None, error: Exception) -> None:
        pass


async def test_alarms_run_and_retried(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(Alarmed, metrics=True) as server, server.connect("/r") as client:
        with trio.fail_after(120):
            assert await client.receive() == {"retry": 1}
        samples = await scrape(server)
    assert value(samples, "roomkit_alarms_run_total", room_class="Alarmed") == 2
    assert value(samples, "roomkit_alarms_retried_total", room_class="Alarmed") == 1


async def test_each_metric_family_has_a_type_and_help(start: Start) -> None:
    server = await start(Echo, metrics=True)
    _, _, body = await http(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    families = list(text_string_to_metric_families(body.decode()))
    roomkit_families = {f.name: f.type for f in families if f.name.startswith("roomkit_")}
    assert roomkit_families == {
        "roomkit_connections": "gauge",
        "roomkit_rooms": "gauge",
        "roomkit_connections_opened": "counter",
        "roomkit_messages_received": "counter",
        "roomkit_messages_sent": "counter",
        "roomkit_received_bytes": "counter",
        "roomkit_sent_bytes": "counter",
        "roomkit_alarms_run": "counter",
        "roomkit_alarms_retried": "counter",
        "roomkit_internal_errors": "counter",
        "roomkit_connections_cut": "counter",
        "roomkit_http_requests": "counter",
        "roomkit_hook_duration_seconds": "histogram",
        "roomkit_handshakes_refused": "counter",
        "roomkit_handoffs": "counter",
        "roomkit_forwarded": "counter",
        "roomkit_forwarded_connections": "gauge",
        "roomkit_storage_commit_duration_seconds": "histogram",
        "roomkit_storage_commit_failures": "counter",
    }
    assert all(f.documentation for f in families)
