"""roomkit's reading half of RFC 6455 (pure): each rule, any chunk boundary, and the same
messages as wsproto on random valid streams."""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from roomkit._core.wsreader import Broken, FrameReader, TooBig, unmask

MASK = b"\x01\x02\x03\x04"
SHORT2 = "Payload length used 2 bytes when 1 would have sufficed"
SHORT8 = "Payload length used 8 bytes when 2 would have sufficed"
LONG = b"\x7f"


def frame(first: int, payload: bytes, *, masked: bool = True, length: bytes | None = None) -> bytes:
    """A client frame: ``first`` is FIN/RSV/opcode; ``length`` overrides the encoding."""
    n = len(payload)
    if length is None:
        if n < 126:
            length = bytes((n,))
        elif n < 1 << 16:
            length = bytes((126,)) + struct.pack("!H", n)
        else:
            length = bytes((127,)) + struct.pack("!Q", n)
    if not masked:
        return bytes((first,)) + length + payload
    return bytes((first, length[0] | 0x80)) + length[1:] + MASK + unmask(payload, MASK)


def described(events: list[Any]) -> list[Any]:
    out: list[Any] = []
    for e in events:
        if isinstance(e, CloseConnection):
            out.append(("close", int(e.code), e.reason))
        elif isinstance(e, Broken):
            out.append(("broken", e.code, e.reason))
        elif isinstance(e, Ping | Pong):
            out.append((type(e).__name__, bytes(e.payload)))
        elif isinstance(e, TooBig):
            out.append("too big")
        else:
            out.append(e)
    return out


def read(data: bytes, limit: int = 1 << 20) -> list[Any]:
    return described(FrameReader(limit).feed(data))


def test_unmask_is_xor_with_the_repeated_key() -> None:
    data = bytes(range(11))
    assert unmask(data, MASK) == bytes(b ^ MASK[i % 4] for i, b in enumerate(data))
    assert unmask(b"", MASK) == b""


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_each_length_encoding_is_read(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    assert read(frame(0x82, payload)) == [payload]
    assert read(frame(0x81, b"a" * size)) == ["a" * size]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (frame(0xC1, b"x"), "Reserved bit set unexpectedly"),
        (frame(0xA1, b"x"), "Reserved bit set unexpectedly"),
        (frame(0x91, b"x"), "Reserved bit set unexpectedly"),
        (frame(0x83, b"x"), "Invalid opcode 0x3"),
        (frame(0x8B, b"x"), "Invalid opcode 0xb"),
        (frame(0x81, b"hi", masked=False), "server received unexpected unmasked frame"),
        (frame(0x09, b"p"), "Invalid attempt to fragment control frame"),
        (frame(0x89, b"p" * 126), "Control frame with payload len > 125"),
        (frame(0x80, b"x"), "unexpected CONTINUATION"),
        (frame(0x01, b"a") + frame(0x81, b"b"), "expected CONTINUATION, got <Opcode.TEXT: 1>"),
        (
            frame(0x82, b"x" * 5, length=b"\x7e\x00\x05"),
            SHORT2,
        ),
        (
            frame(0x82, b"x" * 5, length=LONG + struct.pack("!Q", 5)),
            SHORT8,
        ),
        (
            frame(0x82, b"", length=LONG + struct.pack("!Q", 1 << 63)),
            "8-byte payload length with non-zero MSB",
        ),
        (frame(0x88, b"\x03"), "CLOSE with 1 byte payload"),
        (frame(0x88, struct.pack("!H", 999)), "CLOSE with invalid code"),
        (frame(0x88, struct.pack("!H", 5000)), "CLOSE with invalid code"),
        (frame(0x88, struct.pack("!H", 1005)), "remote CLOSE with local-only reason"),
        (frame(0x88, struct.pack("!H", 1006)), "remote CLOSE with local-only reason"),
        (frame(0x88, struct.pack("!H", 1015)), "remote CLOSE with local-only reason"),
        (frame(0x88, struct.pack("!H", 1004)), "CLOSE with unknown reserved code"),
        (frame(0x88, struct.pack("!H", 2999)), "CLOSE with unknown reserved code"),
    ],
)
def test_each_broken_rule_is_1002_with_wsprotos_reason_and_ends_the_reading(
    data: bytes, reason: str
) -> None:
    reader = FrameReader(1 << 20)
    assert described(reader.feed(frame(0x81, b"ok") + data + frame(0x81, b"after"))) == [
        "ok",
        ("broken", 1002, reason),
    ]
    assert reader.feed(frame(0x81, b"more")) == []
    assert described(_wsproto(data)) == [("broken", 1002, reason)]


def test_bad_utf8_is_1007_whole_or_in_fragments_and_in_a_close_reason() -> None:
    [(kind, code, _)] = read(frame(0x81, b"\xc3\x28"))
    assert (kind, code) == ("broken", 1007)
    [(kind, code, _)] = read(frame(0x01, b"\xc3") + frame(0x80, b"\x28"))
    assert (kind, code) == ("broken", 1007)
    [(kind, code, reason)] = read(frame(0x88, b"\x03\xe8\xff"))
    assert (kind, code) == ("broken", 1007) and reason.startswith("Error decoding CLOSE reason")
    # A character split over two fragments is fine.
    assert read(frame(0x01, "é".encode()[:1]) + frame(0x80, "é".encode()[1:])) == ["é"]


def test_a_close_frame_is_reported_and_ends_the_reading() -> None:
    assert read(frame(0x88, b"") + frame(0x81, b"x")) == [("close", 1005, "")]
    assert read(frame(0x88, b"\x0f\xa0bye")) == [("close", 4000, "bye")]
    assert read(frame(0x88, b"\x03\xe8")) == [("close", 1000, "")]


def test_control_frames_may_come_between_fragments() -> None:
    data = frame(0x02, b"a") + frame(0x89, b"p") + frame(0x8A, b"q") + frame(0x80, b"b")
    assert read(data) == [("Ping", b"p"), ("Pong", b"q"), b"ab"]


def test_buffered_counts_the_fragments_held() -> None:
    reader = FrameReader(100)
    assert reader.feed(frame(0x01, b"hel")) == [] and reader.buffered == 3
    assert reader.feed(frame(0x80, b"lo")) == ["hello"] and reader.buffered == 0


def test_a_message_past_the_limit_is_refused_from_its_header_and_skipped() -> None:
    reader = FrameReader(5)
    huge = frame(0x82, b"", length=LONG + struct.pack("!Q", 1 << 40))[:14]  # no payload sent
    assert described(reader.feed(huge)) == ["too big"]
    reader = FrameReader(5)
    data = frame(0x81, b"12345") + frame(0x81, b"123456") + frame(0x81, b"next")
    assert described(reader.feed(data)) == ["12345", "too big", "next"]
    # In fragments: refused once the total passes, the rest of it skipped.
    reader = FrameReader(5)
    data = frame(0x01, b"123") + frame(0x00, b"456") + frame(0x80, b"78") + frame(0x81, b"ok")
    assert described(reader.feed(data)) == ["too big", "ok"]
    assert reader.buffered == 0
    # Skipped across chunks, never held.
    reader = FrameReader(5)
    big = frame(0x82, b"x" * 1000)
    assert described(reader.feed(big[:300])) == ["too big"]
    assert reader.feed(big[300:]) == [] and reader.buffered == 0
    assert reader.feed(frame(0x81, b"ok")) == ["ok"]


STREAM = (
    frame(0x81, b"hello")
    + frame(0x82, bytes(200))
    + frame(0x01, "é".encode()[:1])
    + frame(0x89, b"ping")
    + frame(0x80, "é".encode()[1:] + b"!")
    + frame(0x82, b"")
    + frame(0x88, b"\x03\xe8done")
)


def test_every_split_of_a_stream_reads_the_same() -> None:
    whole = read(STREAM)
    assert whole == ["hello", bytes(200), ("Ping", b"ping"), "é!", b"", ("close", 1000, "done")]
    for at in range(1, len(STREAM)):
        reader = FrameReader(1 << 20)
        assert described(reader.feed(STREAM[:at]) + reader.feed(STREAM[at:])) == whole, at
    reader = FrameReader(1 << 20)
    assert described([e for b in STREAM for e in reader.feed(bytes((b,)))]) == whole


def _wsproto(data: bytes) -> list[Any]:
    ws = WSConnection(ConnectionType.SERVER)
    ws.receive_data(data)
    out: list[Any] = []
    parts: list[Any] = []
    for event in ws.events():
        if isinstance(event, TextMessage | BytesMessage):
            parts.append(event.data)
            if event.message_finished:
                out.append("".join(parts) if isinstance(event, TextMessage) else b"".join(parts))
                parts = []
        elif isinstance(event, CloseConnection) and ws.state is ws.state.OPEN:
            out.append(Broken(int(event.code), event.reason or ""))
        elif isinstance(event, CloseConnection):
            out.append(CloseConnection(int(event.code), event.reason or ""))
        else:
            out.append(event)
    return out


def test_random_valid_streams_read_as_wsproto_reads_them() -> None:
    rng = random.Random(19)
    for _ in range(200):
        client = WSConnection(ConnectionType.CLIENT)
        data = b""
        for _ in range(rng.randrange(1, 12)):
            kind = rng.random()
            size = rng.choice([0, 1, 10, 125, 126, 300, 65535, 65536, 70000])
            if kind < 0.4:
                text = "".join(rng.choice("aé€😀") for _ in range(size // 3))
                pieces = rng.randrange(1, 4)
                cut = sorted(rng.randrange(len(text) + 1) for _ in range(pieces - 1))
                for i, (a, b) in enumerate(zip([0, *cut], [*cut, len(text)], strict=True)):
                    data += client.send(TextMessage(text[a:b], message_finished=i == pieces - 1))
            elif kind < 0.8:
                data += client.send(BytesMessage(rng.randbytes(size)))
            else:
                data += client.send(rng.choice([Ping, Pong])(rng.randbytes(min(size, 125))))
        if rng.random() < 0.3:
            data += client.send(CloseConnection(rng.choice([1000, 1001, 3000, 4999]), "bye"))
        reader = FrameReader(1 << 20)
        cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(4)))
        got = [
            e
            for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)
            for e in reader.feed(data[a:b])
        ]
        assert described(got) == described(_wsproto(data))
