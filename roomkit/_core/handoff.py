"""Workers handing connections to each other over their Unix sockets. Pure, no I/O.

With ``roomkit serve --workers N`` every worker accepts connections, but a room lives
in one worker only (:mod:`roomkit._core.placement`). :func:`where` decides what a
worker does with a handshake once it is routed: serve it here, hand it to the room's
owner, or refuse it (a connection handed here for a room that is not this worker's is
never handed on again).

What the workers say to each other is frames, one after the other on a Unix stream::

    b"RKH1"  kind (1 byte)  header length (4 bytes)  payload length (4 bytes)
    header (JSON, UTF-8)  payload

lengths big-endian, each bounded (``MAX_HEADER``, and per kind ``MAX_PAYLOAD``).
:class:`FrameReader` takes the bytes as they come and returns whole frames, or raises
:class:`HandoffError` as soon as what it was fed cannot be one. The kinds:

* ``HANDOFF``: a connection, whose socket travels beside the frame's first byte
  (SCM_RIGHTS); :class:`Handoff` is its header and payload. Answered with ``TAKEN``.
* ``RELAY``: the same without a socket (TLS: a TLS session cannot be passed): after
  ``TAKEN`` the Unix connection itself carries the connection's bytes.
* ``TAKEN``: the owner took the connection; the sender may let its copy go.
* ``METRICS``: asks for the worker's own metrics, answered by ``EXPOSITION`` (the
  Prometheus text).
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Mapping
from typing import Any, Final

import attrs

from .._roomid import RoomId
from .frontdoor import room_name_problem
from .placement import Placement

__all__ = [
    "MAGIC",
    "MAX_HEADER",
    "MAX_PAYLOAD",
    "PREFIX",
    "Frame",
    "FrameReader",
    "HandTo",
    "Handoff",
    "HandoffError",
    "Kind",
    "Refuse",
    "ServeHere",
    "encode",
    "where",
]

#: The first bytes of every frame: what they speak, and its version.
MAGIC: Final = b"RKH1"
#: The fixed part of a frame: magic, kind, header length, payload length.
PREFIX: Final = struct.Struct("!4sBII")
#: Largest header, in bytes: a room's prefix and name (at most 256 characters) and an
#: address, as JSON.
MAX_HEADER: Final = 8 * 1024


class Kind(enum.IntEnum):
    """What a frame is (see the module's docstring)."""

    HANDOFF = 1
    RELAY = 2
    TAKEN = 3
    METRICS = 4
    EXPOSITION = 5


#: Largest payload by kind, in bytes. A hand-off carries the request head as read (at
#: most 16 KiB and its blank line) and what came after it in the same reads (less than
#: 32 KiB more); an exposition, a worker's whole metrics page.
MAX_PAYLOAD: Final[Mapping[Kind, int]] = {
    Kind.HANDOFF: 64 * 1024,
    Kind.RELAY: 64 * 1024,
    Kind.TAKEN: 0,
    Kind.METRICS: 0,
    Kind.EXPOSITION: 16 * 1024 * 1024,
}


class HandoffError(ValueError):
    """Raised when a peer worker's bytes are not a frame, or not the frame expected."""


@attrs.frozen
class Frame:
    """One message between workers: its kind, its header's fields, its payload."""

    kind: Kind
    header: Mapping[str, Any] = attrs.field(factory=dict)
    payload: bytes = b""


def encode(frame: Frame) -> bytes:
    """The bytes of ``frame``.

    Raises:
      HandoffError: if its header or payload is past its bound.
    """
    header = json.dumps(dict(frame.header), ensure_ascii=False, separators=(",", ":")).encode()
    _check_sizes(frame.kind, len(header), len(frame.payload))
    return PREFIX.pack(MAGIC, frame.kind, len(header), len(frame.payload)) + header + frame.payload


def _check_sizes(kind: Kind, header: int, payload: int) -> None:
    if header > MAX_HEADER:
        raise HandoffError(f"a {kind.name} header of {header} bytes is past {MAX_HEADER}")
    if payload > MAX_PAYLOAD[kind]:
        raise HandoffError(f"a {kind.name} payload of {payload} bytes is past {MAX_PAYLOAD[kind]}")


class FrameReader:
    """Whole frames out of the bytes of a Unix stream, as they arrive.

    Holds at most one frame's bytes: the prefix is checked as soon as it is here, so a
    length past its bound is refused before its bytes are waited for.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def pending(self) -> int:
        """Bytes fed and not yet returned in a frame."""
        return len(self._buffer)

    def take_pending(self) -> bytes:
        """The bytes fed and not yet returned in a frame, which the reader forgets:
        what follows a frame on a stream that then carries something else."""
        pending = bytes(self._buffer)
        self._buffer.clear()
        return pending

    def next_frame(self) -> Frame | None:
        """The next whole frame, or None until more bytes are fed.

        Raises:
          HandoffError: if the bytes fed are no frame: another magic, an unknown kind,
            a length past its bound, a header that is not a JSON object.
        """
        if len(self._buffer) < PREFIX.size:
            return None
        magic, number, header_size, payload_size = PREFIX.unpack_from(self._buffer)
        if magic != MAGIC:
            raise HandoffError(f"not a hand-off frame: it starts with {bytes(magic)!r}")
        try:
            kind = Kind(number)
        except ValueError:
            raise HandoffError(f"unknown frame kind {number}") from None
        _check_sizes(kind, header_size, payload_size)
        end = PREFIX.size + header_size + payload_size
        if len(self._buffer) < end:
            return None
        header = _header(bytes(self._buffer[PREFIX.size : PREFIX.size + header_size]))
        payload = bytes(self._buffer[PREFIX.size + header_size : end])
        del self._buffer[:end]
        return Frame(kind, header, payload)


def _header(data: bytes) -> dict[str, Any]:
    try:
        header = json.loads(data.decode())
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError both are
        raise HandoffError(f"a frame header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise HandoffError("a frame header is not a JSON object")
    return header


@attrs.frozen
class Handoff:
    """A WebSocket handshake, or a plain request to a room, handed to its room's owner, as
    the accepting worker routed it.

    Attributes:
      room: the room it goes to (the route hook, if any, already chose it).
      remote: the client's ``(host, port)``, or None.
      head: the request head as read, its blank line included.
      rest: what the client sent after the head in the same reads: its first frames,
        or the start of a plain request's body (read on by the room's worker).
      trusted: a call (``roomkit-call``) that the sender made itself (an internal visit
        of its own), which the owner runs without checking its signature. Only the
        sender can say so: the workers' Unix sockets are their user's alone.
    """

    room: RoomId
    remote: tuple[str, int] | None
    head: bytes
    rest: bytes = b""
    trusted: bool = False

    def frame(self, *, relay: bool = False) -> Frame:
        """This hand-off as a frame: ``HANDOFF`` (its socket goes beside it) or ``RELAY``."""
        header = {
            "room": [self.room.namespace, self.room.name],
            "remote": None if self.remote is None else list(self.remote),
            "head": len(self.head),
            "trusted": self.trusted,
        }
        return Frame(Kind.RELAY if relay else Kind.HANDOFF, header, self.head + self.rest)

    @classmethod
    def from_frame(cls, frame: Frame) -> Handoff:
        """The hand-off a ``HANDOFF`` or ``RELAY`` frame carries.

        Raises:
          HandoffError: if it is another kind, or its header is not exactly a room's
            prefix and name (a valid room name), an address or null, the length of a
            head (ending in its blank line) within the payload, and a boolean.
        """
        if frame.kind not in (Kind.HANDOFF, Kind.RELAY):
            raise HandoffError(f"expected a hand-off, got {frame.kind.name}")
        header = frame.header
        if set(header) != {"room", "remote", "head", "trusted"}:
            raise HandoffError(f"a hand-off header has the fields {sorted(header)}")
        trusted = header["trusted"]
        if type(trusted) is not bool:
            raise HandoffError(f"a hand-off's trusted flag is {trusted!r}, no boolean")
        room = _room(header["room"])
        remote = _remote(header["remote"])
        size = header["head"]
        if type(size) is not int or not 0 < size <= len(frame.payload):
            raise HandoffError(f"a hand-off head length of {size!r} is not in its payload")
        head = frame.payload[:size]
        if not head.endswith(b"\r\n\r\n"):
            raise HandoffError("a hand-off head does not end with a blank line")
        return cls(room, remote, head, frame.payload[size:], trusted)


def _room(value: object) -> RoomId:
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        raise HandoffError(f"a hand-off room is not a [prefix, name] pair: {value!r}")
    namespace, name = value
    problem = room_name_problem(name)
    if problem is not None or (namespace and not namespace.startswith("/")):
        raise HandoffError(f"a hand-off room is no room: {value!r}")
    return RoomId(namespace, name)


def _remote(value: object) -> tuple[str, int] | None:
    if value is None:
        return None
    if isinstance(value, list) and len(value) == 2:
        host, port = value
        if isinstance(host, str) and type(port) is int and 0 <= port <= 0xFFFF:
            return (host, port)
    raise HandoffError(f"a hand-off address is not [host, port] or null: {value!r}")


@attrs.frozen
class ServeHere:
    """The room lives in this worker: serve the handshake here."""


@attrs.frozen
class HandTo:
    """The room lives in the member ``owner``: hand the connection to it."""

    owner: str


@attrs.frozen
class Refuse:
    """A connection handed here for a room that lives elsewhere: refuse it (503)
    rather than hand it on, so that two workers that disagree cannot pass it back and
    forth."""


def where(placement: Placement, room: RoomId, *, handed: bool) -> ServeHere | HandTo | Refuse:
    """What a worker does with a handshake for ``room``, accepted here or ``handed``
    here by another worker."""
    owner = placement.owner(room)
    if owner == placement.me:
        return ServeHere()
    return Refuse() if handed else HandTo(owner)
