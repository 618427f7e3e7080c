"""Server frames (pure): what roomkit encodes, wsproto's client decodes unchanged."""

from __future__ import annotations

import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, TextMessage

from roomkit._core.frames import encode_message


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_every_length_encoding_decodes(size: int) -> None:
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(encode_message(b"x" * size) + encode_message("é" * size))
    binary, text = list(client.events())
    assert isinstance(binary, BytesMessage) and binary.data == b"x" * size
    assert isinstance(text, TextMessage) and text.data == "é" * size
    assert binary.message_finished and text.message_finished


def test_header_sizes() -> None:
    assert encode_message(b"ab") == b"\x82\x02ab"
    assert len(encode_message(b"x" * 126)) == 126 + 4
    assert len(encode_message(b"x" * 65536)) == 65536 + 10
