"""The roomkit.v1 envelope (pure): its frames byte for byte, the handshake's query
parameters, and the 101 that selects it."""

from __future__ import annotations

import json

import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, TextMessage

from roomkit._core import envelope
from roomkit._core.envelope import NOTHING, Resume, offers_envelope, split_query
from roomkit._core.frontdoor import RequestHead, handshake_response, parse_head

TOKEN = "A" * 21 + "w"
EPOCH = "0123456789abcdef"


def test_a_text_message_is_m_seq_text() -> None:
    assert envelope.encode("hé", 7) == b'\x81\x0d["m",7,"h\xc3\xa9"]'
    assert envelope.encode('{"a": 1}', None) == b'\x81\x17["m",null,"{\\"a\\": 1}"]'


def test_a_binary_message_is_its_seq_in_eight_bytes_then_the_payload() -> None:
    assert envelope.encode(b"\x00ab", 258) == b"\x82\x0b" + b"\0\0\0\0\0\0\x01\x02" + b"\x00ab"
    assert envelope.encode(b"", None) == b"\x82\x08" + bytes(8)


def test_the_welcome() -> None:
    frame = envelope.welcome("c-1", TOKEN, (EPOCH, 3), resumed=True, recovered=False)
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(frame + envelope.welcome("c-2", TOKEN, None, resumed=False, recovered=None))
    first, second = client.events()
    assert isinstance(first, TextMessage) and isinstance(second, TextMessage)
    assert first.data == (
        f'["welcome",{{"id":"c-1","session":"{TOKEN}","epoch":"{EPOCH}","seq":3,'
        '"resumed":true,"recovered":false}]'
    )
    assert json.loads(second.data) == [
        "welcome",
        {
            "id": "c-2",
            "session": TOKEN,
            "epoch": None,
            "seq": None,
            "resumed": False,
            "recovered": None,
        },
    ]


def test_a_large_message_keeps_its_length_header() -> None:
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(envelope.encode("x" * 70_000, 1) + envelope.encode(b"y" * 200, 2))
    text, binary = client.events()
    assert isinstance(text, TextMessage) and json.loads(text.data) == ["m", 1, "x" * 70_000]
    assert isinstance(binary, BytesMessage) and binary.data == bytes(7) + b"\x02" + b"y" * 200


def test_tokens_are_128_random_bits_in_url_safe_base64() -> None:
    tokens = {envelope.new_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(len(t) == 22 and split_query({"roomkit.session": t})[1].session == t for t in tokens)


def test_a_sessions_tokens_share_its_name_and_nothing_else() -> None:
    first = envelope.new_token()
    later = {envelope.new_token(first) for _ in range(100)}
    assert {envelope.session_name(t) for t in later} == {envelope.session_name(first)}
    assert len({t[envelope.NAME_CHARS :] for t in later | {first}}) == 101
    assert all(split_query({"roomkit.session": t})[1].session == t for t in later)


@pytest.mark.parametrize(
    ("header", "offered"),
    [
        (None, False),
        ("roomkit.v1", True),
        ("chat, roomkit.v1", True),
        ("roomkit.v1 , chat", True),
        ("roomkit.v2", False),
        ("roomkit.v1x", False),
        ("ROOMKIT.V1", False),
    ],
)
def test_which_offers_ask_for_it(header: str | None, offered: bool) -> None:
    assert offers_envelope(header) is offered


def test_roomkit_parameters_leave_the_query() -> None:
    query = {"userId": "ann", "roomkit.session": TOKEN, "roomkit.epoch": EPOCH, "roomkit.seq": "12"}
    assert split_query(query) == ({"userId": "ann"}, Resume(TOKEN, EPOCH, 12))
    plain = {"userId": "ann"}
    kept, asked = split_query(plain)
    assert kept is plain and asked is NOTHING


@pytest.mark.parametrize(
    ("query", "asked"),
    [
        ({"roomkit.session": "short"}, NOTHING),
        ({"roomkit.session": TOKEN + "A"}, NOTHING),
        ({"roomkit.session": "+" * 22}, NOTHING),
        ({"roomkit.epoch": EPOCH}, NOTHING),  # no seq: no position
        ({"roomkit.seq": "3"}, NOTHING),  # no epoch
        ({"roomkit.epoch": EPOCH, "roomkit.seq": "-1"}, NOTHING),
        ({"roomkit.epoch": EPOCH, "roomkit.seq": "1e3"}, NOTHING),
        ({"roomkit.epoch": EPOCH, "roomkit.seq": "٣"}, NOTHING),  # a digit, not ASCII
        ({"roomkit.epoch": EPOCH, "roomkit.seq": str(1 << 64)}, NOTHING),
        (
            {"roomkit.epoch": EPOCH, "roomkit.seq": str((1 << 64) - 1)},
            Resume(None, EPOCH, (1 << 64) - 1),
        ),
        ({"roomkit.epoch": EPOCH.upper(), "roomkit.seq": "1"}, NOTHING),
        ({"roomkit.epoch": EPOCH, "roomkit.seq": "0"}, Resume(None, EPOCH, 0)),
        ({"roomkit.session": TOKEN, "roomkit.seq": "x"}, Resume(TOKEN)),
    ],
)
def test_bad_values_count_as_absent(query: dict[str, str], asked: Resume) -> None:
    assert split_query(query) == ({}, asked)


def head(protocols: str | None) -> RequestHead:
    extra = b"" if protocols is None else b"Sec-WebSocket-Protocol: " + protocols.encode() + b"\r\n"
    parsed = parse_head(
        b"GET /lobby HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        + extra
        + b"\r\n"
    )
    assert isinstance(parsed, RequestHead)
    return parsed


ACCEPT = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
)


@pytest.mark.parametrize("protocols", ["roomkit.v1", "chat, roomkit.v1"])
def test_the_101_selects_it_when_offered(protocols: str) -> None:
    assert (
        handshake_response(head(protocols))
        == ACCEPT + b"Sec-WebSocket-Protocol: roomkit.v1\r\n\r\n"
    )


@pytest.mark.parametrize("protocols", [None, "chat", "roomkit.v2"])
def test_the_101_selects_nothing_else(protocols: str | None) -> None:
    assert handshake_response(head(protocols)) == ACCEPT + b"\r\n"
