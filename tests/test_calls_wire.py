"""The caller's side of a call to a room of another process (``Calls``), over a real
socket pair, against a stand-in for the gateway that reads the request and answers as
told: what is sent (the head, signed with a secret), what each answer becomes, the
retries after 503, and a connection that ends mid-call. The whole path through real
processes is tests/test_rpc_wire.py's.

Rules: real sockets, so no ``autojump_clock``; every wait is bounded by ``fail_after``.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable

import outcome
import pytest
import trio

import roomkit
from roomkit._actor import RoomActor
from roomkit._calls import Calls
from roomkit._core.calls import Kind, call_head, encode_error, verify_call
from roomkit._core.frontdoor import Response, Router
from roomkit._room import Room
from roomkit._roomid import RoomId

SECRET = b"the secret"
ROOM = RoomId("", "far")


class Far(roomkit.Room):
    max_request_size = 128

    @roomkit.rpc
    async def add(self, n: int) -> int:
        return n


class Elsewhere:
    """A room host that serves no room: every call goes out of the process."""

    closing = False

    def room_for(self, room_class: type[Room], room: RoomId) -> RoomActor:
        raise AssertionError("no room lives here")

    def serves(self, room: RoomId) -> bool:
        return False


class Owner:
    """Stands in for the gateway: reads each request whole, then writes what
    ``answer`` says for the attempt (its number, from 0), and closes."""

    def __init__(self, answer: Callable[[int], bytes], *, hold: bool = False) -> None:
        self.answer = answer
        self.hold = hold  # then it never closes
        self.requests: list[bytes] = []

    async def visit(self, stream: trio.abc.Stream) -> None:
        async with stream:
            data = b""
            while not data.endswith(b"}") and (chunk := await stream.receive_some()):
                data += chunk
            self.requests.append(data)
            await stream.send_all(self.answer(len(self.requests) - 1))
            if self.hold:
                await trio.sleep_forever()


def ok(body: bytes) -> bytes:
    return Response(200, body, content_type="application/json").to_bytes()


async def call_through(owner: Owner, *, secret: bytes | None = None, seconds: float = 5) -> object:
    """What ``Far.add(2)`` returns through ``owner``, with ``seconds`` of timeout."""
    calls = Calls(Elsewhere(), Router[type[Room]](Far), clustered=True)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(calls.run, owner.visit, secret)
            result = await outcome.acapture(calls.call, ROOM, Far, "add", (2,), {}, seconds, ())
            nursery.cancel_scope.cancel()
    return result.unwrap()


async def test_the_request_is_the_calls_wire_and_its_result_comes_back() -> None:
    owner = Owner(lambda _: ok(b'{"result":3}'))
    assert await call_through(owner, secret=SECRET) == 3
    (request,) = owner.requests
    head, _, body = request.partition(b"\r\n\r\n")
    assert body == b'{"args":[2],"kwargs":{},"chain":[]}'
    lines = head.decode().split("\r\n")
    auth = next(line for line in lines if line.startswith("roomkit-call-auth: "))
    value = auth.removeprefix("roomkit-call-auth: ")
    timeout = next(line for line in lines if line.startswith("roomkit-call-timeout: "))
    sent = timeout.removeprefix("roomkit-call-timeout: ")
    assert verify_call(value, SECRET, "add", sent, "/far", body, now=time.time()) is None
    left = float(sent)
    assert 4 < left <= 5
    assert request == call_head(ROOM, "add", left, body, value) + body


async def test_without_a_secret_the_request_is_not_signed() -> None:
    owner = Owner(lambda _: ok(b'{"result":3}'))
    assert await call_through(owner) == 3
    assert b"roomkit-call-auth" not in owner.requests[0]


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("error", roomkit.RoomCallError),
        ("timeout", roomkit.RoomCallTimeout),
        ("cycle", roomkit.RoomCallCycle),
    ],
)
async def test_an_error_answer_is_raised_by_its_kind(
    kind: Kind, error: type[roomkit.RoomCallError]
) -> None:
    body = encode_error(kind, "ValueError", "bad", False)
    with pytest.raises(error) as raised:
        await call_through(Owner(lambda _: ok(body)))
    assert type(raised.value) is error
    assert (raised.value.type, raised.value.message, raised.value.ran) == (
        "ValueError",
        "bad",
        False,
    )
    assert raised.value.room == "/far"


@pytest.mark.parametrize("status", [400, 403, 404, 408, 413])
async def test_a_refusal_has_no_effect_and_says_why(status: int) -> None:
    owner = Owner(lambda _: Response(status, "Forbidden: not signed").to_bytes())
    with pytest.raises(roomkit.RoomCallError) as raised:
        await call_through(owner)
    assert raised.value.ran is False
    assert raised.value.message == f"refused with {status}: Forbidden: not signed"


@pytest.mark.parametrize("status", [500, 502, 504])
async def test_a_failure_but_503_leaves_it_unknown(status: int) -> None:
    owner = Owner(lambda _: Response(status, "Internal error").to_bytes())
    with pytest.raises(roomkit.RoomCallError) as raised:
        await call_through(owner)
    assert raised.value.ran is None
    assert raised.value.message == f"failed with {status}: Internal error"


async def test_503_is_tried_again_until_it_is_taken() -> None:
    unavailable = Response(503, "Service unavailable").to_bytes()
    owner = Owner(lambda attempt: unavailable if attempt < 3 else ok(b'{"result":3}'))
    assert await call_through(owner, secret=SECRET) == 3
    assert len(owner.requests) == 4
    auths = {request.split(b"auth: ")[1].split(b"\r")[0] for request in owner.requests}
    assert len(auths) == 4  # each try signed anew: no owner takes one for a replay
    bodies = {request.partition(b"\r\n\r\n")[2] for request in owner.requests}
    assert bodies == {b'{"args":[2],"kwargs":{},"chain":[]}'}  # the same call each time, with
    lefts = [float(request.split(b"timeout: ")[1].split(b"\r")[0]) for request in owner.requests]
    assert lefts == sorted(lefts, reverse=True)  # what is left of its timeout


async def test_503_until_the_deadline_is_a_timeout_that_never_ran() -> None:
    owner = Owner(lambda _: Response(503, "Service unavailable").to_bytes())
    with pytest.raises(roomkit.RoomCallTimeout) as raised:
        await call_through(owner, seconds=0.3)
    assert raised.value.ran is False
    assert "503" in raised.value.message
    assert len(owner.requests) >= 2


@pytest.mark.parametrize(
    "answer",
    [
        b"",  # it ended with no word
        ok(b'{"result":3}')[:-3],  # half an answer
        ok(b'{"result":"' + b"x" * 128 + b'"}'),  # over the room's max_request_size
    ],
)
async def test_a_connection_that_ends_before_a_whole_answer_leaves_it_unknown(
    answer: bytes,
) -> None:
    with pytest.raises(roomkit.RoomCallError) as raised:
        await call_through(Owner(lambda _: answer))
    assert type(raised.value) is roomkit.RoomCallError
    assert raised.value.ran is None
    assert raised.value.message.startswith("the connection to the room's owner ended")


async def test_no_answer_by_the_deadline_is_a_timeout_of_unknown_effect() -> None:
    with pytest.raises(roomkit.RoomCallTimeout) as raised:
        await call_through(Owner(lambda _: b"", hold=True), seconds=0.2)
    assert raised.value.ran is None


async def test_a_call_once_the_server_stopped_has_no_effect() -> None:
    calls = Calls(Elsewhere(), Router[type[Room]](Far), clustered=True)
    with pytest.raises(roomkit.RoomCallError) as raised:
        await calls.call(ROOM, Far, "add", (2,), {}, 1, ())
    assert (raised.value.ran, raised.value.message) == (False, "the server is not running")


async def test_a_call_in_flight_when_the_visits_end_is_an_error_of_unknown_effect() -> None:
    owner = Owner(lambda _: b"", hold=True)  # took the call, and runs it still
    calls = Calls(Elsewhere(), Router[type[Room]](Far), clustered=True)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            visits = trio.CancelScope()

            async def run_visits(task_status: trio.TaskStatus[None]) -> None:
                with visits:
                    await calls.run(owner.visit, None, task_status=task_status)

            await nursery.start(run_visits)
            result: list[outcome.Outcome[object]] = []

            async def call() -> None:
                result.append(await outcome.acapture(calls.call, ROOM, Far, "add", (2,), {}, 5, ()))

            nursery.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            visits.cancel()  # the server's end, once its rooms are done
    with pytest.raises(roomkit.RoomCallError) as raised:
        result[0].unwrap()
    assert raised.value.ran is None


async def test_a_connection_reset_before_a_whole_answer_leaves_it_unknown() -> None:
    async def reset(stream: trio.abc.Stream) -> None:
        await trio.sleep(0.05)  # the request is in its buffer, unread: closing resets
        await stream.aclose()

    calls = Calls(Elsewhere(), Router[type[Room]](Far), clustered=True)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(calls.run, reset, None)
            result = await outcome.acapture(calls.call, ROOM, Far, "add", (2,), {}, 5, ())
            nursery.cancel_scope.cancel()
    with pytest.raises(roomkit.RoomCallError) as raised:
        result.unwrap()
    assert (type(raised.value), raised.value.ran) == (roomkit.RoomCallError, None)
    assert raised.value.message.startswith("the connection to the room's owner ended")


async def test_no_socket_pair_to_call_through_is_an_error_of_no_effect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def exhausted() -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(trio.socket, "socketpair", exhausted)
    owner = Owner(lambda _: ok(b'{"result":3}'))
    with pytest.raises(roomkit.RoomCallError) as raised:
        await call_through(owner)
    assert (raised.value.ran, raised.value.message) == (
        False,
        "no socket pair to call through: [Errno 24] Too many open files",
    )
    assert owner.requests == []
