"""The Python client's side of the roomkit.v1 envelope (``roomkit._clientsession``):
pure, so plain tests with exact frames, as docs/recovery.md writes them."""

from __future__ import annotations

import json

import pytest

import roomkit
from roomkit._clientsession import EnvelopeError, Position, frame_limits

from .clientservers import m_frame as m
from .clientservers import welcome_frame as welcome


def test_a_welcome_is_the_session_and_the_position() -> None:
    position = Position()
    session = position.welcome(welcome(future_field=1))  # fields it does not know: ignored
    assert session == roomkit.Session("c1", "e1", 3, resumed=False, recovered=None)
    assert (position.token, position.epoch, position.seq) == ("tok1", "e1", 3)


def test_messages_are_unwrapped_and_numbers_seen_are_dropped() -> None:
    position = Position()
    position.welcome(welcome())
    assert position.unwrap(m(4, "four")) == "four"
    assert position.unwrap(m(4, "four again")) is None
    assert position.unwrap(m(2, "older")) is None
    assert position.unwrap(m(None, "unlogged")) == "unlogged"  # never dropped
    assert position.unwrap(m(6, "six")) == "six"  # numbers may skip (tags, exclude)
    assert position.seq == 6
    assert position.unwrap((7).to_bytes(8, "big") + b"\x00bin") == b"\x00bin"
    assert position.unwrap((7).to_bytes(8, "big") + b"again") is None
    assert position.unwrap(bytes(8) + b"unlogged") == b"unlogged"  # 0: no number
    assert position.unwrap(bytes(8)) == b""
    assert position.seq == 7


def test_kinds_it_does_not_know_are_dropped() -> None:
    position = Position()
    position.welcome(welcome())
    assert position.unwrap(json.dumps(["presence_state", {}])) is None
    assert position.unwrap(welcome(seq=99)) is None  # a second welcome is no kind of its
    assert position.seq == 3


def test_a_recovered_welcome_keeps_the_clients_seq_for_the_replay() -> None:
    position = Position()
    position.welcome(welcome(seq=3))
    position.welcome(welcome(session="tok2", seq=10, resumed=True, recovered=True))
    assert (position.token, position.seq) == ("tok2", 3)
    assert [position.unwrap(m(n, str(n))) for n in (4, 5, 11)] == ["4", "5", "11"]


@pytest.mark.parametrize("recovered", [None, False])
def test_any_other_welcome_moves_the_position_to_its_own(recovered: bool | None) -> None:
    position = Position()
    position.welcome(welcome(seq=30))
    position.welcome(welcome(epoch="e2", seq=2, recovered=recovered))
    assert (position.epoch, position.seq) == ("e2", 2)
    assert position.unwrap(m(2, "seen")) is None
    assert position.unwrap(m(3, "new")) == "new"


def test_a_room_without_history() -> None:
    position = Position()
    position.welcome(welcome(epoch=None, seq=None))
    assert position.unwrap(m(None, "x")) == "x"
    assert position.query("userId=ada") == "userId=ada&roomkit.session=tok1"


def test_the_query_gets_roomkits_parameters_in_place_of_any_earlier_ones() -> None:
    position = Position()
    assert position.query("") == ""
    assert position.query("a=1&roomkit.seq=5") == "a=1"  # before any welcome: none
    position.welcome(welcome(session="t/+=", seq=0))
    ours = "roomkit.session=t%2F%2B%3D&roomkit.epoch=e1&roomkit.seq=0"
    assert position.query("") == ours
    # The application's own parameters stay as written (encoding, order, blanks).
    earlier = "roomkit.session=old&userId=a%20b&roomkit%2Eseq=9&flag&roomkit.epoch=x"
    assert position.query(earlier) == f"userId=a%20b&flag&{ours}"


@pytest.mark.parametrize(
    "frame",
    [
        m(1, "not a welcome"),
        b"\x00" * 8,
        "not json",
        json.dumps({"welcome": {}}),
        json.dumps(["welcome"]),
        json.dumps(["welcome", {"id": "c1"}]),
        welcome(seq=-1),
        welcome(seq=True),
        welcome(epoch=5),
        welcome(resumed=None),
        welcome(recovered="yes"),
        welcome(session=None),
    ],
)
def test_a_first_frame_that_is_not_a_welcome_is_refused(frame: str | bytes) -> None:
    position = Position()
    with pytest.raises(EnvelopeError):
        position.welcome(frame)
    assert position == Position()


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        json.dumps([]),
        json.dumps([1, 2]),
        json.dumps("m"),
        json.dumps(["m", 1]),
        json.dumps(["m", 1, "x", "extra"]),
        json.dumps(["m", "1", "x"]),
        json.dumps(["m", 1.5, "x"]),
        json.dumps(["m", 1, {"type": "chat"}]),  # the payload is text, not JSON
        b"\x00" * 7,
    ],
)
def test_broken_frames_are_refused(frame: str | bytes) -> None:
    position = Position()
    position.welcome(welcome())
    with pytest.raises(EnvelopeError):
        position.unwrap(frame)
    assert position.seq == 3


def test_frame_limits_are_those_of_the_longest_payload() -> None:
    """Text: the worst escaping, 6 bytes of JSON for each byte of text (as another
    server's JSON may write it: spaces, the longest seq); binary: the 8-byte seq."""
    worst = json.dumps(["m", 2**64 - 1, "\x00" * 1000])
    assert frame_limits(1000) == (len(worst.encode()), len(bytes(8) + bytes(1000)))
    compact = json.dumps(["m", 2**64 - 1, "\x00" * 1000], separators=(",", ":"))
    assert len(compact.encode()) < frame_limits(1000)[0]


@pytest.mark.parametrize(
    ("head", "binary", "seq"),
    [
        ((9).to_bytes(8, "big") + b"\x00payload", True, 9),
        (bytes(8) + b"unlogged", True, None),
        (b"\x00" * 7, True, None),  # too short for a seq: nothing to skip
        (b'["m",9,"xxxxxxxx', False, 9),
        (b'[ "m" , 9 , "x', False, 9),  # another server's spaces
        (b'["m",null,"x', False, None),
        (b'["m",9', False, None),  # its seq may go on: not read
        (b'["presence_state",{', False, None),
    ],
)
def test_a_refused_frames_number_is_read_from_its_head_and_counted_seen(
    head: bytes, binary: bool, seq: int | None
) -> None:
    position = Position()
    position.welcome(welcome())
    assert position.skip(head, binary=binary) == seq
    assert position.seq == (3 if seq is None else seq)
    assert position.unwrap(m(9, "nine")) == (None if seq == 9 else "nine")
