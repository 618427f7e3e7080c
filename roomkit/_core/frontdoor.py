"""The front door: what to do with an HTTP request head. Pure, no I/O.

Every TCP connection starts with an HTTP/1.1 request head. :func:`parse_head` reads it
with h11 and :class:`Router` decides, without touching a socket, whether it is answered
with a plain HTTP :class:`Response` (``/healthz``, 426 for non-WebSocket requests, 400
for a bad room name, 404 for an unknown route) or handed to a room as a
:class:`RoomTarget`.

Routes: a single Room class serves ``/{name}``; a mapping ``{"/chat": ChatRoom}`` serves
``/chat/{name}``. The route of a path is the one with the longest prefix that the path
is or starts with, segment by segment (``/chat`` and ``/chat/...`` are ``/chat``'s;
a single class is the route of every path starting with ``/``). What follows the
prefix names the room: one segment, percent-decoded, in Unicode normalization form C,
1 to ``MAX_ROOM_NAME`` printable characters with no ``/``; nothing (``/``, ``/chat``,
``/chat/``) names the router's default room.

A route hook (``serve``'s ``route=``, run by the gateway) may choose another room:
:meth:`Router.choose` checks its choice as it would a path's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Any, Final, Generic, TypeVar
from urllib.parse import parse_qsl, unquote

import attrs
import h11

from .._roomid import RoomId
from .envelope import SUBPROTOCOL, offers_envelope

__all__ = [
    "CONTINUE",
    "DEFAULT_ROOM",
    "MAX_ROOM_NAME",
    "UPGRADE_REQUIRED",
    "BodyReader",
    "Page",
    "RequestHead",
    "Response",
    "RoomTarget",
    "Router",
    "handshake_response",
    "is_token_list",
    "list_elements",
    "page_response",
    "parse_head",
    "plain_response",
    "reason_phrase",
    "room_name",
    "room_name_problem",
]

#: Longest room name, in characters; a name is a key, not a document.
MAX_ROOM_NAME: Final = 256
#: The room that ``/`` (or ``/chat``, ``/chat/`` for a route ``/chat``) reaches, as the
#: Durable Objects guide's entry point falls back on ``idFromName("default")``.
DEFAULT_ROOM: Final = "default"

T = TypeVar("T")


@attrs.frozen
class RequestHead:
    """A parsed HTTP request head."""

    method: str
    target: str
    headers: Mapping[str, str]

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(self.target.partition("?")[2], keep_blank_values=True))

    @property
    def is_websocket(self) -> bool:
        upgrade = self.headers.get("upgrade", "")
        return self.method == "GET" and "websocket" in upgrade.lower()


#: Headers a response may not set itself: roomkit frames the body and closes the
#: connection, and the content type has a field of its own.
_FRAMING_HEADERS: Final = frozenset(
    {"content-length", "transfer-encoding", "connection", "content-type"}
)


def _header_pairs(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
) -> tuple[tuple[str, str], ...]:
    """``headers`` as a tuple of pairs, each checked: a name that is a token, a value of
    printable ASCII (tabs allowed), so that no header can split the response."""
    pairs = tuple(headers.items() if isinstance(headers, Mapping) else headers)
    for pair in pairs:
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise ValueError(f"a header is a (name, value) pair, not {pair!r}")
        name, value = pair
        if not (isinstance(name, str) and name and _TOKEN_CHARS.issuperset(name)):
            raise ValueError(f"a header name is an HTTP token, not {name!r}")
        if name.lower() in _FRAMING_HEADERS:
            raise ValueError(
                f"a response cannot set {name!r}: roomkit frames the body and closes "
                "the connection (give the content type as content_type=)"
            )
        _check_value(name, value)
    return pairs


def _check_value(name: str, value: object) -> None:
    if not isinstance(value, str) or not all(c == "\t" or " " <= c <= "~" for c in value):
        raise ValueError(
            f"the value of header {name!r} must be printable ASCII, with no CR or LF: {value!r}"
        )


@attrs.frozen
class Response:
    """A plain HTTP response: what the server's pages and refusals answer, and what
    :meth:`roomkit.Room.on_request` returns.

    Args:
      status: the status code, 200 to 999 (an interim 1xx is no answer).
      body: ``str`` (sent as UTF-8), ``bytes``, or any other JSON value (sent as
        compact JSON).
      headers: extra headers, a mapping or an iterable of ``(name, value)`` pairs
        (kept as a tuple of pairs). Names must be HTTP tokens and values printable
        ASCII without CR or LF, else ValueError: a room cannot split a response.
        ``content-type``, ``content-length``, ``connection`` and ``transfer-encoding``
        are roomkit's to set.
      content_type: the ``content-type``; None infers it from the body:
        ``text/plain; charset=utf-8`` for ``str``, ``application/octet-stream`` for
        ``bytes``, ``application/json`` for a JSON value.

    Raises:
      ValueError: for a bad status, header or content type.
      TypeError: for a body that is not JSON-encodable.

    Every one goes out with ``connection: close`` and ``x-content-type-options: nosniff``.
    """

    status: int
    body: Any = ""
    headers: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_header_pairs)
    content_type: str | None = None
    _payload: bytes = attrs.field(init=False, repr=False, eq=False)
    _type: str = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.status, int) or isinstance(self.status, bool):
            raise ValueError(f"a status is an int, not {self.status!r}")
        if not 200 <= self.status <= 999:
            # 1xx answers are interim: a client would read the body as the next answer.
            raise ValueError(f"a status is 200 to 999, not {self.status}")
        body = self.body
        if isinstance(body, str):
            payload, inferred = body.encode("utf-8"), "text/plain; charset=utf-8"
        elif isinstance(body, (bytes, bytearray, memoryview)):
            payload, inferred = bytes(body), "application/octet-stream"
        else:
            text = json.dumps(body, separators=(",", ":"), allow_nan=False)
            payload, inferred = text.encode("utf-8"), "application/json"
        content_type = inferred if self.content_type is None else self.content_type
        _check_value("content-type", content_type)
        object.__setattr__(self, "_payload", payload)
        object.__setattr__(self, "_type", content_type)

    @property
    def text(self) -> str:
        """The body as text: as given, decoded from UTF-8 (invalid bytes replaced), or
        the JSON sent."""
        return self.body if isinstance(self.body, str) else self._payload.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body's JSON value: the value given, or parsed from a ``str`` or ``bytes``
        body (``json.JSONDecodeError``, a ValueError, if it is no JSON)."""
        if isinstance(self.body, (str, bytes, bytearray, memoryview)):
            return json.loads(self._payload)
        return self.body

    def to_bytes(self, *, body: bool = True) -> bytes:
        """The whole response, head and body, ready to write; the connection then closes.

        ``body=False`` leaves the body out (the answer to ``HEAD``); ``content-length``
        still says what a ``GET`` would get.
        """
        payload = self._payload
        headers = [
            ("content-type", self._type),
            ("content-length", str(len(payload))),
            ("connection", "close"),
            # A browser must take the body for what content-type says: a 404 echoes
            # the path, which is not to be sniffed into HTML or script.
            ("x-content-type-options", "nosniff"),
            *self.headers,
        ]
        lines = [f"HTTP/1.1 {self.status} {reason_phrase(self.status)}"]
        lines += [f"{name}: {value}" for name, value in headers]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head + payload if body else head


#: The reason phrase of a status that ``http.HTTPStatus`` does not name, by its class
#: (RFC 9110 section 15): a client goes by the number, the phrase is for people.
_GENERIC_PHRASES: Final = {
    1: "Informational",
    2: "Success",
    3: "Redirection",
    4: "Client Error",
    5: "Server Error",
}


def reason_phrase(status: int) -> str:
    """The reason phrase for ``status``: its name, or its class's for one unnamed (and
    ``"Unknown"`` past 599: a backend's answer, relayed by the proxy, could be one)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return _GENERIC_PHRASES.get(status // 100, "Unknown")


@attrs.frozen
class RoomTarget(Generic[T]):
    """An upgrade request that goes to the room ``room`` served by ``route``."""

    route: T
    room: RoomId


#: The header names and values that most handshakes carry, decoded once: a connection
#: keeps its request's headers for its life, and these then cost it nothing. A fixed
#: table, so that no peer can make it grow.
_COMMON: Final = {
    text.encode("latin-1"): text
    for text in (
        "host",
        "upgrade",
        "connection",
        "origin",
        "user-agent",
        "cookie",
        "authorization",
        "pragma",
        "cache-control",
        "accept-encoding",
        "accept-language",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-protocol",
        "sec-websocket-extensions",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-real-ip",
        "websocket",
        "Upgrade",
        "keep-alive, Upgrade",
        "Keep-Alive, Upgrade",
        "13",
        "no-cache",
        "gzip, deflate, br",
        "gzip, deflate, br, zstd",
        "permessage-deflate; client_max_window_bits",
        "permessage-deflate",
        "roomkit.v1",
    )
}


def parse_head(data: bytes) -> RequestHead | Response:
    """Parse a request head ending in a blank line, or say why it is not one (400)."""
    conn = h11.Connection(h11.SERVER)
    try:
        conn.receive_data(data)
        event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        return Response(400, f"Bad request: {exc}")
    if not isinstance(event, h11.Request):
        return Response(400, "Bad request: incomplete request head")
    headers: dict[str, str] = {}
    for raw_name, raw_value in event.headers:
        name = _COMMON.get(raw_name) or raw_name.decode("latin-1")
        value = _COMMON.get(raw_value) or raw_value.decode("latin-1")
        if name in headers:
            value = headers[name] + ("; " if name == "cookie" else ", ") + value
        headers[name] = value
    return RequestHead(event.method.decode("ascii"), event.target.decode("latin-1"), headers)


#: RFC 6455 section 1.3: appended to the client's key before hashing.
_WEBSOCKET_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: The characters of an HTTP token (RFC 7230 section 3.2.6), which RFC 6455 makes the
#: syntax of a subprotocol's name.
_TOKEN_CHARS: Final = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


#: The 101's line that selects the envelope.
_ENVELOPE_SELECTED: Final = b"Sec-WebSocket-Protocol: " + SUBPROTOCOL.encode("ascii") + b"\r\n"


def handshake_response(head: RequestHead) -> bytes | Response:
    """The ``101 Switching Protocols`` answer to a WebSocket upgrade, or why it is refused.

    roomkit negotiates no extension (a broadcast's frame is then the same bytes for
    every recipient of a form). Of the subprotocols it selects only ``roomkit.v1``, its
    envelope (``_core/envelope.py``), when the client offers it; a
    ``Sec-WebSocket-Protocol`` that is not a comma-separated list of tokens (RFC 6455
    section 4.1) is refused: a proxy would have to pass it on.
    """
    version = head.headers.get("sec-websocket-version", "")
    if version != "13":
        return Response(
            426,
            f"Bad WebSocket handshake: unsupported Sec-WebSocket-Version {version!r}",
            (("sec-websocket-version", "13"),),
        )
    tokens = {t.strip().lower() for t in head.headers.get("connection", "").split(",")}
    if "upgrade" not in tokens:
        return Response(400, "Bad WebSocket handshake: Connection header lacks 'upgrade'")
    key = head.headers.get("sec-websocket-key", "").strip()
    try:
        valid_key = len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        valid_key = False
    if not valid_key:
        return Response(400, "Bad WebSocket handshake: missing or malformed Sec-WebSocket-Key")
    protocols = head.headers.get("sec-websocket-protocol")
    if protocols is not None and not is_token_list(protocols):
        return Response(
            400, "Bad WebSocket handshake: Sec-WebSocket-Protocol is not a list of tokens"
        )
    accept = base64.b64encode(hashlib.sha1(key.encode("ascii") + _WEBSOCKET_GUID).digest())
    selected = _ENVELOPE_SELECTED if offers_envelope(protocols) else b""
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n" + selected + b"\r\n"
    )


def is_token_list(value: str) -> bool:
    """Whether ``value`` is a comma-separated list of one or more HTTP tokens (RFC 7230),
    with optional spaces or tabs around each; empty elements are ignored."""
    tokens = list_elements(value)
    return bool(tokens) and all(_TOKEN_CHARS.issuperset(token) for token in tokens)


def list_elements(value: str) -> list[str]:
    """The elements of a comma-separated header value (RFC 7230 section 7), in order,
    without the spaces or tabs around them; empty elements are left out."""
    return [element for part in value.split(",") if (element := part.strip(" \t"))]


#: What a plain GET of a path gets: a fixed response, or a function that makes one.
Page = Response | Callable[[], Response]


def page_response(head: RequestHead, files: Mapping[str, Page]) -> Response | None:
    """The server's page for a ``GET`` or ``HEAD`` of ``head``'s path: one of ``files``,
    or the health check; None if the path is no page (or the method another). Only
    paths in ``files`` are ever served: there is no file system behind them to walk
    out of."""
    if head.method not in ("GET", "HEAD"):
        return None
    if head.path == "/healthz":
        return Response(200, "ok")
    page = files.get(head.path)
    if page is None:
        return None
    return page if isinstance(page, Response) else page()


#: What a plain request gets where no room answers HTTP: a WebSocket endpoint's answer.
UPGRADE_REQUIRED: Final = Response(426, "Expected websocket", (("upgrade", "websocket"),))


def plain_response(head: RequestHead, files: Mapping[str, Page]) -> Response:
    """What a request that is not a WebSocket upgrade gets where no room answers HTTP:
    a page of ``files``, the health check, or 426."""
    return page_response(head, files) or UPGRADE_REQUIRED


#: The interim answer to ``Expect: 100-continue``: go on, send the body.
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


class BodyReader:
    """A plain request's body as it arrives: its framing (``Content-Length`` or
    chunked, by h11), ``Expect: 100-continue``, and its size limit.

    Fed the request head and the bytes read after it, then each chunk the socket
    gives, it says when the body is whole, or why it is refused: 413 as soon as it is
    known to pass ``limit`` (at once from ``Content-Length``, before any 100 Continue;
    as a chunked body passes it), 400 for bad framing or a peer that left mid-body.
    The caller writes :attr:`interim` first (a 100 Continue, when the client waits
    for one), then reads until :attr:`result` is no longer None.

    Args:
      head: the request head as read, its blank line included.
      rest: what was read past the head.
      limit: the largest body accepted, in bytes.
    """

    def __init__(self, head: bytes, rest: bytes, limit: int) -> None:
        self._h11 = h11.Connection(h11.SERVER)
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        #: The whole body, the refusal, or None while more is due.
        self.result: bytes | Response | None = None
        #: What to write before reading the body: a 100 Continue, or nothing.
        self.interim = b""
        self._h11.receive_data(head)
        request = self._h11.next_event()
        assert isinstance(request, h11.Request), "a head that parse_head accepted"
        headers = dict(request.headers)
        declared = headers.get(b"content-length")
        if declared is not None and b"transfer-encoding" in headers:
            # RFC 9112 section 6.3: a request with both may be a smuggling attempt (a
            # proxy before us could have framed it by the other), so refuse it.
            self.result = Response(400, "Bad request: both Content-Length and Transfer-Encoding")
            return
        if declared is not None and int(declared) > limit:
            self.result = _too_large(limit)  # at once: no 100 Continue for it
            return
        if rest:
            self._h11.receive_data(rest)
        self._next()
        if self.result is None and self._h11.they_are_waiting_for_100_continue:
            self.interim = CONTINUE

    def feed(self, data: bytes | bytearray) -> bytes | Response | None:
        """Take ``data`` read from the socket (``b""``: the peer closed); the
        :attr:`result`."""
        if self.result is None:
            self._h11.receive_data(bytes(data))
            self._next()
        return self.result

    def _next(self) -> None:
        try:
            while True:
                event = self._h11.next_event()
                if event is h11.NEED_DATA:
                    return
                if isinstance(event, h11.Data):
                    self._size += len(event.data)
                    if self._size > self._limit:
                        self.result = _too_large(self._limit)
                        return
                    self._parts.append(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    self.result = b"".join(self._parts)
                    return
        except h11.RemoteProtocolError as exc:
            self.result = Response(400, f"Bad request: {exc}")


def _too_large(limit: int) -> Response:
    return Response(413, f"Request body too large: at most {limit} bytes")


def room_name(segment: str) -> str | Response:
    """The room named by the raw path segment ``segment``, or why it names none (400).

    The name is percent-decoded as UTF-8, then put in Unicode normalization form C
    (NFC): ``caf%C3%A9`` and ``cafe%CC%81`` both name the room ``"café"``, as they look
    the same. The rules apply to that normal form.
    """
    try:
        name = unquote(segment, errors="strict")
    except UnicodeDecodeError:
        return _bad_room_name("the room name is not valid UTF-8")
    return _checked_name(name)


def room_name_problem(name: str) -> str | None:
    """What is wrong with ``name`` (already decoded) as a room name, in NFC; None if
    nothing is."""
    return _problem(unicodedata.normalize("NFC", name))


def _checked_name(name: str) -> str | Response:
    """``name`` in NFC, or why it is no room name (400)."""
    normal = unicodedata.normalize("NFC", name)
    problem = _problem(normal)
    return normal if problem is None else _bad_room_name(problem)


def _problem(name: str) -> str | None:
    """What is wrong with ``name``, in NFC, as a room name; None if nothing is."""
    if not 1 <= len(name) <= MAX_ROOM_NAME:
        return f"a room name must be 1 to {MAX_ROOM_NAME} characters long"
    if "/" in name:
        return "a room name cannot contain '/'"
    if not name.isprintable():
        return "a room name must be printable characters (no control characters)"
    return None


def _bad_room_name(problem: str) -> Response:
    return Response(400, f"Bad room name: {problem}")


class Router(Generic[T]):
    """Decides what each request head gets.

    Args:
      routes: the route object for ``/{name}`` (e.g. a Room class), or a mapping from
        a prefix (``"/chat"``) to the route object for ``/chat/{name}``.
      default_room: the room that an empty name reaches: ``/`` for a single route
        object, ``/chat`` and ``/chat/`` for a prefix ``"/chat"``.
      allowed_origins: the ``Origin`` values (``"https://example.com"``) a browser page
        may open WebSockets from; others get 403. A request without an ``Origin``
        header (not from a browser) is always allowed. None allows every origin.
      files: plain ``GET`` responses by path (``"/roomkit.js"``), or functions that make
        them (``"/metrics"``): the only pages served (to ``HEAD`` too).
      answers: whether a route object answers plain HTTP (a Room class that overrides
        ``on_request``); a plain request to a room path that is no page goes to its
        room if so, else gets 426. None: none does.

    Raises:
      ValueError: for a prefix that does not start with ``/``, or a ``default_room``
        that is no room name.
    """

    def __init__(
        self,
        routes: T | Mapping[str, T],
        *,
        default_room: str = DEFAULT_ROOM,
        allowed_origins: Iterable[str] | None = None,
        files: Mapping[str, Page] | None = None,
        answers: Callable[[T], bool] | None = None,
    ) -> None:
        problem = room_name_problem(default_room)
        if problem is not None:
            raise ValueError(f"default_room {default_room!r} is no room name: {problem}")
        self._default_room = unicodedata.normalize("NFC", default_room)
        self._origins = None if allowed_origins is None else _origins(allowed_origins)
        self._files = files or {}
        self._answers = answers
        if isinstance(routes, Mapping):
            self._routes: dict[str, T] = {}
            for prefix, route in routes.items():
                if not prefix.startswith("/"):
                    raise ValueError(f"a route prefix must start with '/': {prefix!r}")
                self._routes[prefix.rstrip("/")] = route
        else:
            self._routes = {"": routes}
        #: The prefixes, longest first: the first a path matches is its route's.
        self._prefixes = sorted(self._routes, key=len, reverse=True)

    def route(self, head: RequestHead) -> RoomTarget[T] | Response:
        """What ``head`` gets by its path: a plain response, a refusal, or its room.

        A plain request (no upgrade) gets the server's page first (``GET`` and
        ``HEAD`` only), then its room if that room answers HTTP (:meth:`answering`),
        behind the origin check; 426 if the path reaches no room that does.
        """
        if not head.is_websocket:
            page = self.page(head)
            if page is not None:
                return page
            by_path = self.path_target(head.path)
            target = UPGRADE_REQUIRED if isinstance(by_path, Response) else self.answering(by_path)
        else:
            target = self.path_target(head.path)
        if isinstance(target, Response):
            return target
        return self.check_origin(head) or target

    def page(self, head: RequestHead) -> Response | None:
        """The server's page for ``head`` (a ``GET`` or ``HEAD``), or None: see
        :func:`page_response`."""
        return page_response(head, self._files)

    @property
    def answers_http(self) -> bool:
        """Whether any route answers plain HTTP: if none does, a plain request that is
        no page gets 426 without asking a route hook."""
        answers = self._answers
        return answers is not None and any(answers(route) for route in self._routes.values())

    def answering(self, target: RoomTarget[T]) -> RoomTarget[T] | Response:
        """``target`` for a plain request if its route answers HTTP; else 426."""
        answers = self._answers
        return target if answers is not None and answers(target.route) else UPGRADE_REQUIRED

    def check_origin(self, head: RequestHead) -> Response | None:
        """403 if ``head`` comes from a browser page of an origin not allowed; else None."""
        origin = head.headers.get("origin")
        if origin is not None and self._origins is not None:
            allowed = origin.strip().lower().rstrip("/") in self._origins
            if not allowed:
                return Response(403, "Origin not allowed")
        return None

    def path_room(self, path: str) -> str:
        """The name of the room ``path`` reaches, or ``""`` if it reaches none."""
        target = self.path_target(path)
        return "" if isinstance(target, Response) else target.room.name

    def choose(self, path: str, choice: object) -> RoomTarget[T] | Response:
        """The room a route hook chose for a request to ``path``, or why there is none.

        Args:
          choice: what the hook returned: None for the room of the path; a room name
            (``""`` for the default room) in the route of the path (404 if no route
            serves it); or a pair of a prefix and a name (``("/chat", "lobby")``;
            ``""`` or ``"/"`` is the prefix of a single route object). A name is
            checked as a path's (400), but not percent-decoded.

        Raises:
          ValueError: for a prefix no route has.
          TypeError: for a choice of another type.
        """
        if choice is None:
            return self.path_target(path)
        if isinstance(choice, str):
            prefix = self.prefix_of(path)
            return _no_route(path) if prefix is None else self._target(prefix, choice)
        if isinstance(choice, tuple) and len(choice) == 2:
            prefix, name = choice
            if isinstance(prefix, str) and isinstance(name, str):
                if prefix.rstrip("/") not in self._routes:
                    raise ValueError(
                        f"a route hook chose the prefix {prefix!r}, which no route has"
                    )
                return self._target(prefix.rstrip("/"), name)
        raise TypeError(
            "a route hook returns a room name, a (prefix, name) pair, a Reject or None, "
            f"not {choice!r}"
        )

    def prefix_of(self, path: str) -> str | None:
        """The prefix of the route of ``path``: the longest that ``path`` is or starts
        with, segment by segment; None if there is none."""
        for prefix in self._prefixes:
            if path.startswith(prefix + "/") or path == prefix:
                return prefix
        return None

    def route_for(self, namespace: str) -> T | None:
        """The route serving rooms of ``namespace`` (a prefix), or None if none does."""
        return self._routes.get(namespace)

    def path_target(self, path: str) -> RoomTarget[T] | Response:
        """The room ``path`` reaches, or why it reaches none (404, 400)."""
        prefix = self.prefix_of(path)
        if prefix is None:
            return _no_route(path)
        segment = path[len(prefix) + 1 :]
        if "/" in segment:
            return _no_route(path)
        name = room_name(segment) if segment else self._default_room
        if isinstance(name, Response):
            return name
        return RoomTarget(self._routes[prefix], RoomId(prefix, name))

    def _target(self, prefix: str, name: str) -> RoomTarget[T] | Response:
        checked = _checked_name(name) if name else self._default_room
        if isinstance(checked, Response):
            return checked
        return RoomTarget(self._routes[prefix], RoomId(prefix, checked))


def _no_route(path: str) -> Response:
    return Response(404, f"No room route for {path}")


def _origins(origins: Iterable[str]) -> frozenset[str]:
    if isinstance(origins, str):
        raise TypeError("allowed_origins is an iterable of origins, not a single string")
    return frozenset(origin.strip().lower().rstrip("/") for origin in origins)
