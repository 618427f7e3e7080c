"""The front door: request heads and routing (pure), then the same through real sockets."""

from __future__ import annotations

import pytest
import trio
import trio.testing
import trio_websocket

import roomkit
import roomkit._gateway
from roomkit._core.frontdoor import (
    BodyReader,
    RequestHead,
    Response,
    RoomTarget,
    Router,
    handshake_response,
    list_elements,
    parse_head,
    room_name,
    room_name_problem,
)
from roomkit._roomid import RoomId

from .apps import Picky
from .helpers import Start, http, open_client


def head(target: str, *, websocket: bool = True, method: str = "GET") -> RequestHead:
    headers = {"host": "x"}
    if websocket:
        headers |= {"upgrade": "websocket", "connection": "Upgrade"}
    return RequestHead(method, target, headers)


UPGRADE = (
    b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)


def test_parse_head_lowercases_names_and_joins_repeats() -> None:
    raw = (
        b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nx-a: 2\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n"
    )
    parsed = parse_head(raw)
    assert isinstance(parsed, RequestHead)
    assert parsed.headers == {"host": "h", "x-a": "1, 2", "cookie": "a=1; b=2"}
    assert (parsed.path, parsed.query) == ("/a", {"x": "1"})


def test_parse_head_refuses_garbage() -> None:
    parsed = parse_head(b"\x16\x03\x01 not http\r\n\r\n")
    assert isinstance(parsed, Response) and parsed.status == 400


def test_single_room_class_routes_every_name() -> None:
    router = Router("R")
    assert router.route(head("/general?x=1")) == RoomTarget("R", RoomId("", "general"))
    assert router.route(head("/caf%C3%A9%20au%20lait")) == RoomTarget(
        "R", RoomId("", "café au lait")
    )


def test_mapping_routes_by_prefix() -> None:
    router = Router({"/chat": "C", "/game/": "G"})
    assert router.route(head("/chat/lobby")) == RoomTarget("C", RoomId("/chat", "lobby"))
    assert router.route(head("/game/42")) == RoomTarget("G", RoomId("/game", "42"))
    assert router.route(head("/lobby")) == Response(404, "No room route for /lobby")
    assert router.route(head("/chat/a/b")) == Response(404, "No room route for /chat/a/b")
    assert (router.route_for("/chat"), router.route_for("/game"), router.route_for("")) == (
        "C",
        "G",
        None,
    )
    with pytest.raises(ValueError, match="must start with '/'"):
        Router({"chat": "C"})


def test_an_empty_name_reaches_the_default_room() -> None:
    router = Router("R")
    default = RoomTarget("R", RoomId("", "default"))
    assert router.route(head("/")) == router.route(head("/?x=y")) == default
    assert Router("R", default_room="lobby").route(head("/")) == RoomTarget(
        "R", RoomId("", "lobby")
    )
    assert router.route(head("/a/")) == Response(404, "No room route for /a/")
    assert router.route(head("//")) == Response(404, "No room route for //")


def test_a_route_prefix_alone_reaches_its_default_room() -> None:
    router = Router({"/chat": "C", "/game/": "G"}, default_room="hall")
    hall = RoomTarget("C", RoomId("/chat", "hall"))
    assert router.route(head("/chat")) == router.route(head("/chat/?x=1")) == hall
    assert router.route(head("/game")) == RoomTarget("G", RoomId("/game", "hall"))
    assert router.route(head("/")) == Response(404, "No room route for /")
    assert router.route(head("/chatty")) == Response(404, "No room route for /chatty")
    # An empty last segment is the default room of the route before it: here, none.
    assert router.route(head("/chat/a/")) == Response(404, "No room route for /chat/a/")
    assert router.route(head("/chat//")) == Response(404, "No room route for /chat//")


def test_the_longest_prefix_a_path_is_or_starts_with_is_its_route() -> None:
    router = Router({"/": "L", "/chat": "C", "/chat/vip": "V"})
    assert router.route(head("/chat")) == RoomTarget("C", RoomId("/chat", "default"))
    assert router.route(head("/chat/vip")) == RoomTarget("V", RoomId("/chat/vip", "default"))
    assert router.route(head("/chat/vip/x")) == RoomTarget("V", RoomId("/chat/vip", "x"))
    assert router.route(head("/chat/x")) == RoomTarget("C", RoomId("/chat", "x"))
    assert router.route(head("/x")) == RoomTarget("L", RoomId("", "x"))
    assert router.route(head("/")) == RoomTarget("L", RoomId("", "default"))
    assert router.route(head("/x/y")) == Response(404, "No room route for /x/y")
    assert [router.prefix_of(p) for p in ("/chat/vipx", "/chatvip", "/a/b", "x")] == [
        "/chat",
        "",
        "",
        None,
    ]


def test_the_default_room_must_be_a_room_name() -> None:
    with pytest.raises(ValueError) as raised:
        Router("R", default_room="a/b")
    assert str(raised.value) == "default_room 'a/b' is no room name: a room name cannot contain '/'"
    for bad in ("", "x" * 257, "tab\t"):
        with pytest.raises(ValueError, match="is no room name"):
            Router("R", default_room=bad)
    assert Router("R", default_room="cafe\u0301").route(head("/")) == RoomTarget(
        "R", RoomId("", "café")
    )


def test_room_name_problem_says_what_is_wrong_with_a_decoded_name() -> None:
    assert room_name_problem("general talk") is None
    assert room_name_problem("%2F") is None  # a name, not a segment: nothing to decode
    assert room_name_problem("é" * 256) is None
    assert room_name_problem("e\u0301" * 256) is None  # 256 characters in NFC
    assert room_name_problem("") == "a room name must be 1 to 256 characters long"
    assert room_name_problem("x" * 257) == "a room name must be 1 to 256 characters long"
    assert room_name_problem("a/b") == "a room name cannot contain '/'"
    assert room_name_problem("a\x00") == (
        "a room name must be printable characters (no control characters)"
    )


def test_a_route_hooks_choice_is_checked_as_a_paths() -> None:
    router = Router({"/chat": "C", "/game": "G"}, default_room="hall")
    # None: the room of the path, refusals included.
    assert router.choose("/chat/x", None) == RoomTarget("C", RoomId("/chat", "x"))
    assert router.choose("/nope/x", None) == Response(404, "No room route for /nope/x")
    assert router.choose("/chat/a%2Fb", None) == Response(
        400, "Bad room name: a room name cannot contain '/'"
    )
    # A name: that room of the path's route, whatever follows the prefix.
    assert router.choose("/chat/x", "y") == RoomTarget("C", RoomId("/chat", "y"))
    assert router.choose("/chat/a/b/c", "y") == RoomTarget("C", RoomId("/chat", "y"))
    assert router.choose("/chat", "") == RoomTarget("C", RoomId("/chat", "hall"))
    assert router.choose("/chat", "caf%C3%A9") == RoomTarget("C", RoomId("/chat", "caf%C3%A9"))
    assert router.choose("/chat", "cafe\u0301") == RoomTarget("C", RoomId("/chat", "café"))
    assert router.choose("/ws", "y") == Response(404, "No room route for /ws")
    assert router.choose("/chat", "a/b") == Response(
        400, "Bad room name: a room name cannot contain '/'"
    )
    assert router.choose("/chat", "x" * 257) == Response(
        400, "Bad room name: a room name must be 1 to 256 characters long"
    )
    # A pair: that room of that route, whatever the path.
    assert router.choose("/ws", ("/game", "y")) == RoomTarget("G", RoomId("/game", "y"))
    assert router.choose("/ws", ("/game/", "")) == RoomTarget("G", RoomId("/game", "hall"))
    assert router.choose("/ws", ("/game", "\x00")) == Response(
        400, "Bad room name: a room name must be printable characters (no control characters)"
    )
    assert Router("R").choose("/a/b", ("/", "y")) == RoomTarget("R", RoomId("", "y"))
    assert Router("R").choose("/a/b", ("", "y")) == RoomTarget("R", RoomId("", "y"))


def test_a_choice_that_is_no_choice_is_the_hooks_error() -> None:
    router = Router({"/chat": "C"})
    with pytest.raises(ValueError) as raised:
        router.choose("/chat", ("/game", "y"))
    assert str(raised.value) == "a route hook chose the prefix '/game', which no route has"
    for bad in (42, ("/chat",), ("/chat", "y", "z"), ("/chat", 1), (b"/chat", "y"), ["/chat", "y"]):
        with pytest.raises(TypeError) as wrong:
            router.choose("/chat", bad)
        assert str(wrong.value) == (
            "a route hook returns a room name, a (prefix, name) pair, a Reject or None, "
            f"not {bad!r}"
        )


def test_path_room_is_the_name_the_path_reaches_or_nothing() -> None:
    router = Router({"/chat": "C"})
    assert [router.path_room(p) for p in ("/chat/x", "/chat", "/ws", "/chat/a%2Fb")] == [
        "x",
        "default",
        "",
        "",
    ]


def test_check_origin_refuses_only_origins_not_allowed() -> None:
    router = Router("R", allowed_origins=["https://app.example"])
    foreign = RequestHead("GET", "/x", {**head("/x").headers, "origin": "https://evil.example"})
    assert router.check_origin(foreign) == Response(403, "Origin not allowed")
    assert router.check_origin(head("/x")) is None  # no Origin: not a browser
    assert Router("R").check_origin(foreign) is None


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("/" + "x" * 257, "1 to 256 characters"),
        ("/a%2Fb", "cannot contain '/'"),
        ("/a%00b", "printable"),
        ("/tab%09", "printable"),
        ("/%FF", "not valid UTF-8"),
    ],
)
def test_bad_room_names_get_400(target: str, problem: str) -> None:
    response = Router("R").route(head(target))
    assert isinstance(response, Response) and response.status == 400
    assert problem in response.body


def test_longest_room_name_is_accepted() -> None:
    assert Router("R").route(head("/" + "é" * 256)) == RoomTarget("R", RoomId("", "é" * 256))


def test_plain_http_gets_healthz_or_426() -> None:
    router = Router("R")
    assert router.route(head("/healthz", websocket=False)) == Response(200, "ok")
    response = router.route(head("/general", websocket=False))
    assert response == Response(426, "Expected websocket", (("upgrade", "websocket"),))
    other = router.route(head("/healthz", websocket=False, method="POST"))
    assert isinstance(other, Response) and other.status == 426
    assert router.route(head("/healthz", websocket=False, method="HEAD")) == Response(200, "ok")


def test_a_plain_request_reaches_a_room_that_answers_http() -> None:
    router = Router({"/api": "A", "/ws": "W"}, answers=lambda route: route == "A")
    for method in ("GET", "HEAD", "POST", "PUT", "DELETE"):
        plain = head("/api/x?q=1", websocket=False, method=method)
        assert router.route(plain) == RoomTarget("A", RoomId("/api", "x"))
    assert router.route(head("/api", websocket=False)) == RoomTarget("A", RoomId("/api", "default"))
    upgrade_required = Response(426, "Expected websocket", (("upgrade", "websocket"),))
    assert router.route(head("/ws/x", websocket=False, method="POST")) == upgrade_required
    # A path that reaches no room (no route, a bad name) gets 426 as before.
    assert router.route(head("/nope/x", websocket=False, method="POST")) == upgrade_required
    assert router.route(head("/api/a/b", websocket=False, method="POST")) == upgrade_required
    # Without answers=, no route answers HTTP.
    assert Router("A").route(head("/x", websocket=False, method="POST")) == upgrade_required


def test_pages_come_before_rooms_for_get_and_head_only() -> None:
    page = Response(200, "js")
    router = Router(
        "R", files={"/roomkit.js": page, "/metrics": lambda: Response(200, "m")}, answers=bool
    )
    for path, answer in (
        ("/roomkit.js", page),
        ("/metrics", Response(200, "m")),
        ("/healthz", Response(200, "ok")),
    ):
        for method in ("GET", "HEAD"):
            assert router.route(head(path, websocket=False, method=method)) == answer
        room = RoomTarget("R", RoomId("", path[1:]))
        assert router.route(head(path, websocket=False, method="POST")) == room
    assert router.page(head("/roomkit.js", websocket=False, method="PUT")) is None
    assert router.page(head("/other", websocket=False)) is None


def test_the_origin_check_applies_to_plain_requests_with_an_origin() -> None:
    router = Router("R", allowed_origins=["https://ok.example"], answers=bool)
    plain = head("/x", websocket=False, method="POST")
    assert router.route(plain) == RoomTarget("R", RoomId("", "x"))
    ok = RequestHead("POST", "/x", {"origin": "https://ok.example"})
    assert router.route(ok) == RoomTarget("R", RoomId("", "x"))
    bad = RequestHead("POST", "/x", {"origin": "https://evil.example"})
    assert router.route(bad) == Response(403, "Origin not allowed")
    # Pages are the server's, whatever the origin.
    assert router.route(
        RequestHead("GET", "/healthz", {"origin": "https://evil.example"})
    ) == Response(200, "ok")


def test_answering_refuses_a_route_that_does_not_answer() -> None:
    router = Router({"/a": "A", "/b": "B"}, answers=lambda route: route == "A")
    assert router.answers_http
    assert not Router({"/b": "B"}, answers=lambda route: route == "A").answers_http
    assert not Router("A").answers_http
    a, b = RoomTarget("A", RoomId("/a", "x")), RoomTarget("B", RoomId("/b", "x"))
    assert router.answering(a) == a
    assert router.answering(b) == Response(426, "Expected websocket", (("upgrade", "websocket"),))


# Response: the public one.


def test_response_infers_its_content_type_and_encodes_json() -> None:
    text = Response(200, "héllo")
    assert text.to_bytes() == (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 6\r\n"
        b"connection: close\r\nx-content-type-options: nosniff\r\n\r\nh\xc3\xa9llo"
    )
    assert text.text == "héllo"
    raw = Response(201, b"\x00\x01", {"x-a": "1"})
    assert raw.to_bytes() == (
        b"HTTP/1.1 201 Created\r\ncontent-type: application/octet-stream\r\n"
        b"content-length: 2\r\nconnection: close\r\nx-content-type-options: nosniff\r\n"
        b"x-a: 1\r\n\r\n\x00\x01"
    )
    assert raw.headers == (("x-a", "1"),)
    value = {"a": [1, 2], "b": "é"}
    as_json = Response(200, value)
    assert as_json.to_bytes().endswith(
        b"content-type: application/json\r\ncontent-length: 24\r\nconnection: close\r\n"
        b'x-content-type-options: nosniff\r\n\r\n{"a":[1,2],"b":"\\u00e9"}'
    )
    assert as_json.json() is value
    assert as_json.text == '{"a":[1,2],"b":"\\u00e9"}'
    assert Response(200, None).to_bytes().endswith(b"\r\n\r\nnull")
    assert Response(200, "[1]").json() == [1] and Response(200, b"[2]").json() == [2]
    assert Response(200, b"\xff").text == "\ufffd"
    given = Response(200, "<p>", content_type="text/html")
    assert b"content-type: text/html\r\n" in given.to_bytes()


def test_a_head_answer_has_no_body_but_its_length() -> None:
    response = Response(200, "hello")
    assert response.to_bytes(body=False) == response.to_bytes()[: -len(b"hello")]
    assert b"content-length: 5\r\n" in response.to_bytes(body=False)


def test_positional_responses_keep_working() -> None:
    response = Response(426, "Expected websocket", (("upgrade", "websocket"),))
    assert (response.status, response.body, response.headers) == (
        426,
        "Expected websocket",
        (("upgrade", "websocket"),),
    )
    assert Response(200, b"x", (), "text/javascript").content_type == "text/javascript"


@pytest.mark.parametrize(
    "headers",
    [
        {"x-a": "1\r\nset-cookie: evil=1"},
        {"x-a": "1\n"},
        {"x a": "1"},
        {"": "1"},
        {"x-a:": "1"},
        {"x-a": "caf\u00e9"},
        {"content-length": "3"},
        {"Connection": "keep-alive"},
        {"transfer-encoding": "chunked"},
        {"content-type": "text/html"},
        [("x-a", "1", "2")],
        [("x-a", 1)],
    ],
)
def test_response_refuses_headers_that_could_split_or_reframe_it(headers: object) -> None:
    with pytest.raises(ValueError):
        Response(200, "x", headers)  # type: ignore[arg-type]


def test_response_refuses_bad_statuses_types_and_bodies() -> None:
    for status in (99, 101, 199, 1000, True, "200"):
        with pytest.raises(ValueError):
            Response(status, "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Response(200, "x", content_type="text/plain\r\nx-a: 1")
    with pytest.raises(TypeError):
        Response(200, {"a": object()})
    with pytest.raises(ValueError):
        Response(200, float("nan"))
    assert Response(200, "x", [("x-a", "\tb c")]).headers == (("x-a", "\tb c"),)


# The body of a plain request.

POST = b"POST /x HTTP/1.1\r\nhost: h\r\n"


def test_a_body_by_content_length_arrives_in_pieces() -> None:
    reader = BodyReader(POST + b"content-length: 5\r\n\r\n", b"he", 5)
    assert (reader.result, reader.interim) == (None, b"")
    assert reader.feed(b"l") is None
    assert reader.feed(b"loEXTRA") == b"hello"
    assert reader.feed(b"more") == b"hello"  # past the end: nothing changes


def test_a_body_that_came_with_the_head_is_whole_at_once() -> None:
    reader = BodyReader(POST + b"content-length: 2\r\n\r\n", b"hi", 2)
    assert reader.result == b"hi"
    assert BodyReader(b"GET /x HTTP/1.1\r\nhost: h\r\n\r\n", b"", 0).result == b""


def test_a_body_over_the_limit_by_its_length_is_refused_at_once() -> None:
    reader = BodyReader(POST + b"content-length: 6\r\nexpect: 100-continue\r\n\r\n", b"", 5)
    assert reader.result == Response(413, "Request body too large: at most 5 bytes")
    assert reader.interim == b""  # no 100 Continue for a body refused


def test_a_chunked_body_is_refused_as_it_passes_the_limit() -> None:
    reader = BodyReader(POST + b"transfer-encoding: chunked\r\n\r\n", b"3\r\nabc\r\n", 5)
    assert reader.result is None
    assert reader.feed(b"2\r\nde\r\n") is None  # exactly the limit
    assert reader.feed(b"1\r\nf\r\n") == Response(413, "Request body too large: at most 5 bytes")
    whole = BodyReader(POST + b"transfer-encoding: chunked\r\n\r\n", b"3\r\nabc\r\n", 5)
    assert whole.feed(b"2\r\nde\r\n0\r\n\r\n") == b"abcde"


def test_expect_100_continue_gets_an_interim_answer() -> None:
    reader = BodyReader(POST + b"content-length: 2\r\nexpect: 100-continue\r\n\r\n", b"", 5)
    assert reader.interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert reader.feed(b"ok") == b"ok"
    sent = BodyReader(POST + b"content-length: 2\r\nexpect: 100-continue\r\n\r\n", b"ok", 5)
    assert (sent.result, sent.interim) == (b"ok", b"")  # the body came anyway


def test_a_body_cut_short_or_badly_framed_is_a_bad_request() -> None:
    reader = BodyReader(POST + b"content-length: 5\r\n\r\n", b"he", 5)
    answer = reader.feed(b"")
    assert isinstance(answer, Response) and answer.status == 400
    chunks = BodyReader(POST + b"transfer-encoding: chunked\r\n\r\n", b"zz\r\n", 5)
    assert isinstance(chunks.result, Response) and chunks.result.status == 400
    both = POST + b"content-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"
    smuggled = BodyReader(both, b"3\r\nabc\r\n0\r\n\r\n", 5)  # framed two ways: refused
    assert smuggled.result == Response(
        400, "Bad request: both Content-Length and Transfer-Encoding"
    )


class Hello(roomkit.Room):
    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        conn.send(f"{request.path}|{request.room}|{dict(request.query)}")


async def test_healthz_and_426_over_tcp(start: Start) -> None:
    server = await start(Hello)
    status, headers, body = await http(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, body) == (200, b"ok")
    assert headers["content-type"] == "text/plain; charset=utf-8"
    status, headers, body = await http(server.port, b"GET /room HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, body, headers["upgrade"]) == (426, b"Expected websocket", "websocket")
    assert server.room_count == 0


async def test_bad_room_name_is_refused_before_any_room_exists(start: Start) -> None:
    server = await start(Hello)
    request = b"GET /a%2Fb HTTP/1.1\r\nHost: x\r\n" + UPGRADE + b"\r\n"
    status, _, body = await http(server.port, request)
    assert status == 400 and b"cannot contain '/'" in body
    with pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with open_client(f"{server.url}/%FF"):
            pass
    assert info.value.status_code == 400
    assert server.room_count == 0


@pytest.mark.parametrize(
    ("headers", "status", "problem"),
    [
        (b"Connection: Upgrade\r\nUpgrade: websocket\r\n", 426, b"Sec-WebSocket-Version ''"),
        (UPGRADE.replace(b"13", b"8"), 426, b"unsupported Sec-WebSocket-Version '8'"),
        (UPGRADE.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"short"), 400, b"Sec-WebSocket-Key"),
        (UPGRADE.replace(b"Connection: Upgrade", b"Connection: keep-alive"), 400, b"'upgrade'"),
    ],
)
async def test_bad_handshakes_are_refused(
    start: Start, headers: bytes, status: int, problem: bytes
) -> None:
    server = await start(Hello)
    request = b"GET /r HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\n" + headers + b"\r\n"
    got, response_headers, body = await http(server.port, request)
    assert got == status and body.startswith(b"Bad WebSocket handshake") and problem in body
    if status == 426:
        assert response_headers["sec-websocket-version"] == "13"
    assert server.room_count == 0


def test_handshake_response_follows_rfc_6455() -> None:
    # The example of RFC 6455 section 1.3.
    parsed = parse_head(b"GET /r HTTP/1.1\r\nHost: x\r\n" + UPGRADE + b"\r\n")
    assert isinstance(parsed, RequestHead)
    accepted = handshake_response(parsed)
    assert isinstance(accepted, bytes)
    assert accepted.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in accepted


@pytest.mark.parametrize(
    ("protocols", "accepted"),
    [
        ("chat", True),
        ("chat, v2.json ,x-1", True),
        ("chat,,v2", True),  # empty list elements are ignored (RFC 7230 section 7)
        ("café", False),
        ("chat v2", False),
        ("chat;v2", False),
        ('"chat"', False),
        ("", False),
        (" , ", False),
    ],
)
def test_subprotocols_must_be_a_list_of_tokens(protocols: str, accepted: bool) -> None:
    parsed = parse_head(b"GET /r HTTP/1.1\r\nHost: x\r\n" + UPGRADE + b"\r\n")
    assert isinstance(parsed, RequestHead)
    offered = RequestHead("GET", "/r", {**parsed.headers, "sec-websocket-protocol": protocols})
    answer = handshake_response(offered)
    if accepted:
        assert isinstance(answer, bytes) and answer.startswith(b"HTTP/1.1 101 ")
    else:
        assert isinstance(answer, Response) and answer.status == 400
        assert "Sec-WebSocket-Protocol" in str(answer.body)


async def test_a_subprotocol_that_is_not_a_token_is_400_over_tcp(start: Start) -> None:
    server = await start(Hello)
    protocol = "Sec-WebSocket-Protocol: café\r\n".encode()  # UTF-8 bytes on the wire
    request = b"GET /r HTTP/1.1\r\nHost: x\r\n" + UPGRADE + protocol + b"\r\n"
    status, _, body = await http(server.port, request)
    assert status == 400 and b"Sec-WebSocket-Protocol is not a list of tokens" in body
    assert server.room_count == 0


async def test_oversized_head_is_431(start: Start) -> None:
    server = await start(Hello)
    request = b"GET /r HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    status, _, _ = await http(server.port, request)
    assert status == 431


async def test_request_reaches_the_room(start: Start) -> None:
    server = await start({"/chat": Hello})
    async with open_client(f"{server.url}/chat/caf%C3%A9?x=1&y=2") as ws:
        with trio.fail_after(5):
            assert await ws.get_message() == "/chat/caf%C3%A9|café|{'x': '1', 'y': '2'}"


async def test_handshake_that_never_finishes_is_dropped(
    start: Start, autojump_clock: trio.testing.MockClock
) -> None:
    server = await start(Hello, handshake_timeout=3)
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        await stream.send_all(b"GET /r HTTP/1.1\r\nHost: x\r\n")  # ...and nothing more
        before = trio.current_time()
        assert await stream.receive_some() == b""
        assert trio.current_time() - before == 3
    async with open_client(f"{server.url}/r") as ws:  # the server is still serving
        with trio.fail_after(5):
            assert (await ws.get_message()).startswith("/r|r|")


class Refuser(roomkit.Room):
    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        if request.headers.get("authorization") != "Bearer good":
            raise roomkit.Reject(401, "Who are you?")
        if request.query.get("fail"):
            raise RuntimeError("on_connect broke")
        if request.query.get("forbid"):
            raise roomkit.Reject()


async def test_reject_answers_with_its_status_and_reason(start: Start) -> None:
    server = await start(Refuser)
    with pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with open_client(f"{server.url}/r"):
            pass
    assert (info.value.status_code, info.value.body) == (401, b"Who are you?")
    auth = b"Authorization: Bearer good\r\n"
    for query, status in ((b"forbid=1", 403), (b"fail=1", 500)):
        raw = b"GET /r?" + query + b" HTTP/1.1\r\nHost: x\r\n" + auth + UPGRADE + b"\r\n"
        assert (await http(server.port, raw))[0] == status
    await trio.testing.wait_all_tasks_blocked()
    assert server.room_count == 0


def test_reject_status_must_be_an_error() -> None:
    with pytest.raises(ValueError, match="400-599"):
        roomkit.Reject(200)
    for status in (403.0, True, "403"):
        with pytest.raises(TypeError, match="status must be an int"):
            roomkit.Reject(status)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="reason must be a str"):
        roomkit.Reject(403, b"no")  # type: ignore[arg-type]


def test_a_status_http_does_not_name_gets_its_class_phrase() -> None:
    assert Response(499, "").to_bytes().startswith(b"HTTP/1.1 499 Client Error\r\n")
    assert Response(599, "").to_bytes().startswith(b"HTTP/1.1 599 Server Error\r\n")
    assert Response(418, "").to_bytes().startswith(b"HTTP/1.1 418 I'm a Teapot\r\n")
    assert Response(503, "").to_bytes().startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert Response(799, "").to_bytes().startswith(b"HTTP/1.1 799 Unknown\r\n")


async def test_every_status_reject_accepts_is_answered(start: Start) -> None:
    server = await start(Picky)
    for status in range(400, 600):
        raw = b"GET /r?status=%d HTTP/1.1\r\nHost: x\r\n" % status + UPGRADE + b"\r\n"
        got, _, body = await http(server.port, raw)
        assert (got, body) == (status, b"go away")
    async with open_client(f"{server.url}/r") as ws:  # the server is still serving
        await ws.send_message("still here")
        with trio.fail_after(5):
            assert await ws.get_message() == "still here"


async def test_static_files_and_nothing_else(start: Start) -> None:
    server = await start(Hello, demo_page=True)
    for path, kind, marker in (
        (b"/roomkit.js", "text/javascript; charset=utf-8", b"export class RoomSocket"),
        (b"/", "text/html; charset=utf-8", b"<title>roomkit chat</title>"),
        (b"/chat.js", "text/javascript; charset=utf-8", b'from "/roomkit.js"'),
    ):
        request = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        status, headers, body = await http(server.port, request)
        assert (status, headers["content-type"]) == (200, kind) and marker in body
    for path in (b"/../pyproject.toml", b"/static/roomkit.js", b"/%2e%2e/_server.py", b"/py.typed"):
        status, _, _ = await http(server.port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 426


async def test_the_demo_page_is_off_by_default(start: Start) -> None:
    server = await start(Hello)
    assert (await http(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))[0] == 426
    assert (await http(server.port, b"GET /roomkit.js HTTP/1.1\r\nHost: x\r\n\r\n"))[0] == 200


async def test_a_failure_of_the_front_door_ends_that_connection_only(
    start: Start, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(head: RequestHead) -> bytes | Response:
        if head.path == "/doomed":
            raise RuntimeError("a bug in the front door")
        return handshake_response(head)

    monkeypatch.setattr(roomkit._gateway, "handshake_response", broken)
    server = await start(Hello, metrics=True)
    raw = b"GET /doomed HTTP/1.1\r\nHost: x\r\n" + UPGRADE + b"\r\n"
    status, _, body = await http(server.port, raw)
    assert (status, body) == (500, b"Internal error")
    [failed] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert (failed.name, failed.getMessage()) == (
        "roomkit.server",
        f"front door: serving {failed.remote} failed",
    )
    assert failed.remote.startswith("127.0.0.1:")
    assert failed.exc_info is not None and str(failed.exc_info[1]) == "a bug in the front door"
    async with open_client(f"{server.url}/fine") as ws:  # the server is still serving
        with trio.fail_after(5):
            assert (await ws.get_message()).startswith("/fine|fine|")
    _, _, page = await http(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b'roomkit_handshakes_refused_total{reason="internal_error"} 1.0' in page


def test_room_names_are_put_in_nfc() -> None:
    router = Router("R")
    nfc = RoomTarget("R", RoomId("", "caf\u00e9"))
    assert router.route(head("/caf%C3%A9")) == nfc
    assert router.route(head("/cafe%CC%81")) == nfc  # "e" and a combining acute accent
    assert room_name("%E2%84%AB") == "\u00c5"  # the Angstrom sign: its NFC is Å
    assert room_name("a" * 256 + "%CC%81") == "a" * 255 + "\u00e1"  # 257 decoded, 256 in NFC


class Together(roomkit.Room):
    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        self.broadcast(f"{request.room} joined as {request.path}")


async def test_one_name_in_two_unicode_forms_is_one_room(start: Start) -> None:
    server = await start(Together)
    async with open_client(f"{server.url}/caf%C3%A9") as nfc:
        with trio.fail_after(5):
            assert await nfc.get_message() == "caf\u00e9 joined as /caf%C3%A9"
        async with open_client(f"{server.url}/cafe%CC%81"):
            with trio.fail_after(5):
                assert await nfc.get_message() == "caf\u00e9 joined as /cafe%CC%81"
            assert server.room_count == 1


async def test_every_plain_response_forbids_sniffing(start: Start) -> None:
    server = await start({"/chat": Picky}, metrics=True)
    websocket = b"Host: x\r\n" + UPGRADE + b"\r\n"
    for request in (
        b"GET /chat/%3Cscript%3E/x HTTP/1.1\r\n" + websocket,  # 404, echoing the path
        b"GET /chat/%FF HTTP/1.1\r\n" + websocket,  # 400
        b"GET /chat/r?status=451 HTTP/1.1\r\n" + websocket,  # the room's Reject
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /roomkit.js HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /chat/r HTTP/1.1\r\nHost: x\r\n\r\n",  # 426
        b"not http\r\n\r\n",  # 400
    ):
        status, headers, _ = await http(server.port, request)
        assert headers["x-content-type-options"] == "nosniff", (status, request)


# Exact answers of the pure parts: what a client reads, byte for byte.


def test_a_response_is_written_exactly() -> None:
    response = Response(404, "No room route for /x", (("x-extra", "1"),))
    assert response.to_bytes() == (
        b"HTTP/1.1 404 Not Found\r\n"
        b"content-type: text/plain; charset=utf-8\r\n"
        b"content-length: 20\r\n"
        b"connection: close\r\n"
        b"x-content-type-options: nosniff\r\n"
        b"x-extra: 1\r\n"
        b"\r\n"
        b"No room route for /x"
    )
    body = Response(200, "caf\xe9").to_bytes()  # a str body goes out as UTF-8
    assert b"\r\ncontent-length: 5\r\n" in body and body.endswith(b"\r\n\r\ncaf\xc3\xa9")


def test_a_head_cut_short_is_400_incomplete() -> None:
    assert parse_head(b"GET /r HTTP/1.1\r\nHost: x\r\n") == Response(
        400, "Bad request: incomplete request head"
    )


def upgrade(**changes: str | None) -> RequestHead:
    headers = {
        "host": "example",
        "connection": "Upgrade",
        "upgrade": "websocket",
        "sec-websocket-version": "13",
        "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    for name, value in changes.items():
        name = name.replace("_", "-")
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    return RequestHead("GET", "/r", headers)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"sec_websocket_version": "8"},
            Response(
                426,
                "Bad WebSocket handshake: unsupported Sec-WebSocket-Version '8'",
                (("sec-websocket-version", "13"),),
            ),
        ),
        (
            {"connection": None},
            Response(400, "Bad WebSocket handshake: Connection header lacks 'upgrade'"),
        ),
        (
            {"connection": "keep-alive upgrade"},
            Response(400, "Bad WebSocket handshake: Connection header lacks 'upgrade'"),
        ),
        (
            {"sec_websocket_key": None},
            Response(400, "Bad WebSocket handshake: missing or malformed Sec-WebSocket-Key"),
        ),
        (
            {"sec_websocket_key": "c2hvcnQ="},  # valid base64, but not 16 bytes
            Response(400, "Bad WebSocket handshake: missing or malformed Sec-WebSocket-Key"),
        ),
        (
            {"sec_websocket_protocol": "a b"},
            Response(
                400, "Bad WebSocket handshake: Sec-WebSocket-Protocol is not a list of tokens"
            ),
        ),
    ],
)
def test_each_bad_handshake_gets_its_exact_answer(
    changes: dict[str, str | None], expected: Response
) -> None:
    assert handshake_response(upgrade(**changes)) == expected


def test_upgrade_may_be_one_connection_token_of_several() -> None:
    answer = handshake_response(upgrade(connection="keep-alive, Upgrade"))
    assert answer == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    )


def test_list_elements_strip_only_spaces_and_tabs() -> None:
    assert list_elements(" a,\tb ,, c\t") == ["a", "b", "c"]
    assert list_elements("a\n, b") == ["a\n", "b"]  # not a list separator: a bad token
    assert list_elements("X, aX") == ["X", "aX"]


@pytest.mark.parametrize(
    ("segment", "problem"),
    [
        ("%FF", "the room name is not valid UTF-8"),
        ("", "a room name must be 1 to 256 characters long"),
        ("a%2Fb", "a room name cannot contain '/'"),
        ("a%00b", "a room name must be printable characters (no control characters)"),
    ],
)
def test_each_bad_room_name_gets_its_exact_answer(segment: str, problem: str) -> None:
    assert room_name(segment) == Response(400, f"Bad room name: {problem}")


def test_a_prefix_with_a_trailing_slash_is_the_same_route() -> None:
    assert Router({"/chat/": "C"}).route(head("/chat/x")) == RoomTarget("C", RoomId("/chat", "x"))
    assert Router({"/X/": "C"}).route(head("/X/x")) == RoomTarget("C", RoomId("/X", "x"))


def test_origins_compare_without_case_or_trailing_slashes() -> None:
    router = Router("R", allowed_origins=["https://App.example/"])
    allowed = RoomTarget("R", RoomId("", "x"))
    for origin in ("https://app.example", "https://APP.example/", " https://app.example// "):
        asked = RequestHead("GET", "/x", {**head("/x").headers, "origin": origin})
        assert router.route(asked) == allowed
    asked = RequestHead("GET", "/x", {**head("/x").headers, "origin": "/https://app.example"})
    assert router.route(asked) == Response(403, "Origin not allowed")


def test_allowed_origins_must_not_be_one_string() -> None:
    with pytest.raises(TypeError) as raised:
        Router("R", allowed_origins="https://app.example")
    assert str(raised.value) == "allowed_origins is an iterable of origins, not a single string"


def test_common_header_names_and_values_are_shared_by_every_head() -> None:
    """A connection keeps its request's headers: the usual ones cost it no strings."""
    raw = (
        b"GET /r HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nX-Custom: caf\xe9\r\n\r\n"
    )
    first, second = parse_head(raw), parse_head(raw)
    assert isinstance(first, RequestHead) and isinstance(second, RequestHead)
    assert first.headers == {
        "host": "example",
        "upgrade": "websocket",
        "connection": "Upgrade",
        "sec-websocket-version": "13",
        "x-custom": "café",  # the rest decoded as before, as Latin-1
    }
    names = dict(zip(first.headers, second.headers, strict=True))
    assert [name for name, other in names.items() if name is not other] == ["x-custom"]
    values = zip(first.headers.values(), second.headers.values(), strict=True)
    assert [value for value, other in values if value is not other] == ["example", "café"]
