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
    SEEN_CAP,
    Answer,
    AnswerReader,
    Failed,
    MethodCodec,
    Returned,
    SeenCalls,
    auth_problem,
    call_auth,
    call_head,
    call_path,
    call_signature,
    call_timeout,
    encode_error,
    parse_answer,
    refused_unrun,
    rpc_function,
    timeout_value,
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


NONCE = "n" * 22


def test_the_call_signature() -> None:
    sha = hashlib.sha256(BODY).hexdigest()
    sig = call_signature(SECRET, "kick", "29.873", "1764600000", NONCE, "/chat/a", sha)
    message = f"call|kick|29.873|1764600000|{NONCE}|/chat/a|{sha}".encode()
    digest = hmac.new(SECRET, message, hashlib.sha256).digest()
    assert sig == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert sig == "FuIzj15KpLrmuZRh18F_Yj95cpTm_TZuMdd4_tkUKzk"
    auth = call_auth(SECRET, "kick", "29.873", "/chat/a", BODY, now=1764600000.9, nonce=NONCE)
    assert auth == f"t=1764600000;n={NONCE};sig={sig}"
    assert timeout_value(29.8734) == "29.873"
    assert timeout_value(-1.0) == "0.000"
    assert timeout_value(None) == timeout_value(math.inf) == "none"


def signed(now: float = 1000.0, *, nonce: str = NONCE) -> str:
    return call_auth(SECRET, "kick", "5.000", "/chat/a", BODY, now=now, nonce=nonce)


def test_a_call_signature_is_verified() -> None:
    auth = signed()
    call = ("kick", "5.000", "/chat/a", BODY)
    assert verify_call(auth, SECRET, *call, now=1000 + MAX_SKEW) is None
    assert verify_call(auth, SECRET, *call, now=1000 - MAX_SKEW) is None
    late = verify_call(auth, SECRET, *call, now=1000 + MAX_SKEW + 1)
    assert late == "roomkit-call-auth: t is more than 60 s away"
    for secret, method, timeout, target, body in [
        (b"t" * 32, "kick", "5.000", "/chat/a", BODY),
        (SECRET, "ban", "5.000", "/chat/a", BODY),
        (SECRET, "kick", "500.000", "/chat/a", BODY),  # a longer timeout: the signed one
        (SECRET, "kick", "none", "/chat/a", BODY),
        (SECRET, "kick", "5.000", "/chat/b", BODY),
        (SECRET, "kick", "5.000", "/chat/a", BODY + b" "),
    ]:
        problem = verify_call(auth, secret, method, timeout, target, body, now=1000.0)
        assert problem == "roomkit-call-auth: bad signature"
    other_nonce = auth.replace(NONCE, "m" * 22)
    assert verify_call(other_nonce, SECRET, *call, now=1000.0) == (
        "roomkit-call-auth: bad signature"
    )


def test_a_malformed_or_stale_auth_is_refused_before_anything_is_done() -> None:
    assert auth_problem(signed(), now=1000 + MAX_SKEW) is None
    assert (
        auth_problem("t=1000;n=" + NONCE + ";sig=" + "A" * 43, now=1000) is None
    )  # only its owner, with the body, can tell it is forged
    assert auth_problem(signed(), now=1000 + MAX_SKEW + 1) == (
        "roomkit-call-auth: t is more than 60 s away"
    )
    assert auth_problem(signed(), now=1000 - MAX_SKEW - 1) == (
        "roomkit-call-auth: t is more than 60 s away"
    )
    assert auth_problem(None, now=0) == "roomkit-call-auth: not signed"
    for malformed in ["t=1", "t=1;sig=x", "t=1;n=x;sig=x;t=2", "sig=x;n=y;x=1", "t=1;n;sig"]:
        assert auth_problem(malformed, now=1) == "roomkit-call-auth: not t=...;n=...;sig=..."
    for bad in [
        f"t=x;n={NONCE};sig=" + "a" * 43,
        f"t=1;n={NONCE};sig=" + "a" * 42,
        "t=1;n=short;sig=" + "a" * 43,
        f"t=1;n={NONCE[:-1]}+;sig=" + "a" * 43,
    ]:
        assert auth_problem(bad, now=1) == (
            "roomkit-call-auth: t is no Unix time, n no 22 base64url characters, or sig no "
            "base64url HMAC-SHA256"
        )
    assert verify_call(None, SECRET, "k", "none", "/a", b"", now=0) == (
        "roomkit-call-auth: not signed"
    )


def test_a_replayed_signature_is_refused_within_its_window() -> None:
    seen = SeenCalls()
    call = ("kick", "5.000", "/chat/a", BODY)
    auth = signed()
    assert verify_call(auth, SECRET, *call, now=1000.0, seen=seen) is None
    replayed = "roomkit-call-auth: replayed: this signature was used here already"
    assert verify_call(auth, SECRET, *call, now=1000.0 + MAX_SKEW, seen=seen) == replayed
    reordered = ";".join(reversed(auth.split(";")))  # the same signature, told otherwise
    assert verify_call(reordered, SECRET, *call, now=1001.0, seen=seen) == replayed
    fresh = signed(nonce="f" * 22)  # the same call signed anew: its own
    assert verify_call(fresh, SECRET, *call, now=1000.0, seen=seen) is None
    bad = auth.replace(auth[-43:], "A" * 43)
    assert verify_call(bad, SECRET, *call, now=1000.0, seen=seen) == (
        "roomkit-call-auth: bad signature"
    )
    assert len(seen) == 2  # only verified signatures are kept


def test_seen_signatures_expire_after_twice_the_skew_and_are_capped() -> None:
    seen = SeenCalls(cap=3)
    assert seen.first("a", 0.0)
    assert not seen.first("a", 2 * MAX_SKEW)  # still within the window
    assert seen.first("a", 2 * MAX_SKEW + 0.001)  # expired: a stale t is refused anyway
    assert [seen.first(sig, 200.0) for sig in "bcd"] == [True, True, True]
    assert len(seen) == 3  # "a" went, the oldest, beyond the cap
    assert seen.first("a", 200.0)
    assert not seen.first("d", 200.0)
    assert SEEN_CAP == 100_000
    assert len(SeenCalls()) == 0


def test_a_refusal_is_a_call_error_of_no_effect_by_its_kind_type_and_ran() -> None:
    assert refused_unrun(encode_error("error", "RoomCallError", "the room moved", False))
    assert not refused_unrun(encode_error("error", "RoomCallError", "cancelled", None))
    assert not refused_unrun(encode_error("timeout", "RoomCallTimeout", "dropped", False))
    assert not refused_unrun(encode_error("cycle", "RoomCallError", "a -> a", False))
    assert not refused_unrun(encode_error("error", "TypeError", "bad arguments", False))
    assert not refused_unrun(b'{"result":1}')
    assert not refused_unrun(b"no json")
