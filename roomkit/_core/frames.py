"""Server-to-client WebSocket frames, encoded once and shared by every recipient.

A server's frames are never masked (RFC 6455 section 5.1) and roomkit negotiates no
extension, so the bytes of a frame depend only on its opcode and payload. A broadcast
builds its frame once and queues the same ``bytes`` object on each recipient's
connection; the writer then concatenates whatever is queued into a single write.
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = ["OPCODE_BINARY", "OPCODE_TEXT", "encode_frame", "encode_message"]

OPCODE_TEXT: Final = 0x1
OPCODE_BINARY: Final = 0x2
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
