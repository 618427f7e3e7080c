"""The Python client's side of the roomkit.v1 envelope: what each frame from the room
means, and the position (session, epoch, seq) the client keeps across its connections.

Pure: no I/O, no clock. The client offers :data:`ENVELOPE` in its handshake; when the
server selects it, the connection's first frame is the room's welcome
(:meth:`Position.welcome`), and every frame after it is unwrapped
(:meth:`Position.unwrap`) into the payload a plain client would have received, or None
for one to drop: a number already seen (a duplicate), or another kind (the room's
presence frames, which ``_clientpresence`` reads, or one this client does not know).
A frame too long for any payload the client accepts (:func:`frame_limits`) is never
read whole: the connection is closed with 1009, and :meth:`Position.skip` reads the
number of the message it carried from its first bytes, so that the room does not
replay it to the next connection (which it would only close again). Before each try
:meth:`Position.query` gives the handshake's query with roomkit's three
parameters, so that the room can take the session up again and replay what the client
missed. The wire contract is docs/recovery.md's "The roomkit.v1 envelope".

Theory of operation: ``seq`` is the last number the client has seen in ``epoch``. A
welcome sets both, but for one that says ``recovered: true``: the broadcasts the client
missed follow it, numbered from its own ``seq`` on, so its ``seq`` stays until they come.
Each numbered message then moves ``seq`` forward; one numbered ``seq`` or less was seen
already and is dropped. Unnumbered messages (``null``, or 0 in a binary frame) always go
through.
"""

from __future__ import annotations

import json
import re
import struct
from typing import Any, Final
from urllib.parse import unquote_plus, urlencode

import attrs

__all__ = ["ENVELOPE", "EnvelopeError", "Position", "Session", "frame_limits"]

#: The WebSocket subprotocol that asks a roomkit server for the envelope.
ENVELOPE: Final = "roomkit.v1"
#: The query parameters that are roomkit's: the server takes them out of the request.
PARAMETERS: Final = ("roomkit.session", "roomkit.epoch", "roomkit.seq")
#: A binary frame's head: its sequence number, 8 bytes big-endian (0 for none).
_SEQ: Final = struct.Struct(">Q")
#: Bytes of an ``m`` frame around its text: ``["m",`` and the longest seq, ``,"`` and
#: ``"]``, with room for a space after each comma (another server's JSON).
_M_OVERHEAD: Final = len('["m", 18446744073709551615, ""]')
#: The most bytes of JSON one byte of text can become, whatever the encoder: a control
#: character as ``\u0000`` (roomkit's own encoder escapes those; one that escapes all
#: but ASCII turns 2 UTF-8 bytes into 6 at most, and 4 into 12, a surrogate pair).
_JSON_GROWTH: Final = 6
#: The head of an ``m`` frame, up to its seq (the WebSocket keeps 64 bytes of a refused
#: frame: ``["m",``, 20 digits and a comma, with room for spaces).
_M_HEAD: Final = re.compile(rb'\[\s*"m"\s*,\s*([0-9]{1,20})\s*,')


def frame_limits(max_message_size: int) -> tuple[int, int]:
    """The longest text frame and binary frame that can carry a payload of
    ``max_message_size`` bytes: its text as a JSON string in an ``m`` frame, escapes and
    all (the worst case: every byte a control character, 6 bytes of JSON each), and its
    bytes after their 8-byte seq."""
    return max_message_size * _JSON_GROWTH + _M_OVERHEAD, max_message_size + _SEQ.size


class EnvelopeError(Exception):
    """Raised when a frame from the room is not what the envelope says it is: a first
    frame that is not a welcome, a welcome or an ``m`` frame of the wrong shape, a text
    frame that is not a JSON array with a kind, a binary frame shorter than its head."""


@attrs.frozen
class Session:
    """What the room's last welcome said, on a connection that speaks the envelope.

    Attributes:
      id: the connection's id in the room (``conn.id``), the same after a resume.
      epoch: the room's log epoch, or None when the room keeps no history.
      seq: the room's head (the last number it gave a broadcast) when it welcomed the
        client, or None when it keeps no history.
      resumed: True when the room took the same ``Connection`` up again (its
        ``on_connect`` did not run).
      recovered: None when the client asked for nothing (a first connection, a room
        without history); True when every broadcast it missed followed the welcome;
        False when they could not be replayed: nothing was, and the application must
        fetch its state again.
    """

    id: str
    epoch: str | None
    seq: int | None
    resumed: bool
    recovered: bool | None


@attrs.define
class Position:
    """Where the client is in its room's log, and the session token to come back with."""

    token: str | None = None
    epoch: str | None = None
    seq: int | None = None

    def query(self, query: str) -> str:
        """``query`` (as in the URL) with roomkit's parameters: any it had taken out, the
        client's own added: the session once it has one, epoch and seq once it has an
        epoch."""
        kept = [part for part in query.split("&") if part and not _ours(part)]
        ours = {}
        if self.token is not None:
            ours["roomkit.session"] = self.token
        if self.epoch is not None and self.seq is not None:
            ours["roomkit.epoch"], ours["roomkit.seq"] = self.epoch, str(self.seq)
        return "&".join([*kept, urlencode(ours)] if ours else kept)

    def welcome(self, frame: str | bytes) -> Session:
        """Take in the connection's first frame, which must be the room's welcome.

        Raises:
          EnvelopeError: if it is not a welcome, or one of the wrong shape.
        """
        kind, body = _parse(frame)
        if kind != "welcome" or len(body) != 1 or not isinstance(body[0], dict):
            raise EnvelopeError(f"the first frame is not a welcome: {frame!r:.200}")
        session, token = _session(body[0])
        self.token = token
        if session.recovered is not True:
            self.epoch, self.seq = session.epoch, session.seq
        return session

    def unwrap(self, frame: str | bytes) -> str | bytes | None:
        """The payload of a frame after the welcome, or None to drop it (seen already,
        or of a kind this client does not know).

        Raises:
          EnvelopeError: for a frame that is not the envelope's.
        """
        if isinstance(frame, bytes):
            if len(frame) < _SEQ.size:
                raise EnvelopeError(f"a binary frame of {len(frame)} bytes has no seq")
            (seq,) = _SEQ.unpack_from(frame)
            return frame[_SEQ.size :] if self._fresh(seq or None) else None
        kind, body = _parse(frame)
        if kind != "m":
            return None
        if len(body) != 2 or not _is_seq(body[0]) or not isinstance(body[1], str):
            raise EnvelopeError(f"an m frame of the wrong shape: {frame!r:.200}")
        return body[1] if self._fresh(body[0]) else None

    def skip(self, head: bytes, *, binary: bool) -> int | None:
        """Count the message of a frame refused for its length as seen; ``head`` is the
        frame's first bytes (UTF-8 for text). Its seq, or None when it has none (not
        numbered, or not an ``m`` frame): then there is nothing to skip."""
        if binary:
            seq = _SEQ.unpack_from(head)[0] if len(head) >= _SEQ.size else 0
        else:
            match = _M_HEAD.match(head)
            seq = int(match[1]) if match is not None else 0
        if not seq:
            return None
        self._fresh(seq)
        return int(seq)

    def _fresh(self, seq: int | None) -> bool:
        """Whether a message numbered ``seq`` is new: if so, it is now the last seen."""
        if seq is None:
            return True
        if self.seq is not None and seq <= self.seq:
            return False
        self.seq = seq
        return True


def _ours(part: str) -> bool:
    return unquote_plus(part.partition("=")[0]) in PARAMETERS


def _parse(frame: str | bytes) -> tuple[str, list[Any]]:
    """A text frame's kind and the rest of its array."""
    if isinstance(frame, bytes):
        raise EnvelopeError("a binary frame where a text frame was expected")
    try:
        value = json.loads(frame)
    except ValueError:
        value = None
    if not (isinstance(value, list) and value and isinstance(value[0], str)):
        raise EnvelopeError(f"a text frame that is not an array with a kind: {frame!r:.200}")
    return value[0], value[1:]


def _session(fields: dict[str, Any]) -> tuple[Session, str]:
    """A welcome's fields as a Session, and its token; extra fields are ignored (a later
    release may add some)."""
    id_, token, epoch = fields.get("id"), fields.get("session"), fields.get("epoch")
    seq, resumed, recovered = fields.get("seq"), fields.get("resumed"), fields.get("recovered")
    if not (
        isinstance(id_, str)
        and isinstance(token, str)
        and (epoch is None or isinstance(epoch, str))
        and _is_seq(seq)
        and isinstance(resumed, bool)
        and (recovered is None or isinstance(recovered, bool))
    ):
        raise EnvelopeError(f"a welcome of the wrong shape: {fields!r:.200}")
    return Session(id_, epoch, seq, resumed, recovered), token


def _is_seq(value: object) -> bool:
    """Whether ``value`` is a sequence number as JSON gives one: an int from 0, or null."""
    if value is None:
        return True
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
