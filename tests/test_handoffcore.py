"""roomkit._core.handoff: the frames between workers, and where a handshake goes."""

from __future__ import annotations

import struct

import pytest

from roomkit._core.handoff import (
    MAX_HEADER,
    MAX_PAYLOAD,
    PREFIX,
    Frame,
    FrameReader,
    Handoff,
    HandoffError,
    HandTo,
    Kind,
    Refuse,
    ServeHere,
    encode,
    where,
)
from roomkit._core.placement import Placement
from roomkit._roomid import RoomId

HEAD = b"GET /chat/lobby HTTP/1.1\r\nHost: x\r\n\r\n"
HANDOFF = Handoff(RoomId("/chat", "lobby"), ("127.0.0.1", 5000), HEAD, b"\x81\x00")


def read(data: bytes) -> Frame | None:
    reader = FrameReader()
    reader.feed(data)
    return reader.next_frame()


def test_a_frame_is_its_prefix_header_and_payload_exactly() -> None:
    data = encode(Frame(Kind.EXPOSITION, {"a": "é"}, b"xyz"))
    header = '{"a":"é"}'.encode()
    assert data == b"RKH1\x05" + struct.pack("!II", len(header), 3) + header + b"xyz"
    assert encode(Frame(Kind.TAKEN)) == b"RKH1\x03\x00\x00\x00\x02\x00\x00\x00\x00{}"


def test_a_handoff_travels_whole() -> None:
    frame = read(encode(HANDOFF.frame()))
    assert frame == Frame(
        Kind.HANDOFF,
        {
            "room": ["/chat", "lobby"],
            "remote": ["127.0.0.1", 5000],
            "head": len(HEAD),
            "trusted": False,
        },
        HEAD + b"\x81\x00",
    )
    assert Handoff.from_frame(frame) == HANDOFF
    relayed = read(encode(HANDOFF.frame(relay=True)))
    assert relayed is not None and relayed.kind is Kind.RELAY
    assert Handoff.from_frame(relayed) == HANDOFF
    anonymous = Handoff(RoomId("", "r"), None, HEAD)
    assert Handoff.from_frame(Frame(Kind.HANDOFF, *_parts(anonymous))) == anonymous
    trusted = Handoff(RoomId("", "r"), None, HEAD, trusted=True)
    assert Handoff.from_frame(read(encode(trusted.frame()))) == trusted


def _parts(handoff: Handoff) -> tuple[dict[str, object], bytes]:
    frame = handoff.frame()
    return dict(frame.header), frame.payload


def test_the_reader_waits_for_whole_frames_and_keeps_what_follows() -> None:
    data = encode(HANDOFF.frame()) + encode(Frame(Kind.TAKEN))
    reader = FrameReader()
    for byte in data[: PREFIX.size + 3]:  # one byte at a time: nothing yet
        reader.feed(bytes([byte]))
        assert reader.next_frame() is None
    reader.feed(data[PREFIX.size + 3 :])
    first = reader.next_frame()
    assert first is not None and Handoff.from_frame(first) == HANDOFF
    assert reader.pending == len(encode(Frame(Kind.TAKEN)))
    assert reader.next_frame() == Frame(Kind.TAKEN)
    assert reader.pending == 0 and reader.next_frame() is None
    reader.feed(b"after")
    assert reader.take_pending() == b"after" and reader.pending == 0


def test_the_bounds_hold_before_the_bytes_arrive() -> None:
    payload = MAX_PAYLOAD[Kind.HANDOFF]
    reader = FrameReader()
    reader.feed(PREFIX.pack(b"RKH1", Kind.HANDOFF, 2, payload))
    assert reader.next_frame() is None  # at its bound: waits for the payload
    reader = FrameReader()
    reader.feed(PREFIX.pack(b"RKH1", Kind.HANDOFF, 2, payload + 1))
    with pytest.raises(HandoffError, match=f"payload of {payload + 1} bytes is past {payload}"):
        reader.next_frame()
    reader = FrameReader()
    reader.feed(PREFIX.pack(b"RKH1", Kind.TAKEN, MAX_HEADER + 1, 0))
    with pytest.raises(HandoffError, match=f"header of {MAX_HEADER + 1} bytes is past"):
        reader.next_frame()
    with pytest.raises(HandoffError, match="TAKEN payload of 1 bytes is past 0"):
        read(PREFIX.pack(b"RKH1", Kind.TAKEN, 2, 1) + b"{}x")


def test_encoding_past_a_bound_is_refused() -> None:
    with pytest.raises(HandoffError, match="HANDOFF payload"):
        encode(Frame(Kind.HANDOFF, {}, b"x" * (MAX_PAYLOAD[Kind.HANDOFF] + 1)))
    with pytest.raises(HandoffError, match="header of"):
        encode(Frame(Kind.METRICS, {"x": "y" * MAX_HEADER}))
    encode(Frame(Kind.HANDOFF, {}, b"x" * MAX_PAYLOAD[Kind.HANDOFF]))  # at the bound


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"HTTP/1.1 200 OK\r\n", "not a hand-off frame: it starts with b'HTTP'"),
        (PREFIX.pack(b"RKH1", 9, 2, 0) + b"{}", "unknown frame kind 9"),
        (PREFIX.pack(b"RKH1", Kind.METRICS, 2, 0) + b"[]", "not a JSON object"),
        (PREFIX.pack(b"RKH1", Kind.METRICS, 2, 0) + b"{x", "not JSON"),
        (PREFIX.pack(b"RKH1", Kind.METRICS, 2, 0) + b"\xff}", "not JSON"),
    ],
)
def test_what_is_no_frame_is_refused(data: bytes, problem: str) -> None:
    with pytest.raises(HandoffError, match=problem.replace("(", r"\(").replace("[", r"\[")):
        read(data)


def _with(**fields: object) -> Frame:
    header: dict[str, object] = {
        "room": ["/chat", "lobby"],
        "remote": None,
        "head": len(HEAD),
        "trusted": False,
    }
    payload = fields.pop("payload", HEAD)
    assert isinstance(payload, bytes)
    return Frame(Kind.HANDOFF, {**header, **fields}, payload)


@pytest.mark.parametrize(
    ("frame", "problem"),
    [
        (Frame(Kind.TAKEN), "expected a hand-off, got TAKEN"),
        (Frame(Kind.HANDOFF, {"room": ["", "r"], "head": 1}, HEAD), "has the fields"),
        (_with(extra=1), "has the fields"),
        (_with(room="lobby"), "not a \\[prefix, name\\] pair"),
        (_with(room=["/chat", 5]), "not a \\[prefix, name\\] pair"),
        (_with(room=["/chat", "a", "b"]), "not a \\[prefix, name\\] pair"),
        (_with(room=["/chat", ""]), "is no room"),
        (_with(room=["/chat", "a/b"]), "is no room"),
        (_with(room=["chat", "a"]), "is no room"),
        (_with(remote=["127.0.0.1"]), "address"),
        (_with(remote=["127.0.0.1", 70000]), "address"),
        (_with(remote=["127.0.0.1", -1]), "address"),
        (_with(remote=["127.0.0.1", True]), "address"),
        (_with(remote=[1, 2]), "address"),
        (_with(remote="127.0.0.1"), "address"),
        (_with(head=0), "head length of 0"),
        (_with(head=len(HEAD) + 1), "not in its payload"),
        (_with(head="3"), "not in its payload"),
        (_with(head=True), "not in its payload"),
        (_with(payload=b"GET / HTTP/1.1\r\n" + b"x" * 21), "does not end with a blank line"),
        (_with(trusted=1), "trusted flag is 1"),
        (_with(trusted=None), "trusted flag is None"),
    ],
)
def test_a_handoff_header_is_checked_field_by_field(frame: Frame, problem: str) -> None:
    with pytest.raises(HandoffError, match=problem):
        Handoff.from_frame(frame)


def test_the_edges_of_a_valid_handoff() -> None:
    edge = _with(remote=["::1", 65535], head=len(HEAD), payload=HEAD)
    assert Handoff.from_frame(edge) == Handoff(RoomId("/chat", "lobby"), ("::1", 65535), HEAD)
    zero = _with(remote=["h", 0])
    assert Handoff.from_frame(zero).remote == ("h", 0)


PLACEMENT = Placement("0", ("0", "1", "2"))


def test_where_serves_its_own_hands_on_the_others_and_never_hands_twice() -> None:
    rooms = [RoomId("", f"r{i}") for i in range(30)]
    for room in rooms:
        owner = PLACEMENT.owner(room)
        if owner == "0":
            assert where(PLACEMENT, room, handed=False) == ServeHere()
            assert where(PLACEMENT, room, handed=True) == ServeHere()
        else:
            assert where(PLACEMENT, room, handed=False) == HandTo(owner)
            assert where(PLACEMENT, room, handed=True) == Refuse()
    assert {PLACEMENT.owner(room) for room in rooms} == {"0", "1", "2"}
