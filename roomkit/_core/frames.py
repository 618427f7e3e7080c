"""Server-to-client WebSocket frames, encoded once and shared by every recipient.

A server's frames are never masked (RFC 6455 section 5.1) and roomkit negotiates no
extension, so the bytes of a frame depend only on its opcode and payload. A broadcast
builds its frame once and queues the same ``bytes`` object on each recipient's
connection; the writer then concatenates whatever is queued into a single write.
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = [
    "OPCODE_BINARY",
    "OPCODE_CLOSE",
    "OPCODE_CONTINUATION",
    "OPCODE_PING",
    "OPCODE_PONG",
    "OPCODE_TEXT",
    "encode_close",
    "encode_frame",
    "encode_message",
]

#: The opcodes of RFC 6455 (section 5.2). A server sends no continuation frame (its
#: messages go whole, in one frame); ``wsreader`` reads a client's.
OPCODE_CONTINUATION: Final = 0x0
OPCODE_TEXT: Final = 0x1
OPCODE_BINARY: Final = 0x2
OPCODE_CLOSE: Final = 0x8
OPCODE_PING: Final = 0x9
OPCODE_PONG: Final = 0xA
#: Codes never sent in a close frame (RFC 6455 7.4.1): sent as 1000, as wsproto did.
_LOCAL_ONLY: Final = (1005, 1006, 1015)
_FIN: Final = 0x80


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """Return one unmasked, final frame carrying ``payload``."""
    length = len(payload)
    first = _FIN | opcode
    if length < 126:
        header = bytes((first, length))
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, 126, length)
    else:
        header = struct.pack("!BBQ", first, 127, length)
    return header + payload


def encode_message(message: str | bytes) -> bytes:
    """Return the frame for a text (``str``) or binary (``bytes``) message."""
    if isinstance(message, str):
        return encode_frame(OPCODE_TEXT, message.encode("utf-8"))
    return encode_frame(OPCODE_BINARY, bytes(message))


def encode_close(code: int | None, reason: str | None) -> bytes:
    """Return the close frame for ``code`` (None: no code, an empty payload) and
    ``reason``, cut to the 123 bytes a control frame leaves it, on a character boundary.
    """
    if code is None or code == 1005:
        return encode_frame(OPCODE_CLOSE, b"")
    if code in _LOCAL_ONLY:
        code = 1000
    text = (reason or "").encode("utf-8")
    if len(text) > 123:
        text = text[:123].decode("utf-8", "ignore").encode("utf-8")
    return encode_frame(OPCODE_CLOSE, struct.pack("!H", code) + text)
