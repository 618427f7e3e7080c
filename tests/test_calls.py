"""The pure codec and wire of calls into rooms (``roomkit/_core/calls.py``): exact bytes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from typing import Any

import attrs
import pytest

import roomkit
from roomkit._core.calls import (
    Answer,
    AnswerReader,
    Failed,
    MethodCodec,
    Returned,
    call_auth,
    call_head,
    call_path,
    call_signature,
    call_timeout,
    encode_error,
    parse_answer,
    refused_unrun,
    rpc_function,
    verify_call,
)
from roomkit._core.clusterauth import MAX_SKEW
from roomkit._core.frontdoor import CONTINUE, Response
from roomkit.storage import RoomId


@attrs.frozen
class Point:
    x: int
    y_value: int


CAMEL = roomkit.Protocol(Point, Point, field_names="camelCase")


class Shapes(roomkit.Room):
    @roomkit.rpc
    async def move(self, point: Point, by: int = 1, *rest: int, label: str, **more: float) -> Point:
        return point

    @roomkit.rpc
    async def plain(self, value, other: Any = None):  # type: ignore[no-untyped-def]
        return value

    async def hidden(self) -> None: ...


def codec(name: str, protocol: roomkit.Protocol | None = None) -> MethodCodec:
    function = rpc_function(Shapes, name)
    assert function is not None
    return MethodCodec.of(function, protocol)


A, B = RoomId("/chat", "a"), RoomId("", "b é")


def test_only_rpc_methods_are_found() -> None:
    assert rpc_function(Shapes, "move") is Shapes.move
    assert rpc_function(Shapes, "hidden") is None
    assert rpc_function(Shapes, "on_message") is None
    assert rpc_function(Shapes, "missing") is None
    assert rpc_function(Shapes, "__init__") is None


def test_arguments_are_bound_and_encoded_by_their_annotations() -> None:
    body = codec("move").encode_arguments((Point(1, 2), 3, 4, 5), {"label": "é", "z": 2}, (A, B))
    assert (
        body
        == (
            '{"args":[{"x":1,"y_value":2},3,4,5],"kwargs":{"label":"é","z":2},'
            '"chain":[["/chat","a"],["","b é"]]}'
        ).encode()
    )
    camel = codec("move", CAMEL).encode_arguments((Point(1, 2),), {"label": "l"}, ())
    assert camel == b'{"args":[{"x":1,"yValue":2}],"kwargs":{"label":"l"},"chain":[]}'
    by_name = codec("move").encode_arguments((), {"point": Point(0, 0), "label": "l"}, ())
    assert by_name == b'{"args":[{"x":0,"y_value":0}],"kwargs":{"label":"l"},"chain":[]}'


def test_arguments_that_do_not_bind_or_encode_are_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"^move\(\): missing a required argument: 'point'$"):
        codec("move").encode_arguments((), {"label": "l"}, ())
    with pytest.raises(TypeError, match=r"^plain\(\): an argument cannot be encoded as JSON"):
        codec("plain").encode_arguments((object(),), {}, ())
    with pytest.raises(TypeError, match="as JSON"):
        codec("plain").encode_arguments((float("nan"),), {}, ())


def test_the_room_decodes_what_the_caller_encoded() -> None:
    move = codec("move", CAMEL)
    body = move.encode_arguments((Point(1, 2), 3, 4), {"label": "l", "z": 1.5}, (A,))
    assert move.decode_arguments(body, 1000) == (
        (Point(1, 2), 3, 4),
        {"label": "l", "z": 1.5},
        (A,),
    )
    plain = codec("plain")
    assert plain.decode_arguments(plain.encode_arguments(([1, {"a": None}],), {}, ()), 99) == (
        ([1, {"a": None}],),
        {},
        (),
    )


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{", "the call's body is not JSON"),
        (b"\xff", "the call's body is not JSON"),
        (b"[]", 'the call\'s body is no {"args", "kwargs", "chain"} object'),
        (b'{"args":[],"kwargs":{}}', 'the call\'s body is no {"args", "kwargs", "chain"} object'),
        (b'{"args":{},"kwargs":{},"chain":[]}', "the call's args must be an array"),
        (b'{"args":[],"kwargs":[],"chain":[]}', "the call's args must be an array"),
        (b'{"args":[],"kwargs":{},"chain":[["a"]]}', "the call's chain must be an array"),
        (b'{"args":[],"kwargs":{},"chain":[[1,"a"]]}', "the call's chain must be an array"),
        (b'{"args":[],"kwargs":{},"chain":{}}', "the call's chain must be an array"),
    ],
)
def test_a_body_that_is_no_call_is_a_value_error(body: bytes, error: str) -> None:
    with pytest.raises(ValueError, match="^" + error.replace("{", r"\{").replace("[", r"\[")):
        codec("plain").decode_arguments(body, 1000)


def test_a_body_over_the_limit_is_a_value_error() -> None:
    body = codec("plain").encode_arguments(("x" * 10,), {}, ())
    assert len(body) == 46
    assert codec("plain").decode_arguments(body, 46)[0] == ("x" * 10,)
    with pytest.raises(ValueError, match=r"^the call's body is 46 bytes, over the room's 45$"):
        codec("plain").decode_arguments(body, 45)


def test_arguments_that_do_not_structure_are_a_type_error() -> None:
    move = codec("move")
    with pytest.raises(TypeError, match=r"^move\(\): missing a required argument: 'label'$"):
        move.decode_arguments(b'{"args":[{"x":1,"y_value":2}],"kwargs":{},"chain":[]}', 999)
    bad_point = b'{"args":[{"x":"1","y_value":2}],"kwargs":{"label":"l"},"chain":[]}'
    with pytest.raises(TypeError, match=r"^move\(\): argument 'point' is no Point: "):
        move.decode_arguments(bad_point, 999)
    bad_rest = b'{"args":[{"x":1,"y_value":2},1,true],"kwargs":{"label":"l"},"chain":[]}'
    with pytest.raises(
        TypeError, match=r"^move\(\): argument 'rest' is no int: must be an integer"
    ):
        move.decode_arguments(bad_rest, 999)
    bad_more = b'{"args":[{"x":1,"y_value":2}],"kwargs":{"label":"l","w":"1"},"chain":[]}'
    with pytest.raises(TypeError, match=r"^move\(\): argument 'w' is no float: must be a number"):
        move.decode_arguments(bad_more, 999)


def test_results_go_by_the_return_annotation() -> None:
    move = codec("move", CAMEL)
    assert move.encode_result(Point(3, 4), 29) == b'{"result":{"x":3,"yValue":4}}'
    assert parse_answer(b'{"result":{"x":3,"yValue":4}}') == Returned({"x": 3, "yValue": 4})
    assert move.decode_result({"x": 3, "yValue": 4}) == Point(3, 4)
    with pytest.raises(TypeError, match=r"^move\(\): the result is no Point: "):
        move.decode_result({"x": 3})
    assert codec("plain").encode_result([1, "é"], 999) == '{"result":[1,"é"]}'.encode()
    assert codec("plain").decode_result({"any": [1]}) == {"any": [1]}
    with pytest.raises(TypeError, match=r"^plain\(\): the result cannot be encoded as JSON"):
        codec("plain").encode_result({1j}, 999)
    with pytest.raises(ValueError) as over:
        move.encode_result(Point(3, 4), 28)
    assert str(over.value) == (
        "move(): the result is 29 bytes encoded, over the room's max_request_size (28)"
    )


def test_error_answers() -> None:
    body = encode_error("timeout", "RoomCallTimeout", "late", None)
    assert body == (
        b'{"error":{"kind":"timeout","type":"RoomCallTimeout","message":"late","ran":null}}'
    )
    assert parse_answer(body) == Failed("timeout", "RoomCallTimeout", "late", None)
    assert parse_answer(encode_error("cycle", "RoomCallCycle", "a", False)).ran is False
    assert parse_answer(encode_error("error", "ValueError", "b", True)).ran is True


@pytest.mark.parametrize(
    "body",
    [
        b"nope",
        b"[]",
        b'{"result":1,"error":{}}',
        b'{"error":{"kind":"oops","type":"T","message":"m","ran":null}}',
        b'{"error":{"kind":"error","type":1,"message":"m","ran":null}}',
        b'{"error":{"kind":"error","type":"T","message":"m","ran":0}}',
        b'{"error":{"kind":"error","type":"T","message":"m"}}',
        b'{"error":"boom"}',
    ],
)
def test_a_body_that_is_no_answer_is_a_value_error(body: bytes) -> None:
    with pytest.raises(ValueError, match=r"^the call's answer is "):
        parse_answer(body)


def test_the_request_head_of_a_call_between_processes() -> None:
    assert call_path(RoomId("/chat", "a b/é")) == "/chat/a%20b%2F%C3%A9"
    assert call_path(RoomId("", "lobby")) == "/lobby"
    body = b'{"args":[],"kwargs":{},"chain":[]}'
    assert call_head(RoomId("/chat", "a"), "kick", 29.8734, body) == (
        b"POST /chat/a HTTP/1.1\r\nhost: roomkit\r\nroomkit-call: kick\r\n"
        b"roomkit-call-timeout: 29.873\r\ncontent-type: application/json\r\n"
        b"content-length: 34\r\n\r\n"
    )
    signed = call_head(RoomId("", "a"), "m", None, b"", auth="t=1;sig=x")
    assert signed == (
        b"POST /a HTTP/1.1\r\nhost: roomkit\r\nroomkit-call: m\r\nroomkit-call-timeout: none\r\n"
        b"roomkit-call-auth: t=1;sig=x\r\ncontent-type: application/json\r\n"
        b"content-length: 0\r\n\r\n"
    )


def test_the_timeout_a_call_has_left() -> None:
    assert call_timeout("29.873") == 29.873
    assert call_timeout("0") == 0.0
    assert call_timeout("none") == math.inf
    for bad in (None, "", "-1", "1e3", "inf", "nan", " 1", "1.", "None"):
        assert call_timeout(bad) is None, bad


def test_an_answer_is_read_as_it_comes_an_interim_one_skipped() -> None:
    reader = AnswerReader(limit=12)
    data = CONTINUE + Response(200, b'{"result":1}', content_type="application/json").to_bytes()
    assert reader.feed(data[:30]) is None
    assert reader.feed(data[30:-3]) is None
    assert reader.feed(data[-3:]) == Answer(200, b'{"result":1}')
    assert AnswerReader(100).feed(Response(503, "busy").to_bytes()) == Answer(503, b"busy")


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "ended before a whole answer"),
        (CONTINUE, "ended before a whole answer"),
        (Response(200, "12345").to_bytes()[:-1], "ended before a whole answer|no HTTP response"),
        (Response(200, "x" * 11).to_bytes(), "passes 10 bytes"),
        (b"SSH-2.0\r\n\r\n", "no HTTP response"),
    ],
)
def test_what_is_no_whole_answer_is_refused(data: bytes, problem: str) -> None:
    reader = AnswerReader(limit=10)
    with pytest.raises(ValueError, match=problem):
        reader.feed(data)
        reader.feed(b"")


SECRET = b"s" * 32
BODY = b'{"args":[1],"kwargs":{},"chain":[]}'


def test_the_call_signature() -> None:
    sha = hashlib.sha256(BODY).hexdigest()
    sig = call_signature(SECRET, "kick", "1764600000", "/chat/a", sha)
    message = f"call|kick|1764600000|/chat/a|{sha}".encode()
    digest = hmac.new(SECRET, message, hashlib.sha256).digest()
    assert sig == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert sig == "v5kZaTZRDvsJV0m5kcH0ht-T4P1srm_5HAlQjMu9zM0"
    assert call_auth(SECRET, "kick", "/chat/a", BODY, now=1764600000.9) == f"t=1764600000;sig={sig}"


def test_a_call_signature_is_verified() -> None:
    auth = call_auth(SECRET, "kick", "/chat/a", BODY, now=1000.0)
    assert verify_call(auth, SECRET, "kick", "/chat/a", BODY, now=1000 + MAX_SKEW) is None
    assert verify_call(auth, SECRET, "kick", "/chat/a", BODY, now=1000 - MAX_SKEW) is None
    late = verify_call(auth, SECRET, "kick", "/chat/a", BODY, now=1000 + MAX_SKEW + 1)
    assert late == "roomkit-call-auth: t is more than 60 s away"
    for wrong in [
        (b"t" * 32, "kick", "/chat/a", BODY),
        (SECRET, "ban", "/chat/a", BODY),
        (SECRET, "kick", "/chat/b", BODY),
        (SECRET, "kick", "/chat/a", BODY + b" "),
    ]:
        assert verify_call(auth, *wrong, now=1000.0) == "roomkit-call-auth: bad signature"
    assert verify_call(None, SECRET, "k", "/a", b"", now=0) == "roomkit-call-auth: not signed"
    for malformed in ["t=1", "t=1;sig=x;t=2", "sig=x;x=1", "t=1;sig"]:
        assert verify_call(malformed, SECRET, "k", "/a", b"", now=1) == (
            "roomkit-call-auth: not t=...;sig=..."
        )
    for bad in ["t=x;sig=" + "a" * 43, "t=1;sig=" + "a" * 42]:
        assert verify_call(bad, SECRET, "k", "/a", b"", now=1) == (
            "roomkit-call-auth: t is no Unix time or sig no base64url HMAC-SHA256"
        )


def test_a_refusal_is_a_call_error_of_no_effect_by_its_kind_type_and_ran() -> None:
    assert refused_unrun(encode_error("error", "RoomCallError", "the room moved", False))
    assert not refused_unrun(encode_error("error", "RoomCallError", "cancelled", None))
    assert not refused_unrun(encode_error("timeout", "RoomCallTimeout", "dropped", False))
    assert not refused_unrun(encode_error("cycle", "RoomCallError", "a -> a", False))
    assert not refused_unrun(encode_error("error", "TypeError", "bad arguments", False))
    assert not refused_unrun(b'{"result":1}')
    assert not refused_unrun(b"no json")
