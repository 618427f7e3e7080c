"""The per-connection machine (pure): bytes and times in, exact deliveries, frames and
cuts out, with no socket.

A client side of wsproto's low-level connection makes the (masked) bytes a real client
would send; what the machine queues for the peer is compared byte for byte.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import attrs
import pytest
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

import roomkit
from roomkit._core.frames import encode_message
from roomkit._core.lifecycle import ConnectionState, Phase, Trigger
from roomkit._core.limits import RATE_LIMITED
from roomkit._core.peer import AUTO, CLOSE, CUT, END, PING, PONG, TIMEOUT, WRITE, Peer
from roomkit._core.sendqueue import SLOW_CONSUMER
from roomkit._metrics import RoomMetrics
from roomkit._protocol import error_message


def open_peer(**settings: Any) -> tuple[Peer, WSConnection, RoomMetrics]:
    """A peer machine admitted to its room, the client that talks to it, and its counters."""
    metrics = RoomMetrics()
    options: dict[str, Any] = {
        "max_message_size": 100,
        "max_send_queue": 1000,
        "rate_limit": None,
        "auto_response": None,
        "protocol": None,
        "metrics": metrics,
    }
    options |= settings
    peer = Peer(b"", 0.0, **options)
    peer.move(Trigger.ADMIT)
    return peer, WSConnection(ConnectionType.CLIENT), options["metrics"]


def text(client: WSConnection, *messages: str) -> bytes:
    return b"".join(client.send(TextMessage(m)) for m in messages)


def test_messages_of_one_chunk_are_delivered_in_order_by_one_call() -> None:
    peer, client, metrics = open_peer()
    assert peer.receive(text(client, "a", "b", "c"), 2.5) == (["a", "b", "c"], 0)
    assert (peer.last_seen, metrics.messages_received) == (2.5, 3)
    assert peer.queue.frames == []


def test_binary_messages_are_delivered_as_bytes() -> None:
    peer, client, _ = open_peer()
    assert peer.receive(client.send(BytesMessage(b"\x00\x01")), 0.0) == ([b"\x00\x01"], 0)


def test_an_empty_message_is_delivered() -> None:
    peer, client, _ = open_peer()
    assert peer.receive(text(client, "", "x"), 0.0) == (["", "x"], 0)


def test_a_message_in_fragments_is_delivered_once_whole() -> None:
    peer, client, _ = open_peer()
    first = client.send(TextMessage("hel", message_finished=False))
    assert peer.receive(first, 0.0) == ([], 0)
    assert peer.buffered == 3
    assert peer.receive(client.send(TextMessage("lo")), 0.0) == (["hello"], 0)
    assert peer.buffered == 0


def test_a_message_past_the_size_limit_is_cut_with_1009() -> None:
    peer, client, metrics = open_peer(max_message_size=5)
    assert peer.receive(text(client, "12345"), 0.0) == (["12345"], 0)
    assert peer.receive(text(client, "123456", "after"), 0.0) == ([], CUT)
    assert peer.cut == (1009, "Message too big")
    assert (peer.phase, peer.state) == (Phase.DEAF, ConnectionState.OPEN)
    assert metrics.cut["message_too_big"] == 1 and peer.cut_reason == "message_too_big"
    assert peer.receive(text(client, "more"), 0.0) == ([], 0)  # deaf: nothing delivered


def test_the_size_limit_counts_utf8_bytes() -> None:
    peer, client, _ = open_peer(max_message_size=5)
    assert peer.receive(text(client, "ééé"), 0.0) == ([], CUT)  # 3 characters, 6 bytes


def test_a_message_without_a_token_is_dropped_and_answered() -> None:
    peer, client, metrics = open_peer(rate_limit=roomkit.RateLimit(per_second=10, burst=2))
    assert peer.receive(text(client, "a", "b", "c"), 0.0) == (["a", "b"], WRITE)
    assert peer.queue.frames == [RATE_LIMITED]
    assert (metrics.messages_received, metrics.messages_sent) == (3, 1)
    assert peer.receive(text(client, "d"), 0.1) == (["d"], 0)  # a token back after 0.1 s


def test_the_flood_cut_comes_after_exactly_the_patience() -> None:
    # 10 a second for 3 seconds: 30 drops' patience, the 30th of which is the flood.
    limit = roomkit.RateLimit(per_second=10, burst=5)
    peer, client, metrics = open_peer(rate_limit=limit, max_send_queue=10_000)
    burst = [str(i) for i in range(5)]
    assert peer.receive(text(client, *burst, *["x"] * 29), 0.0) == (burst, WRITE)
    assert peer.queue.frames == [RATE_LIMITED] * 29 and peer.cut is None
    assert peer.receive(text(client, "x", "y"), 0.0) == ([], CUT)
    assert peer.cut == (1008, "rate limit exceeded")
    assert metrics.cut["rate_limit"] == 1
    assert len(peer.queue.frames) == 29  # no reply to the flood, nor to what follows


def test_an_auto_response_answers_its_request_here_and_says_so() -> None:
    pong = encode_message("pong")
    peer, client, _ = open_peer(auto_response=("ping", pong))
    assert peer.receive(text(client, "ping", "other"), 0.0) == (["other"], WRITE | AUTO)
    assert peer.queue.frames == [pong]
    assert peer.receive(text(client, "other"), 0.0) == (["other"], 0)  # AUTO only for it


def test_an_auto_response_that_does_not_fit_is_not_reported_as_sent() -> None:
    pong = encode_message("pong")
    peer, client, _ = open_peer(auto_response=("ping", pong), max_send_queue=len(pong))
    assert peer.receive(text(client, "ping"), 0.0) == ([], WRITE | AUTO)
    assert peer.receive(text(client, "ping"), 0.0) == ([], CLOSE)  # a slow consumer
    assert peer.queue.close is SLOW_CONSUMER


def test_a_text_request_is_not_answered_for_a_binary_message() -> None:
    peer, client, _ = open_peer(auto_response=("ping", encode_message("pong")))
    assert peer.receive(client.send(BytesMessage(b"ping")), 0.0) == ([b"ping"], 0)
    assert peer.queue.frames == []


def test_a_binary_request_is_not_answered_for_a_text_message() -> None:
    peer, client, _ = open_peer(auto_response=(b"ping", encode_message(b"pong")))
    assert peer.receive(text(client, "ping"), 0.0) == (["ping"], 0)
    assert peer.receive(client.send(BytesMessage(b"ping")), 0.0) == ([], WRITE | AUTO)


def test_an_auto_response_takes_a_token() -> None:
    peer, client, _ = open_peer(
        auto_response=("ping", encode_message("pong")),
        rate_limit=roomkit.RateLimit(per_second=1, burst=1),
    )
    assert peer.receive(text(client, "ping", "ping"), 0.0) == ([], WRITE | AUTO)
    assert peer.queue.frames == [encode_message("pong"), RATE_LIMITED]
    # Dropped for want of a token: answered, but not with the auto-response.
    assert peer.receive(text(client, "ping"), 0.5) == ([], WRITE)
    assert peer.queue.frames == [encode_message("pong"), RATE_LIMITED, RATE_LIMITED]


@attrs.frozen
class Say:
    text: str


PROTOCOL = roomkit.Protocol(client=Say, server=Say)


def test_a_typed_room_gets_decoded_messages() -> None:
    peer, client, _ = open_peer(protocol=PROTOCOL)
    chunk = text(client, '{"type": "say", "text": "hi"}')
    assert peer.receive(chunk, 0.0) == ([Say("hi")], 0)


def test_a_typed_room_answers_bad_input_with_an_error() -> None:
    peer, client, metrics = open_peer(protocol=PROTOCOL)
    assert peer.receive(text(client, "not json"), 0.0) == ([], WRITE)
    [reply] = peer.queue.frames
    assert reply.startswith(b"\x81") and b'"type":"error"' in reply.replace(b" ", b"")
    assert metrics.messages_sent == 1


def test_a_typed_room_refuses_binary_messages() -> None:
    peer, client, _ = open_peer(protocol=PROTOCOL)
    assert peer.receive(client.send(BytesMessage(b"{}")), 0.0) == ([], WRITE)
    expected = error_message("binary messages are not part of this room's protocol")
    assert peer.queue.frames == [encode_message(expected)]


def test_a_ping_is_answered_with_its_pong() -> None:
    peer, client, _ = open_peer()
    assert peer.receive(client.send(Ping(b"abcd")), 0.0) == ([], WRITE)
    assert peer.queue.frames == [b"\x8a\x04abcd"]


def test_a_peer_is_owed_only_the_latest_pong() -> None:
    peer, client, _ = open_peer()
    chunk = client.send(Ping(b"1")) + client.send(TextMessage("m")) + client.send(Ping(b"22"))
    assert peer.receive(chunk, 0.0) == (["m"], WRITE)
    assert peer.queue.frames == [b"\x8a\x0222"]


def test_a_ping_takes_a_token_and_one_without_goes_unanswered() -> None:
    peer, client, _ = open_peer(rate_limit=roomkit.RateLimit(per_second=1, burst=1))
    chunk = text(client, "m") + client.send(Ping(b"p"))
    assert peer.receive(chunk, 0.0) == (["m"], 0)
    assert peer.queue.frames == []


def test_a_pong_takes_no_token() -> None:
    peer, client, _ = open_peer(rate_limit=roomkit.RateLimit(per_second=1, burst=1))
    assert peer.heartbeat() == PING
    assert peer.receive(client.send(Pong(b"roomkit")) + text(client, "m"), 0.0) == (["m"], PONG)


def test_heartbeat_pings_then_gives_up_on_a_silent_peer() -> None:
    peer, _, metrics = open_peer()
    assert peer.heartbeat() == PING
    assert peer.queue.frames == [b"\x89\x07roomkit"]
    assert peer.heartbeat() == TIMEOUT
    assert peer.cut_reason == "ping_timeout" and metrics.cut["ping_timeout"] == 1


def test_heartbeat_pings_again_once_answered() -> None:
    peer, client, _ = open_peer()
    assert peer.heartbeat() == PING
    assert peer.receive(client.send(Pong(b"roomkit")), 0.0) == ([], PONG)
    assert peer.receive(client.send(Pong(b"roomkit")), 0.0) == ([], 0)  # not awaited
    assert peer.heartbeat() == PING


def test_heartbeat_does_nothing_before_the_connection_opens() -> None:
    peer = Peer(
        b"",
        0.0,
        max_message_size=10,
        max_send_queue=100,
        rate_limit=None,
        auto_response=None,
        protocol=None,
        metrics=RoomMetrics(),
    )
    assert peer.heartbeat() == 0 and peer.queue.frames == []


def test_a_ping_that_does_not_fit_is_the_slow_consumer_verdict() -> None:
    peer, _, metrics = open_peer(max_send_queue=8)
    assert peer.queue.push(b"12345")
    assert peer.heartbeat() == CLOSE
    assert (peer.queue.close, peer.state) == (SLOW_CONSUMER, ConnectionState.CLOSING)
    assert metrics.cut["slow_consumer"] == 1


def test_a_reply_that_does_not_fit_is_the_slow_consumer_verdict() -> None:
    peer, client, _ = open_peer(max_send_queue=10, rate_limit=roomkit.RateLimit(1, 1))
    assert peer.receive(text(client, "a", "b", "c"), 0.0) == (["a"], CLOSE)
    assert (peer.queue.frames, peer.queue.close) == ([], SLOW_CONSUMER)
    assert peer.state is ConnectionState.CLOSING


def test_the_peer_closing_first_is_answered_and_clean() -> None:
    peer, client, _ = open_peer()
    chunk = text(client, "last") + client.send(CloseConnection(4000, "bye"))
    assert peer.receive(chunk, 0.0) == (["last"], CLOSE | END)
    assert peer.queue.close == CloseConnection(4000, "bye")
    assert peer.state is ConnectionState.CLOSING
    assert peer.report == (4000, "bye", True)
    assert peer.close_frame(peer.queue.close) == b"\x88\x05\x0f\xa0bye"
    assert peer.close_frame(CloseConnection(1000)) is None  # one close each way


def test_our_close_answered_is_clean() -> None:
    peer, client, _ = open_peer()
    peer.owe_close(CloseConnection(1001, "away"))
    data = peer.close_frame(CloseConnection(1001, "away"))
    assert data == b"\x88\x06\x03\xe9away" and peer.awaiting_close
    late = text(client, "late")  # sent before the client saw our close: discarded
    client.receive_data(data)
    [event] = client.events()
    assert isinstance(event, CloseConnection)
    assert peer.receive(late + client.send(event.response()), 0.0) == ([], END)
    assert peer.report == (1001, "away", True)


def test_a_ping_after_our_close_went_out_is_not_answered() -> None:
    peer, client, _ = open_peer()
    peer.owe_close(CloseConnection(1000))
    assert peer.close_frame(CloseConnection(1000)) is not None
    assert peer.receive(client.send(Ping(b"p")), 0.0) == ([], 0)  # no pong after a close
    assert peer.queue.frames == []


def test_a_protocol_error_is_cut_with_its_code_and_unclean() -> None:
    peer, _, metrics = open_peer()
    assert peer.receive(b"\x81\x02hi", 0.0) == ([], CUT | END)  # an unmasked client frame
    assert peer.cut is not None and peer.cut[0] == 1002
    code, _, clean = peer.report
    assert (code, clean) == (1002, False)
    assert metrics.cut["protocol_error"] == 1


def test_invalid_utf8_is_cut_with_1007() -> None:
    peer, client, _ = open_peer()
    frame = bytearray(client.send(TextMessage("é")))
    frame[6:8] = bytes(a ^ b for a, b in zip(frame[2:4], b"\xc3\x28", strict=True))  # masked
    assert peer.receive(bytes(frame), 0.0) == ([], CUT | END)
    assert peer.cut is not None and peer.cut[0] == 1007


def test_the_stream_ending_without_a_close_is_1006_unclean() -> None:
    peer, client, _ = open_peer()
    assert peer.receive(text(client, "m"), 0.0) == (["m"], 0)
    assert peer.receive(None, 0.0) == ([], END)
    assert peer.report == (1006, "", False)
    peer.closed_by_room(4003, "banned")  # a parked session the room then closes
    assert peer.report == (4003, "banned", True)


def test_a_drained_connection_delivers_nothing_and_answers_no_ping() -> None:
    peer, client, _ = open_peer()
    peer.move(Trigger.DEAFEN)
    assert peer.state is ConnectionState.OPEN
    assert peer.receive(text(client, "m") + client.send(Ping(b"p")), 0.0) == ([], 0)
    assert peer.receive(client.send(CloseConnection(1000)), 0.0) == ([], CLOSE | END)


def test_a_closing_connection_delivers_nothing_but_answers_pings() -> None:
    peer, client, _ = open_peer()
    peer.owe_close(CloseConnection(1000))
    assert peer.receive(text(client, "m") + client.send(Ping(b"p")), 0.0) == ([], WRITE)
    assert peer.queue.frames == [b"\x8a\x01p"]


def test_a_second_cut_keeps_the_first_reason() -> None:
    peer, client, metrics = open_peer(max_message_size=3)
    assert peer.receive(text(client, "toolong"), 0.0) == ([], CUT)
    peer.note_cut("idle")
    assert peer.cut_reason == "message_too_big"
    assert sum(metrics.cut.values()) == 1


@pytest.mark.parametrize("trigger", [Trigger.REJECT, Trigger.GONE])
def test_a_closed_connection_delivers_nothing(trigger: Trigger) -> None:
    peer, client, _ = open_peer()
    peer.move(trigger)
    assert peer.state is ConnectionState.CLOSED
    assert peer.receive(text(client, "m"), 0.0) == ([], 0)


def test_the_auto_response_never_compares_text_with_bytes() -> None:
    # The exact type check comes before the comparison: under ``python -bb``, comparing
    # str with bytes raises BytesWarning, and the reader would fail (1011) instead.
    script = """
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, TextMessage
from roomkit._core.lifecycle import Trigger
from roomkit._core.peer import Peer
from roomkit._metrics import RoomMetrics
for request, message, kind in [("ping", b"ping", BytesMessage), (b"ping", "ping", TextMessage)]:
    peer = Peer(b"", 0.0, max_message_size=10,
                max_send_queue=100, rate_limit=None, auto_response=(request, b"answer"),
                protocol=None, metrics=RoomMetrics())
    peer.move(Trigger.ADMIT)
    data = Connection(ConnectionType.CLIENT).send(kind(message))
    assert peer.receive(data, 0.0) == ([message], 0)
"""
    subprocess.run([sys.executable, "-bb", "-c", script], check=True, timeout=60)


def test_a_protocol_error_is_cut_with_wsprotos_reason() -> None:
    peer, _, _ = open_peer()
    peer.receive(b"\x81\x02hi", 0.0)
    assert peer.cut == (1002, "server received unexpected unmasked frame")


def test_a_pong_after_a_ping_in_one_chunk_leaves_both_to_do() -> None:
    peer, client, _ = open_peer()
    assert peer.heartbeat() == PING
    chunk = client.send(Ping(b"a")) + client.send(Pong(b"roomkit"))
    assert peer.receive(chunk, 0.0) == ([], WRITE | PONG)


def test_the_counters_add_up_over_peers_and_replies() -> None:
    limit = roomkit.RateLimit(per_second=1, burst=1)
    first, client, metrics = open_peer(rate_limit=limit)
    second, _, _ = open_peer(metrics=metrics)  # the same room's counters
    first.receive(text(client, "a", "b", "c"), 0.0)  # one allowed, two dropped and answered
    assert metrics.messages_sent == 2
    first.receive(b"\x81\x02hi", 0.0)
    second.receive(b"\x81\x02hi", 0.0)
    assert metrics.cut["protocol_error"] == 2
