"""Calls into rooms: the codec of a call's arguments and result, and its wire. Pure.

A call is copied by serialisation, the same way whether the room is in this process or
another. At the caller, :meth:`MethodCodec.encode_arguments` binds the arguments to the
method's signature (a TypeError before anything is sent), unstructures each by its
parameter's annotation with the room's converter (its protocol's, or else a strict one
of roomkit's, as storage has), and writes the body::

    {"args": [...], "kwargs": {...}, "chain": [["/chat", "a"], ...]}

The room reads it back (:meth:`MethodCodec.decode_arguments`: bound again, each
argument structured by its annotation, a plain JSON value without one), runs the
method, and answers with one of two bodies, which the caller parses
(:func:`parse_answer`) and whose result it structures by the return annotation::

    {"result": <json>}
    {"error": {"kind": "error" | "timeout" | "cycle", "type": str, "message": str,
               "ran": true | false | null}}

``chain`` is the rooms whose turns wait on the call, outermost first: a room already in
it is not called again (a cycle, which would deadlock). Between processes the body goes
in a plain HTTP request into the room's path (:func:`call_head`), signed in a cluster
with its secret (:func:`call_auth`, :func:`verify_call`); the caller reads the answer
with :class:`AnswerReader`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import inspect
import json
import math
import re
import typing
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Literal
from urllib.parse import quote

import attrs
import cattrs
import h11

from .._converter import make_converter
from .._protocol import Protocol
from .._roomid import RoomId
from .clusterauth import MAX_SKEW

__all__ = [
    "AUTH_HEADER",
    "CALL_HEADER",
    "RPC_MARKER",
    "SEEN_CAP",
    "TIMEOUT_HEADER",
    "Answer",
    "AnswerReader",
    "Chain",
    "Failed",
    "Kind",
    "MethodCodec",
    "Returned",
    "SeenCalls",
    "auth_problem",
    "call_auth",
    "call_head",
    "call_path",
    "call_signature",
    "call_timeout",
    "encode_error",
    "parse_answer",
    "refused_unrun",
    "rpc_function",
    "timeout_value",
    "verify_call",
]

#: The attribute ``@roomkit.rpc`` sets on a method: only such methods can be called.
RPC_MARKER: Final = "__roomkit_rpc__"
#: The headers of a call between processes, as the head's parser lowercases them.
CALL_HEADER: Final = "roomkit-call"
TIMEOUT_HEADER: Final = "roomkit-call-timeout"
AUTH_HEADER: Final = "roomkit-call-auth"

Chain = tuple[RoomId, ...]
"""The rooms whose turns wait on a call, outermost first."""

Kind = Literal["error", "timeout", "cycle"]
"""What an error answer is: a raise (or a refusal), a timeout, or a cycle of calls."""

_KINDS: Final = frozenset(("error", "timeout", "cycle"))
#: Compact JSON, NaN refused: what JavaScript's JSON.parse reads.
_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
#: For rooms without a protocol: a strict converter of roomkit's that no room registers
#: hooks on, so that a call's encoding depends on its values alone (as storage's does).
_PLAIN: Final = make_converter()
#: Stands for ``self`` when a method's signature binds a call's arguments.
_SELF: Final = object()
_SIG: Final = re.compile(r"[A-Za-z0-9_-]{43}")
_SECONDS: Final = re.compile(r"[0-9]{1,15}")
_NONCE: Final = re.compile(r"[A-Za-z0-9_-]{22}")
#: The most call signatures a process remembers to catch replays (:class:`SeenCalls`):
#: some 9 MB (measured), about 800 calls a second for the two minutes each is kept.
SEEN_CAP: Final = 100_000
_TIMEOUT: Final = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?")


def rpc_function(room_class: type, name: str) -> Callable[..., Any] | None:
    """The ``@roomkit.rpc`` method ``name`` of ``room_class``; None if it has none."""
    if name.startswith("_"):
        return None
    function: Callable[..., Any] | None = getattr(room_class, name, None)
    if callable(function) and getattr(function, RPC_MARKER, False) is True:
        return function
    return None


@attrs.frozen
class Returned:
    """A call's answer: it returned ``value``, as JSON (structure it with
    :meth:`MethodCodec.decode_result`)."""

    value: Any


@attrs.frozen
class Failed:
    """A call's answer: it failed. ``type`` names the exception's class, ``ran`` says
    whether the call's turn took effect (None: unknown)."""

    kind: Kind
    type: str
    message: str
    ran: bool | None


@functools.cache
def _shape(function: Callable[..., Any]) -> tuple[inspect.Signature, Mapping[str, Any]]:
    """``function``'s signature and its resolved annotations (the return's as ``return``)."""
    return inspect.signature(function), typing.get_type_hints(function)


@attrs.frozen
class MethodCodec:
    """Encodes and decodes the calls of one ``@rpc`` method ``function`` with
    ``converter``: its room's protocol's, or roomkit's strict one (:meth:`of`)."""

    function: Callable[..., Any]
    converter: cattrs.Converter

    @classmethod
    def of(cls, function: Callable[..., Any], protocol: Protocol | None) -> MethodCodec:
        """The codec of ``function``, a method of a room whose protocol is ``protocol``."""
        return cls(function, _PLAIN if protocol is None else protocol.converter)

    @property
    def name(self) -> str:
        return self.function.__name__

    def encode_arguments(
        self, args: tuple[Any, ...], kwargs: Mapping[str, Any], chain: Chain
    ) -> bytes:
        """The body of a call with ``args`` and ``kwargs``, from the turns in ``chain``.

        Raises:
          TypeError: if they do not bind to the method's parameters, or one cannot be
            encoded (the message names it).
        """
        args, kwargs = self._bound(args, kwargs, self._unstructure)
        body = {"args": list(args), "kwargs": kwargs, "chain": _chain_json(chain)}
        try:
            return _ENCODER.encode(body).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{self.name}(): an argument cannot be encoded as JSON: {exc}"
            ) from None

    def decode_arguments(
        self, body: bytes, limit: int
    ) -> tuple[tuple[Any, ...], dict[str, Any], Chain]:
        """The arguments and the chain of a call's ``body``, of at most ``limit`` bytes.

        Raises:
          ValueError: if ``body`` is too big, or no call's JSON.
          TypeError: if the arguments do not bind to the method's parameters, or one
            does not structure as its annotation (the message names it).
        """
        if len(body) > limit:
            raise ValueError(f"the call's body is {len(body)} bytes, over the room's {limit}")
        given, named, chain = _parse_body(body)
        args, kwargs = self._bound(given, named, self._structure)
        return args, kwargs, chain

    def encode_result(self, value: Any, limit: int) -> bytes:
        """The answer body for ``value``, returned by the method, of at most ``limit``
        bytes (the room's ``max_request_size``: what a caller reads of an answer).

        Raises:
          TypeError: if it cannot be encoded by the return annotation as JSON.
          ValueError: if it is over ``limit`` bytes encoded: failed in the turn, so
            that its writes roll back, instead of committed and never read.
        """
        hint = _shape(self.function)[1].get("return", inspect.Parameter.empty)
        try:
            unstructured = self._unstructure(value, hint, "the result")
            body = _ENCODER.encode({"result": unstructured}).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{self.name}(): the result cannot be encoded as JSON: {exc}") from None
        if len(body) > limit:
            raise ValueError(
                f"{self.name}(): the result is {len(body)} bytes encoded, over the room's "
                f"max_request_size ({limit})"
            )
        return body

    def decode_result(self, value: Any) -> Any:
        """``value``, a result as JSON, structured by the return annotation.

        Raises:
          TypeError: if it does not structure as that annotation.
        """
        hint = _shape(self.function)[1].get("return", inspect.Parameter.empty)
        return self._structure(value, hint, "the result")

    def _bound(
        self,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        convert: Callable[[Any, Any, str], Any],
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``args`` and ``kwargs`` bound to the method's parameters, each converted by
        its annotation (unstructured for the wire, or structured from it).

        Raises:
          TypeError: if they do not bind, or one does not convert (the message names it).
        """
        signature, hints = _shape(self.function)
        try:
            bound = signature.bind(_SELF, *args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}(): {exc}") from None
        for name, value in list(bound.arguments.items())[1:]:
            bound.arguments[name] = self._each(signature, name, value, hints, convert)
        return bound.args[1:], bound.kwargs

    def _each(
        self,
        signature: inspect.Signature,
        name: str,
        value: Any,
        hints: Mapping[str, Any],
        convert: Callable[[Any, Any, str], Any],
    ) -> Any:
        """``value``, bound to parameter ``name``, converted by its annotation (each
        item of a ``*args``, each value of a ``**kwargs``)."""
        hint = hints.get(name, inspect.Parameter.empty)
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            return tuple(convert(item, hint, f"argument {name!r}") for item in value)
        if kind is inspect.Parameter.VAR_KEYWORD:
            return {key: convert(item, hint, f"argument {key!r}") for key, item in value.items()}
        return convert(value, hint, f"argument {name!r}")

    def _unstructure(self, value: Any, hint: Any, what: str) -> Any:
        try:
            if hint is inspect.Parameter.empty:
                return self.converter.unstructure(value)
            return self.converter.unstructure(value, unstructure_as=hint)
        except Exception as exc:
            raise TypeError(f"{what} cannot be encoded: {exc}") from None

    def _structure(self, value: Any, hint: Any, what: str) -> Any:
        if hint is inspect.Parameter.empty or hint is Any:
            return value
        try:
            return self.converter.structure(value, hint)
        except Exception as exc:
            raise TypeError(
                f"{self.name}(): {what} is no {_describe(hint)}: {_reason(exc)}"
            ) from None


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or repr(hint)


def _reason(error: BaseException) -> str:
    """What went wrong in a structuring, by its first leaf, with its cattrs notes."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    notes = [str(note) for note in getattr(error, "__notes__", ())]
    return "; ".join([str(error), *notes])


def _chain_json(chain: Chain) -> list[list[str]]:
    return [[room.namespace, room.name] for room in chain]


def _parse_body(body: bytes) -> tuple[list[Any], dict[str, Any], Chain]:
    """The three fields of a call's body, each of its type."""
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise ValueError("the call's body is not JSON") from None
    if not (isinstance(value, dict) and value.keys() == {"args", "kwargs", "chain"}):
        raise ValueError('the call\'s body is no {"args", "kwargs", "chain"} object')
    args, kwargs, chain = value["args"], value["kwargs"], value["chain"]
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ValueError("the call's args must be an array and its kwargs an object")
    if not isinstance(chain, list) or not all(_is_room(item) for item in chain):
        raise ValueError("the call's chain must be an array of [prefix, name] pairs")
    return args, kwargs, tuple(RoomId(prefix, name) for prefix, name in chain)


def _is_room(item: object) -> bool:
    return isinstance(item, list) and len(item) == 2 and all(isinstance(part, str) for part in item)


# The answers.


def encode_error(kind: Kind, type: str, message: str, ran: bool | None) -> bytes:
    """The answer body of a call that failed (see :class:`Failed`)."""
    error = {"kind": kind, "type": type, "message": message, "ran": ran}
    return _ENCODER.encode({"error": error}).encode("utf-8")


def parse_answer(body: bytes) -> Returned | Failed:
    """What the answer body ``body`` says.

    Raises:
      ValueError: if it is no answer's JSON.
    """
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise ValueError("the call's answer is not JSON") from None
    if isinstance(value, dict) and value.keys() == {"result"}:
        return Returned(value["result"])
    error = value.get("error") if isinstance(value, dict) and value.keys() == {"error"} else None
    if _is_error(error):
        assert isinstance(error, dict)
        return Failed(error["kind"], error["type"], error["message"], error["ran"])
    raise ValueError('the call\'s answer is no {"result"} or {"error"} object')


def refused_unrun(body: bytes) -> bool:
    """Whether the answer ``body`` of a call whose turn did not start is a refusal
    (a ``RoomCallError`` of no effect), not a timeout, a cycle or bad arguments."""
    try:
        answer = parse_answer(body)
    except ValueError:
        return False
    refusal = ("error", "RoomCallError", False)
    return isinstance(answer, Failed) and (answer.kind, answer.type, answer.ran) == refusal


def _is_error(error: object) -> bool:
    """Whether ``error`` is the object of a well-formed error answer."""
    return (
        isinstance(error, dict)
        and error.keys() == {"kind", "type", "message", "ran"}
        and error["kind"] in _KINDS
        and isinstance(error["type"], str)
        and isinstance(error["message"], str)
        and (error["ran"] is None or isinstance(error["ran"], bool))
    )


# The wire between processes.


def call_path(room: RoomId) -> str:
    """The path of ``room``, as a client's request would have it."""
    return f"{room.namespace}/{quote(room.name, safe='')}"


def timeout_value(timeout: float | None) -> str:
    """The ``roomkit-call-timeout`` value for ``timeout`` seconds left (None or inf:
    ``none``), as the head carries it and the signature covers it."""
    return "none" if timeout is None or math.isinf(timeout) else f"{max(timeout, 0.0):.3f}"


def call_head(
    room: RoomId, method: str, timeout: float | None, body: bytes, auth: str | None = None
) -> bytes:
    """The head of the request that carries a call of ``method`` to ``room``, with
    ``timeout`` seconds left (None: no bound) and ``body``; ``auth`` is the
    ``roomkit-call-auth`` value in a cluster with a secret (:func:`call_auth`)."""
    lines = [
        f"POST {call_path(room)} HTTP/1.1",
        "host: roomkit",
        f"{CALL_HEADER}: {method}",
        f"{TIMEOUT_HEADER}: {timeout_value(timeout)}",
    ]
    if auth is not None:
        lines.append(f"{AUTH_HEADER}: {auth}")
    lines += ["content-type: application/json", f"content-length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def call_signature(
    secret: bytes, method: str, timeout: str, t: str, nonce: str, target: str, body_sha: str
) -> str:
    """The HMAC-SHA256 of ``"call|{method}|{timeout}|{t}|{nonce}|{target}|{body_sha}"``
    keyed with the cluster's ``secret``, in base64url without padding: ``timeout`` is
    the ``roomkit-call-timeout`` value, ``nonce`` makes each request's signature its own
    (a replay of one is caught by :class:`SeenCalls`)."""
    message = "|".join(("call", method, timeout, t, nonce, target, body_sha)).encode("utf-8")
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def call_auth(
    secret: bytes,
    method: str,
    timeout: str,
    target: str,
    body: bytes,
    *,
    now: float,
    nonce: str,
) -> str:
    """The ``roomkit-call-auth`` value of a call of ``method`` to ``target`` (the
    request's path) with ``timeout`` (its ``roomkit-call-timeout`` value) and ``body``,
    signed at ``now`` (Unix seconds) with ``nonce`` (22 base64url characters: 16
    random bytes, new for each request)."""
    t = str(int(now))
    sha = hashlib.sha256(body).hexdigest()
    sig = call_signature(secret, method, timeout, t, nonce, target, sha)
    return f"t={t};n={nonce};sig={sig}"


def auth_problem(value: str | None, *, now: float) -> str | None:
    """Why the ``roomkit-call-auth`` ``value`` of a call is refused (403) before
    anything else is done for it (a routing, a body read): it is missing, malformed,
    or signed more than ``MAX_SKEW`` from ``now``; None if it may be good (only the
    room's owner, with the body, can tell: :func:`verify_call`)."""
    fields = _auth_fields(value, now)
    return fields if isinstance(fields, str) else None


def verify_call(
    value: str | None,
    secret: bytes,
    method: str,
    timeout: str,
    target: str,
    body: bytes,
    *,
    now: float,
    seen: SeenCalls | None = None,
) -> str | None:
    """Why the ``roomkit-call-auth`` ``value`` of a call is refused (403); None if it
    is signed with ``secret`` for this call (its method, ``timeout`` value, target and
    body), within ``MAX_SKEW`` of ``now``, and not ``seen`` here before (a replay)."""
    fields = _auth_fields(value, now)
    if isinstance(fields, str):
        return fields
    t, nonce, sig = fields
    sha = hashlib.sha256(body).hexdigest()
    expected = call_signature(secret, method, timeout, t, nonce, target, sha)
    if not hmac.compare_digest(expected.encode("ascii"), sig.encode("ascii")):
        return f"{AUTH_HEADER}: bad signature"
    if seen is not None and not seen.first(sig, now):
        return f"{AUTH_HEADER}: replayed: this signature was used here already"
    return None


def _auth_fields(value: str | None, now: float) -> tuple[str, str, str] | str:
    """The ``t``, ``n`` and ``sig`` of a ``roomkit-call-auth`` value, or why it is no
    such value, or is signed more than ``MAX_SKEW`` from ``now``."""
    if value is None:
        return f"{AUTH_HEADER}: not signed"
    pairs = [part.partition("=") for part in value.split(";")]
    found = {name: field for name, equals, field in pairs if equals}
    if len(found) != len(pairs) or found.keys() != {"t", "n", "sig"}:
        return f"{AUTH_HEADER}: not t=...;n=...;sig=..."
    t, nonce, sig = found["t"], found["n"], found["sig"]
    if not _SECONDS.fullmatch(t) or not _NONCE.fullmatch(nonce) or not _SIG.fullmatch(sig):
        return (
            f"{AUTH_HEADER}: t is no Unix time, n no 22 base64url characters, "
            "or sig no base64url HMAC-SHA256"
        )
    if abs(now - int(t)) > MAX_SKEW:
        return f"{AUTH_HEADER}: t is more than {MAX_SKEW:.0f} s away"
    return t, nonce, sig


class SeenCalls:
    """The signatures of the calls verified here, each kept ``2 * MAX_SKEW`` (the
    longest a signature is good for: signed up to ``MAX_SKEW`` ahead of this clock,
    accepted up to ``MAX_SKEW`` after), at most ``cap`` of them (beyond, the oldest
    go): a call replayed to this process within that time is refused."""

    def __init__(self, cap: int = SEEN_CAP) -> None:
        self._cap = cap
        # signature -> when first seen, oldest first (an OrderedDict: a dict's first
        # item is found slower and slower as items are deleted from its front)
        self._seen: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def first(self, sig: str, now: float) -> bool:
        """Whether ``sig`` is seen for the first time (within the window), at ``now``
        (Unix seconds); it is remembered from now on."""
        seen = self._seen
        horizon = now - 2 * MAX_SKEW
        while seen and next(iter(seen.values())) < horizon:
            seen.popitem(last=False)
        if sig in seen:
            return False
        seen[sig] = now
        if len(seen) > self._cap:
            seen.popitem(last=False)
        return True


def call_timeout(value: str | None) -> float | None:
    """The seconds a call has left, from its ``roomkit-call-timeout`` ``value``: inf
    for ``none``; None if it is missing or no such value (400)."""
    if value == "none":
        return math.inf
    if value is None or not _TIMEOUT.fullmatch(value):
        return None
    return float(value)


@attrs.frozen
class Answer:
    """The answer to a call's request: its status and its body."""

    status: int
    body: bytes


class AnswerReader:
    """The answer to a call's request, read by h11 from the bytes as they come (an
    interim 1xx skipped), its body bounded by ``limit`` bytes.

    The request went as :func:`call_head` wrote it; h11 is told of it only for its state.
    """

    def __init__(self, limit: int) -> None:
        self._h11 = h11.Connection(h11.CLIENT)
        self._h11.send(h11.Request(method="POST", target="/", headers=[("host", "roomkit")]))
        self._h11.send(h11.EndOfMessage())
        self._limit = limit
        self._status: int | None = None
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> Answer | None:
        """Take ``data`` read from the connection (``b""``: it ended); the whole answer,
        or None until more is due.

        Raises:
          ValueError: if the bytes are no HTTP answer, its body passes ``limit``, or the
            connection ended before a whole answer.
        """
        self._h11.receive_data(data)
        try:
            while (event := self._h11.next_event()) is not h11.NEED_DATA:
                if isinstance(event, h11.Response):
                    self._status = event.status_code
                elif isinstance(event, h11.Data):
                    self._size += len(event.data)
                    if self._size > self._limit:
                        raise ValueError(f"the answer passes {self._limit} bytes")
                    self._parts.append(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    assert self._status is not None, "h11 sends a Response first"
                    return Answer(self._status, b"".join(self._parts))
        except h11.RemoteProtocolError as exc:
            if not data:  # h11's word for an answer cut short
                raise ValueError("the connection ended before a whole answer") from None
            raise ValueError(f"the answer is no HTTP response: {exc}") from None
        return None
