"""roomkit.testing, against the demo chat room (examples/chat.py) and small variants of it.

Rules: the kit's in-memory transport unless a test is about real sockets; time is
pytest-trio's ``autojump_clock``, and the tests assert virtual times, never real ones.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

import roomkit
from examples.chat import Chat, ChatRoom, Message
from roomkit.testing import TestServer, open_test_server

from .helpers import memory_handshake, open_client, receive_json


async def test_the_demo_chat_in_memory() -> None:
    async with open_test_server(ChatRoom) as server:
        assert server.url is None
        async with server.connect("/lobby?userId=ann") as ann:
            assert await ann.receive() == {"type": "welcome", "user": "ann", "users": ["ann"]}
            async with server.connect("/lobby?userId=bob") as bob:
                await bob.receive()  # welcome
                assert await ann.receive() == {"type": "user_joined", "user": "bob"}
                await bob.send(Chat("hi"))  # a protocol message
                await bob.send({"type": "typing"})  # a dict, as JSON
                message = await ann.receive()
                assert (message["type"], message["user"], message["text"]) == (
                    "message",
                    "bob",
                    "hi",
                )
                assert await ann.receive() == {"type": "user_typing", "user": "bob", "active": True}
                await ann.receive_nothing()
            assert await ann.receive() == {"type": "user_left", "user": "bob"}
            room = server.room("lobby")
            assert isinstance(room, ChatRoom)
            assert room.users() == ["ann"]


async def test_a_room_is_found_by_any_unicode_form_of_its_name() -> None:
    async with open_test_server(ChatRoom) as server, server.connect("/caf%C3%A9?userId=a") as a:
        await a.receive()
        room = server.room("cafe\u0301")  # NFD: the same room, as the router names it
        assert room is not None and room.name == "caf\u00e9"


async def test_raw_text_and_bytes_and_error_replies() -> None:
    async with open_test_server(ChatRoom) as server, server.connect("/x?userId=ann") as ann:
        await ann.receive()
        await ann.send('{"type": "ping"}')
        assert await ann.receive_text() == '{"type":"pong"}'
        await ann.send(b"\x00")
        assert await ann.receive() == {
            "type": "error",
            "message": "binary messages are not part of this room's protocol",
        }
        with pytest.raises(TypeError, match="Message is not one of"):
            await ann.send(Message("ann", "hi", 0.0))  # a server message: not the client's
        with pytest.raises(TypeError, match="not float"):
            await ann.send(1.5)


async def test_receive_nothing_and_receive_close_name_what_came_instead() -> None:
    async with open_test_server(ChatRoom) as server, server.connect("/x?userId=ann") as ann:
        with pytest.raises(AssertionError, match=r"expected nothing, received .*welcome"):
            await ann.receive_nothing()
        with pytest.raises(AssertionError, match=r"expected the close, received .*welcome"):
            await ann.receive_close()
        assert (await ann.receive())["type"] == "welcome"  # still queued
        await ann.send({"type": "ping"})
        with pytest.raises(AssertionError, match="expected a binary message"):
            await ann.receive_bytes()  # and the pong is consumed
        await ann.receive_nothing()


async def test_a_refused_handshake_raises_with_its_status() -> None:
    async with open_test_server(ChatRoom) as server:
        with pytest.raises(roomkit.ClientClosed) as refused:
            async with server.connect("/lobby"):
                pass  # pragma: no cover
        assert refused.value.status == 400
        assert refused.value.reason == "Join with ?userId=<your name> (1-64 characters)"
        with pytest.raises(roomkit.ClientClosed) as refused:
            async with server.connect("/a/lobby?userId=ann"):
                pass  # pragma: no cover
        assert refused.value.status == 404


async def test_a_client_closes_with_its_code_and_the_room_hears_it() -> None:
    closes: list[tuple[int, str]] = []

    class Recorded(ChatRoom):
        async def on_close(
            self, conn: roomkit.Connection, code: int, reason: str, clean: bool
        ) -> None:
            closes.append((code, reason))
            await super().on_close(conn, code, reason, clean)

    async with open_test_server(Recorded) as server, server.connect("/x?userId=ann") as ann:
        async with server.connect("/x?userId=bob") as bob:
            await bob.close(4001, "bye")
            assert (bob.close_code, bob.close_reason) == (4001, "bye")
            with pytest.raises(roomkit.ClientClosed) as closed:
                await bob.send({"type": "ping"})
            assert closed.value.code == 4001
        assert (await ann.receive())["type"] == "welcome"
        assert await ann.receive() == {"type": "user_joined", "user": "bob"}
        assert await ann.receive() == {"type": "user_left", "user": "bob"}
        assert closes == [(4001, "bye")]


async def test_on_close_may_close_again_with_what_it_was_told() -> None:
    closes: list[tuple[int, str, str]] = []

    class Reclosing(ChatRoom):  # the guide's webSocketClose: ws.close(code, reason)
        async def on_close(
            self, conn: roomkit.Connection, code: int, reason: str, clean: bool
        ) -> None:
            conn.close(code, reason)  # a room error here would be raised in the test
            closes.append((conn.state.value, code, reason))

    async with open_test_server(Reclosing) as server:
        async with server.connect("/x?userId=ann") as ann:
            await ann.close(1000, "bye")
        stream, _ = await memory_handshake(server, "/x?userId=bob")
        await stream.aclose()  # gone without a close frame: 1006
        await trio.testing.wait_all_tasks_blocked()
    assert closes == [("closed", 1000, "bye"), ("closed", 1006, "")]


class QuietChat(ChatRoom):
    """The chat room, closing connections quiet for a minute."""

    idle_timeout = 60


async def test_an_idle_sweep_runs_on_the_virtual_clock(autojump_clock: trio.abc.Clock) -> None:
    async with (
        open_test_server(QuietChat) as server,
        server.connect("/x?userId=ann") as ann,
        server.connect("/x?userId=bob") as bob,
    ):
        for client in (ann, bob, ann):  # welcomes, and bob joined
            await client.receive()
        start = trio.current_time()
        await trio.sleep(30)
        await bob.send({"type": "ping"})  # bob is not quiet
        assert await bob.receive() == {"type": "pong"}
        assert await ann.receive_close() == (1000, "Idle timeout")
        assert trio.current_time() - start == pytest.approx(60)
        assert await bob.receive() == {"type": "user_left", "user": "ann"}
        assert await bob.receive_close() == (1000, "Idle timeout")
        assert trio.current_time() - start == pytest.approx(90)


class Clocked(roomkit.Room):
    """Answers "time" with its wall clock; "alarm N" sets its alarm N seconds ahead, and
    the alarm broadcasts the wall clock when it runs."""

    async def on_message(self, conn: roomkit.Connection, message: object) -> None:
        if message == "time":
            conn.send(repr(self.time()))
        else:
            await self.storage.set_alarm(delay=float(str(message).split()[1]))
            alarm = await self.storage.get_alarm()
            assert alarm is not None
            conn.send(repr(alarm.timestamp()))

    async def on_alarm(self, info: roomkit.AlarmInfo) -> None:
        self.broadcast(repr(self.time()))


async def test_room_time_follows_the_virtual_clock(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_server(Clocked) as server, server.connect("/x") as ann:
        start = trio.current_time()

        async def wall() -> float:
            await ann.send("time")
            return float(await ann.receive_text())

        first = await wall()
        assert abs(first - time.time()) < 5  # from the wall time at which the server started
        await trio.sleep(30)
        assert await wall() - first == pytest.approx(30, abs=1e-6)
        await ann.send("alarm 90")
        due = float(await ann.receive_text())
        assert due - first == pytest.approx(120, abs=1e-6)  # as the alarm is stored
        ran = float(await ann.receive_text())
        assert ran - first == pytest.approx(120, abs=1e-6)
        assert trio.current_time() - start == pytest.approx(120, abs=1e-6)


class Digest(ChatRoom):
    """The chat room, posting a digest two seconds after a chat message; the digest
    service fails once."""

    failures = 1

    async def on_message(self, conn: roomkit.Connection, message: object) -> None:
        await super().on_message(conn, message)
        if isinstance(message, Chat):
            await self.storage.put("last", message.text)
            await self.storage.set_alarm(delay=2)

    async def on_alarm(self, info: roomkit.AlarmInfo) -> None:
        if Digest.failures:
            Digest.failures -= 1
            raise ConnectionError("digest service down")
        last = await self.storage.get("last")
        self.broadcast(Message("digest", f"{last} (retry {info.retry_count})", 0.0))

    async def on_error(self, conn: roomkit.Connection | None, error: Exception) -> None:
        pass  # the failure is the point


async def test_a_failing_alarm_is_retried_on_the_virtual_clock(
    autojump_clock: trio.abc.Clock,
) -> None:
    Digest.failures = 1
    async with open_test_server(Digest) as server, server.connect("/x?userId=ann") as ann:
        await ann.receive()  # welcome
        await ann.send({"type": "chat", "text": "hello"})
        await ann.receive()  # the message
        sent = trio.current_time()
        digest = await ann.receive()
        assert digest["text"] == "hello (retry 1)"
        # Due after 2 s, failed, retried 2 s later (the first retry's delay; the kit
        # retries without jitter), to the virtual microsecond.
        assert trio.current_time() - sent == pytest.approx(4, abs=1e-6)
        assert Digest.failures == 0


async def test_fire_alarm_runs_it_now_even_across_a_restart(
    autojump_clock: trio.abc.Clock, tmp_path: object
) -> None:
    Digest.failures = 0
    database = f"{tmp_path}/rooms.sqlite3"
    async with open_test_server(Digest, storage=database) as server:
        with pytest.raises(LookupError, match="'/x' has no alarm set"):
            await server.fire_alarm("x")
        async with server.connect("/x?userId=ann") as ann:
            await ann.receive()
            await ann.send({"type": "chat", "text": "kept"})
            await ann.receive()
    async with open_test_server(Digest, storage=database) as server:  # the alarm is stored
        async with server.connect("/x?userId=bob") as bob:
            await bob.receive()
            before = trio.current_time()
            await server.fire_alarm("x")
            assert trio.current_time() == before
            assert (await bob.receive())["text"] == "kept (retry 0)"
        with pytest.raises(LookupError):
            await server.fire_alarm("x")  # run, and deleted


class SlowDigest(Digest):
    async def on_alarm(self, info: roomkit.AlarmInfo) -> None:
        await trio.sleep(0.5)  # a slow digest service
        await super().on_alarm(info)


async def test_fire_alarm_handles_what_was_sent_first_and_waits_for_its_handler(
    autojump_clock: trio.abc.Clock,
) -> None:
    Digest.failures = 0
    async with open_test_server(SlowDigest) as server, server.connect("/x?userId=ann") as ann:
        await ann.receive()  # welcome
        await ann.send({"type": "chat", "text": "first"})  # sets the alarm, once handled
        began = trio.current_time()
        await server.fire_alarm("x")
        assert trio.current_time() - began == 0.5  # it waited for the handler's sleep
        assert (await ann.receive())["text"] == "first"
        assert (await ann.receive())["text"] == "first (retry 0)"
        await ann.receive_nothing()


async def test_a_message_that_never_comes_fails_the_test(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_server(ChatRoom) as server, server.connect("/x?userId=ann") as ann:
        await ann.receive()  # welcome
        began = trio.current_time()
        with pytest.raises(AssertionError, match=r"expected a message within 300\.0 s"):
            await ann.receive()
        assert trio.current_time() - began == pytest.approx(300)
        ann.receive_timeout = 1
        with pytest.raises(AssertionError, match="expected the close within 1 s"):
            await ann.receive_close()


async def test_query_parameters_are_encoded_for_the_test(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_server(ChatRoom) as server:
        with pytest.raises(ValueError, match="not URL-encoded"):
            async with server.connect("/x?userId=zoë smith"):
                pass
        async with server.connect("/x", params={"userId": "zoë smith"}) as zoe:
            assert (await zoe.receive())["user"] == "zoë smith"


class Broken(ChatRoom):
    async def on_message(self, conn: roomkit.Connection, message: object) -> None:
        raise KeyError("a bug in the room")


async def test_a_room_error_is_raised_in_the_test(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_server(Broken) as server, server.connect("/x?userId=ann") as ann:
        await ann.receive()  # welcome
        await ann.send({"type": "ping"})
        with pytest.raises(KeyError, match="a bug in the room"):
            await ann.receive()
        assert await ann.receive_close() == (1011, "Internal error")  # raised once


async def test_a_room_error_left_unread_is_raised_at_the_end(
    autojump_clock: trio.abc.Clock,
) -> None:
    with pytest.raises(KeyError, match="a bug in the room"):
        async with open_test_server(Broken) as server, server.connect("/x?userId=ann") as ann:
            await ann.send({"type": "ping"})


async def test_room_errors_can_be_left_to_the_logs(autojump_clock: trio.abc.Clock) -> None:
    async with (
        open_test_server(Broken, raise_room_errors=False) as server,
        server.connect("/x?userId=ann") as ann,
    ):
        await ann.receive()  # welcome
        await ann.send({"type": "ping"})
        assert await ann.receive_close() == (1011, "Internal error")


class Plain(roomkit.Room):
    async def on_message(self, conn: roomkit.Connection, message: object) -> None:
        conn.send("42")
        conn.send("not json")


async def test_receive_json_is_strict_where_receive_guesses(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_server(Plain) as server, server.connect("/x") as client:
        await client.send("go")
        assert await client.receive_json() == 42
        with pytest.raises(AssertionError, match="expected JSON, received text 'not json'"):
            await client.receive_json()
        await client.send("go")
        assert await client.receive() == 42  # the same text, guessed
        assert await client.receive() == "not json"


def test_rooms_are_named_not_pathed() -> None:
    async def main() -> None:
        async with open_test_server(ChatRoom) as server:
            with pytest.raises(ValueError, match="is a path"):
                server.room("/lobby")

    trio.run(main)


async def test_hibernate_drops_the_instance_and_keeps_the_connections(
    autojump_clock: trio.abc.Clock,
) -> None:
    starts = 0

    class Counted(ChatRoom):
        hibernate_after = None  # only when the test says so

        async def on_start(self) -> None:
            nonlocal starts
            starts += 1

    async with open_test_server(Counted) as server:
        with pytest.raises(LookupError, match="'/x' is not live"):
            await server.hibernate("x")
        async with server.connect("/x?userId=ann") as ann:
            await ann.receive()
            awake = server.room("x")
            assert awake is not None
            before = trio.current_time()
            with trio.fail_after(60):
                await server.hibernate("x")
            assert trio.current_time() == before  # now, not after some idle time
            assert server.room("x") is None
            await server.hibernate("x")  # already: nothing to do
            assert starts == 1
            await ann.send({"type": "ping"})
            assert await ann.receive() == {"type": "pong"}
            assert server.room("x") not in (None, awake)
            assert starts == 2


async def test_routes_name_their_rooms() -> None:
    async with (
        open_test_server({"/chat": ChatRoom}) as server,
        server.connect("/chat/x?userId=ann") as ann,
    ):
        await ann.send(Chat("typed, by the route's protocol"))
        assert (await ann.receive())["type"] == "welcome"
        assert (await ann.receive())["text"] == "typed, by the route's protocol"
        assert server.room("x") is None
        assert isinstance(server.room("x", "/chat"), ChatRoom)


async def test_real_sockets_serve_other_clients_too() -> None:
    async with open_test_server(ChatRoom, real_sockets=True) as server:
        assert server.url is not None and server.url.startswith("ws://127.0.0.1:")
        async with (
            server.connect("/x?userId=ann") as ann,
            open_client(f"{server.url}/x?userId=bob") as bob,
        ):
            await ann.receive()
            assert (await receive_json(bob))["users"] == ["ann", "bob"]
            assert await ann.receive() == {"type": "user_joined", "user": "bob"}


async def test_an_error_in_the_block_comes_out_as_itself() -> None:
    with pytest.raises(KeyError):
        async with open_test_server(ChatRoom) as server, server.connect("/x?userId=ann"):
            raise KeyError("unwrapped")
    with pytest.raises(ValueError, match="max_connections must be positive"):
        async with open_test_server(ChatRoom, max_connections=0):
            pass  # pragma: no cover


async def test_it_takes_serves_options_but_host_and_port() -> None:
    with pytest.raises(
        TypeError,
        match="got port; it takes serve's advertise, allowed_origins, cluster_secret, default_room",
    ):
        async with open_test_server(ChatRoom, port=8080):
            pass  # pragma: no cover
    with pytest.raises(TypeError, match="got ssl_context;"):
        async with open_test_server(ChatRoom, ssl_context=None):
            pass  # pragma: no cover
    async with (
        open_test_server(ChatRoom, metrics=True, drain_timeout=1) as server,
        server.connect("/x?userId=ann") as ann,
    ):
        assert (await ann.receive())["type"] == "welcome"


async def test_the_pytest_fixture(
    roomkit_server: Callable[..., Awaitable[TestServer]], autojump_clock: trio.abc.Clock
) -> None:
    server = await roomkit_server(QuietChat)
    async with server.connect("/x?userId=ann") as ann:
        assert (await ann.receive())["type"] == "welcome"
        assert await ann.receive_close() == (1000, "Idle timeout")


PLUGIN_USER = """
import trio

from examples.chat import ChatRoom


async def test_chat(roomkit_server, autojump_clock):
    server = await roomkit_server(ChatRoom)
    async with server.connect("/lobby?userId=ann") as ann:
        assert (await ann.receive())["users"] == ["ann"]
        await trio.sleep(3600)
        await ann.receive_nothing()
"""


def test_the_plugin_serves_pytest_trio_users(pytester: pytest.Pytester) -> None:
    # Run in this process, the plugin's package is already imported: pytest says it
    # cannot rewrite its asserts, which a fresh process never hears.
    pytester.makeini(
        "[pytest]\ntrio_mode = true\nfilterwarnings =\n    error\n"
        "    ignore::pytest.PytestAssertRewriteWarning\n"
    )
    pytester.makepyfile(PLUGIN_USER)
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_loading_the_plugin_imports_nothing_of_roomkit() -> None:
    code = (
        "import sys, _roomkit_pytestplugin\n"
        "assert not {'roomkit', 'trio', 'wsproto'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_plugin_loads_harmlessly_without_pytest_trio(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_plain():\n    assert True\n")
    result = pytester.runpytest_inprocess("-p", "no:trio", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    listing = pytester.runpytest_inprocess("-p", "no:trio", "--fixtures")
    assert "roomkit_server" in listing.stdout.str()
