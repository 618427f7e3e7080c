"""The ``roomkit.v1`` envelope: what a client that asks for it is sent. Pure.

A client asks by offering the WebSocket subprotocol ``roomkit.v1``; the server selects
it in its ``101``, and from then on wraps every data frame it sends that client
(docs/recovery.md, "The roomkit.v1 envelope", is the contract):

* ``["welcome", {...}]`` first: the connection's id, its resume token, the room's log
  position, and whether this is a resumed session and a recovery;
* ``["m", seq, text]`` for a text message (``seq`` None when it is not logged);
* a binary message as 8 bytes of big-endian ``seq`` (0: not logged), then the payload.

A client that does not offer it sees the frames it always saw. What a client says in
its handshake's query (``roomkit.session``, ``roomkit.epoch``, ``roomkit.seq``) is read
here and taken out of the query before any room sees it; a bad value counts as absent.
"""

from __future__ import annotations

import json
import re
import secrets
import struct
from collections.abc import Mapping
from typing import Any, Final

import attrs

from .frames import OPCODE_BINARY, OPCODE_TEXT, encode_frame

__all__ = [
    "EPOCH_PARAM",
    "SEQ_PARAM",
    "SESSION_PARAM",
    "SUBPROTOCOL",
    "Resume",
    "encode",
    "new_token",
    "offers_envelope",
    "session_name",
    "split_query",
    "welcome",
]

#: The subprotocol a client offers to get the envelope.
SUBPROTOCOL: Final = "roomkit.v1"
#: The query parameters that are roomkit's, never the room's.
SESSION_PARAM: Final = "roomkit.session"
EPOCH_PARAM: Final = "roomkit.epoch"
SEQ_PARAM: Final = "roomkit.seq"
_PARAMS: Final = (SESSION_PARAM, EPOCH_PARAM, SEQ_PARAM)

#: Random bytes in a resume token: 128 bits, not guessable; the first half names its
#: session (the same in each of its tokens), the second is the token's own.
TOKEN_BYTES: Final = 16
#: Characters of a token that name its session: its first 8 bytes' URL-safe base64.
NAME_CHARS: Final = 11
#: A token as new_token makes it: URL-safe base64 of 16 bytes, without padding.
_TOKEN: Final = re.compile(r"[A-Za-z0-9_-]{22}")
#: An epoch as the log makes it (16 hex characters).
_EPOCH: Final = re.compile(r"[0-9a-f]{16}")
#: The largest seq a client may say it saw: what the binary form's 8 bytes hold.
_MAX_SEQ: Final = (1 << 64) - 1

#: One encoder for the envelope's JSON: compact, and text as it is (no \\u escapes).
_JSON: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_SEQ: Final = struct.Struct("!Q")


@attrs.frozen
class Resume:
    """What a client asked for in its handshake's query.

    Attributes:
      session: the token of the session to take up again, or None.
      epoch, seq: the log position it last saw (both, or neither), to recover from.
    """

    session: str | None = None
    epoch: str | None = None
    seq: int | None = None


#: A client that asked for nothing.
NOTHING: Final = Resume()


def offers_envelope(protocols: str | None) -> bool:
    """Whether a ``Sec-WebSocket-Protocol`` header's value offers ``roomkit.v1``."""
    if protocols is None:
        return False
    return any(p.strip() == SUBPROTOCOL for p in protocols.split(","))


def split_query(query: Mapping[str, str]) -> tuple[Mapping[str, str], Resume]:
    """``query`` without roomkit's parameters, and what they asked for.

    A token of the wrong shape is no token; an epoch without a valid seq (or the
    reverse) is no position: a fresh connect, never an error. ``query`` itself is
    returned when it has none of them (the common case: nothing is copied).
    """
    if not any(name in query for name in _PARAMS):
        return query, NOTHING
    session = query.get(SESSION_PARAM)
    epoch = query.get(EPOCH_PARAM)
    seq = _seq(query.get(SEQ_PARAM))
    if session is not None and _TOKEN.fullmatch(session) is None:
        session = None
    if epoch is None or _EPOCH.fullmatch(epoch) is None or seq is None:
        epoch, seq = None, None
    rest = {name: value for name, value in query.items() if name not in _PARAMS}
    return rest, Resume(session, epoch, seq)


def _seq(text: str | None) -> int | None:
    if text is None or not text.isascii() or not text.isdigit() or len(text) > 20:
        return None
    value = int(text)
    return value if value <= _MAX_SEQ else None


def new_token(session: str | None = None) -> str:
    """A new resume token: URL-safe base64 without padding of 128 bits, the name of
    ``session`` (a token of the same session) or 64 random bits, then 64 random bits.

    The name lets a room's log leave a session out of a broadcast for each of its
    connections, after a restart too (docs/recovery.md); it does not let anyone
    resume the session, which takes the whole token.
    """
    half = TOKEN_BYTES // 2
    name = secrets.token_urlsafe(half) if session is None else session_name(session)
    return name + secrets.token_urlsafe(half)


def session_name(token: str) -> str:
    """The name of the session whose token is ``token``: the same in each of its tokens."""
    return token[:NAME_CHARS]


def welcome(
    conn_id: str,
    session: str,
    position: tuple[str, int] | None,
    *,
    resumed: bool,
    recovered: bool | None,
) -> bytes:
    """The frame of a connection's welcome; ``position`` the room's (epoch, head), None
    when the room keeps no history."""
    epoch, head = (None, None) if position is None else position
    body: dict[str, Any] = {
        "id": conn_id,
        "session": session,
        "epoch": epoch,
        "seq": head,
        "resumed": resumed,
        "recovered": recovered,
    }
    return encode_frame(OPCODE_TEXT, _JSON.encode(["welcome", body]).encode("utf-8"))


def encode(payload: str | bytes, seq: int | None) -> bytes:
    """The enveloped frame of an application message: text as ``["m", seq, text]``,
    binary as the 8-byte big-endian ``seq`` (0 for None) then the payload."""
    if isinstance(payload, str):
        return encode_frame(OPCODE_TEXT, _JSON.encode(["m", seq, payload]).encode("utf-8"))
    return encode_frame(OPCODE_BINARY, _SEQ.pack(seq or 0) + payload)
