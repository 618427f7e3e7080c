"""The guide's examples (examples/guide.py), driven as the guide's own clients would.

Every room is served as ``roomkit serve examples.guide:ROUTES`` serves it, on 127.0.0.1
port 0 through the ``start`` fixture, and spoken to with clients roomkit did not write
(the ``websockets`` package's Trio client, trio-websocket's) sending the guide's JSON,
compared as the exact text that comes back. What takes time (hibernation, the minute
of the managed room's idle sweep) runs over ``roomkit.testing``'s in-memory transport
under ``autojump_clock``, which is never used with a real socket. Each fix of a bug of
the guide's has a test that the guide's own code fails.
"""

from __future__ import annotations

import json
import time
from contextlib import aclosing
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import trio
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as connect_sync
from websockets.trio.client import ClientConnection, connect

import roomkit
from examples.guide import ROUTES, Chat, Error, HibernatingRoom, ManagedRoom, ProtocolRoom, SendChat
from roomkit.storage import KeyRange, RoomId, SQLiteStore
from roomkit.testing import open_test_server

from .helpers import Start, memory_handshake, open_client, roomkit_serve

#: Seconds any one wait on a real socket may take before the test fails.
WAIT = 5


def opened(url: str) -> connect:
    """The ``websockets`` package's Trio client, its handshake done within :data:`WAIT`."""
    return connect(url, open_timeout=WAIT)


async def recv(ws: ClientConnection) -> str | bytes:
    """The next message, within :data:`WAIT`."""
    with trio.fail_after(WAIT):
        return await ws.recv()


# ChatRoom


async def test_chat_sends_every_message_to_every_socket_the_senders_too(start: Start) -> None:
    server = await start(ROUTES)
    async with (
        opened(f"{server.url}/chat/lobby") as ann,
        open_client(f"{server.url}/chat/lobby") as bob,
    ):
        await ann.send("hello, room")
        assert await recv(ann) == "hello, room"
        with trio.fail_after(WAIT):
            assert await bob.get_message() == "hello, room"
        # Binary is decoded as the guide's TextDecoder does: its byte order mark
        # dropped, a byte that is not UTF-8 replaced, and sent on as text.
        await bob.send_message(b"\xef\xbb\xbfcaf\xc3\xa9 \xff!")
        assert await recv(ann) == "café \ufffd!"
        with trio.fail_after(WAIT):
            assert await bob.get_message() == "café \ufffd!"


async def test_chat_rooms_of_other_names_hear_nothing(start: Start) -> None:
    server = await start(ROUTES)
    async with opened(f"{server.url}/chat/a") as a, opened(f"{server.url}/chat/b") as b:
        await a.send("for a")
        await b.send("for b")
        assert await recv(a) == "for a"
        assert await recv(b) == "for b"


async def test_chat_a_path_without_a_room_name_reaches_the_room_default(start: Start) -> None:
    # The guide's Worker: url.pathname.slice(1) || 'default'.
    server = await start(ROUTES)
    async with opened(f"{server.url}/chat") as bare, opened(f"{server.url}/chat/default") as named:
        await bare.send("to default")
        assert await recv(named) == "to default"
    server = await start(ROUTES["/chat"])  # one class, served at /{room} as by the guide
    async with opened(f"{server.url}/") as root, opened(f"{server.url}/default") as named:
        await named.send("from default")
        assert await recv(root) == "from default"


async def test_chat_the_guides_client_as_roomkit_connect_with_its_join_as_hello(
    start: Start,
) -> None:
    server = await start(ROUTES)
    query = urlencode({"userId": "ada lovelace"})
    url = f"{server.url}/chat/{quote('the lobby', safe='')}?{query}"
    join = json.dumps({"type": "join", "userId": "ada lovelace"})
    async with roomkit.connect(url, hello=join) as client:
        with trio.fail_after(WAIT):
            assert await client.receive() == join  # ChatRoom sends it to its sender too
            assert server.statistics().rooms == 1


# TaggedChatRoom


async def test_tagged_broadcasts_reach_everyone_as_json_stringify_writes_them(
    start: Start,
) -> None:
    server = await start(ROUTES)
    url = f"{server.url}/tagged/lobby?userId="
    async with opened(url + "ann") as ann, opened(url + "bob") as bob:
        await ann.send('{"type": "broadcast", "text": "hi, é", "n": [1, 2.5, null], "ok": true}')
        sent = '{"type":"broadcast","text":"hi, é","n":[1,2.5,null],"ok":true}'
        assert await recv(ann) == sent
        assert await recv(bob) == sent


async def test_tagged_direct_messages_reach_every_socket_of_their_user_only(start: Start) -> None:
    server = await start(ROUTES)
    url = f"{server.url}/tagged/lobby?userId="
    async with (
        opened(url + "ann") as ann,
        opened(url + "bob") as bob_1,
        opened(url + "bob") as bob_2,
        opened(url + "cy") as cy,
    ):
        await ann.send('{"type": "direct", "targetUserId": "bob", "text": "psst"}')
        for ws in (bob_1, bob_2):
            assert await recv(ws) == '{"type":"direct","targetUserId":"bob","text":"psst"}'
        # Neither the sender nor cy got it: what each gets next is the broadcast.
        await ann.send('{"type": "broadcast"}')
        for ws in (ann, cy, bob_1, bob_2):
            assert await recv(ws) == '{"type":"broadcast"}'


async def test_tagged_users_without_an_id_are_anonymous(start: Start) -> None:
    server = await start(ROUTES)
    base = f"{server.url}/tagged/lobby"
    async with (
        opened(base) as nobody,
        opened(base + "?userId=") as empty,
        opened(base + "?userId=ann") as ann,
    ):
        await ann.send('{"type": "direct", "targetUserId": "anonymous"}')
        for ws in (nobody, empty):
            assert await recv(ws) == '{"type":"direct","targetUserId":"anonymous"}'


async def test_tagged_a_user_called_all_gets_direct_messages_to_all_alone(start: Start) -> None:
    # The guide's tags, [userId, "all"], would send this direct message to every socket.
    server = await start(ROUTES)
    url = f"{server.url}/tagged/lobby?userId="
    async with opened(url + "ann") as ann, opened(url + "all") as all_, opened(url + "bob") as bob:
        await ann.send('{"type": "direct", "targetUserId": "all", "text": "just you"}')
        assert await recv(all_) == '{"type":"direct","targetUserId":"all","text":"just you"}'
        await ann.send('{"type": "broadcast"}')
        for ws in (ann, bob, all_):
            assert await recv(ws) == '{"type":"broadcast"}'


@pytest.mark.parametrize(
    ("sent", "reply"),
    [
        ("hello", "malformed JSON: Expecting value: line 1 column 1 (char 0)"),
        ('{"type": "broadcast", "n": NaN}', "malformed JSON: NaN is not JSON"),
        ('{"type": "broadcast", "n": 1e400}', "a number is out of the range JSON can carry"),
        (
            '{"type": "broadcast", "s": "\\ud800"}',
            "a string holds a lone surrogate, which UTF-8 cannot carry",
        ),
    ],
)
async def test_tagged_what_is_not_json_gets_an_error_and_the_socket_stays(
    start: Start, sent: str, reply: str
) -> None:
    server = await start(ROUTES)
    async with opened(f"{server.url}/tagged/lobby?userId=ann") as ann:
        await ann.send(sent)
        assert json.loads(await recv(ann)) == {"type": "error", "message": reply}
        # JSON that is neither type, or not an object, is ignored, as the guide does.
        for ignored in ('{"type": "shout"}', '{"type": "direct"}', "[1]", '"broadcast"', "null"):
            await ann.send(ignored)
        await ann.send('{"type": "broadcast"}')
        assert await recv(ann) == '{"type":"broadcast"}'


async def test_tagged_a_user_id_too_long_for_a_tag_is_refused(start: Start) -> None:
    server = await start(ROUTES)
    with pytest.raises(InvalidStatus) as refused:
        async with opened(f"{server.url}/tagged/lobby?userId={'x' * 252}"):
            pass
    assert refused.value.response.status_code == 400
    assert refused.value.response.body == b"userId is at most 251 characters"
    async with opened(f"{server.url}/tagged/lobby?userId={'x' * 251}") as longest:
        await longest.send(json.dumps({"type": "direct", "targetUserId": "x" * 251}))
        assert json.loads(await recv(longest))["targetUserId"] == "x" * 251


# HibernatingRoom


async def test_hibernating_stores_and_sends_messages_and_tells_who_left(start: Start) -> None:
    server = await start(ROUTES)
    base = f"{server.url}/hibernating/lobby"
    async with opened(base + "?userId=ann") as ann:
        async with opened(base) as nobody:
            before = time.time()
            await ann.send("hi")
            for ws in (ann, nobody):
                sent = json.loads(await recv(ws))
                assert list(sent) == ["from", "message", "timestamp"]  # the guide's order
                assert sent["from"] == "ann" and sent["message"] == "hi"
                assert before * 1000 - 1 <= sent["timestamp"] <= time.time() * 1000
                assert isinstance(sent["timestamp"], int)  # Date.now(): whole milliseconds
            await nobody.send(b"caf\xc3\xa9")
            sent = json.loads(await recv(ann))
            assert (sent["from"], sent["message"]) == ("anonymous", "café")
        # No userId, no attachment: JSON.stringify leaves the undefined userId out.
        assert await recv(ann) == '{"type":"user_left"}'
        async with opened(base + "?userId=bob") as bob:
            await bob.aclose(4000, "bye")  # on_close's conn.close(4000, "bye") does nothing
        assert await recv(ann) == '{"type":"user_left","userId":"bob"}'


async def stored(store: SQLiteStore, room: str) -> dict[str, Any]:
    """What HibernatingRoom ``room`` holds in ``store``, decoded."""
    rows = await store.list(RoomId("/hibernating", room), KeyRange(), reverse=False, limit=None)
    return {key: json.loads(value) for key, value in rows}


async def test_hibernating_two_messages_in_one_millisecond_are_both_stored(
    autojump_clock: trio.abc.Clock,
) -> None:
    # The guide's key, message:${Date.now()}, is the same for both: one would be lost.
    async with (
        aclosing(await SQLiteStore.open(":memory:")) as store,
        open_test_server(ROUTES, storage=store) as server,
        server.connect("/hibernating/lobby?userId=ann") as ann,
    ):
        await ann.send("one")
        await ann.send("two")
        first, second = [json.loads(await ann.receive_text()) for _ in range(2)]
        assert first["timestamp"] == second["timestamp"]  # no virtual time passed
        assert await stored(store, "lobby") == {
            "message:0000000000000000": first,
            "message:0000000000000001": second,
            "messages": 2,
        }


class Sleepy(HibernatingRoom):
    hibernate_after = 1.0
    kept = 2


async def test_hibernating_attachments_and_the_count_survive_hibernation(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with (
        aclosing(await SQLiteStore.open(":memory:")) as store,
        open_test_server({"/hibernating": Sleepy}, storage=store) as server,
        server.connect("/hibernating/lobby?userId=ann") as ann,
    ):
        await ann.send("before")
        before = json.loads(await ann.receive_text())
        await trio.sleep(90)
        assert server.room("lobby", "/hibernating") is None  # hibernated
        await ann.send("after")
        after = json.loads(await ann.receive_text())
        assert after["from"] == "ann"  # from the attachment, after the wake
        assert after["timestamp"] - before["timestamp"] == 90_000
        attachment = server.room("lobby", "/hibernating").connections()[0].attachment
        assert attachment == {"userId": "ann", "joinedAt": before["timestamp"]}
        await trio.sleep(90)
        await ann.send("last")
        last = json.loads(await ann.receive_text())
        # Numbered on from where the count was; the oldest dropped past kept = 2.
        assert await stored(store, "lobby") == {
            "message:0000000000000001": after,
            "message:0000000000000002": last,
            "messages": 3,
        }


async def test_hibernating_a_dropped_socket_is_told_to_the_others(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with (
        open_test_server(ROUTES) as server,
        server.connect("/hibernating/lobby?userId=ann") as ann,
    ):
        stream, _ = await memory_handshake(server, "/hibernating/lobby?userId=zed")
        await stream.aclose()  # no close frame: on_close gets 1006, and closes with it
        assert await ann.receive_text() == '{"type":"user_left","userId":"zed"}'


# ManagedRoom


async def test_managed_sockets_chat_as_in_chat_room(start: Start) -> None:
    server = await start(ROUTES)
    async with (
        opened(f"{server.url}/managed/lobby?userId=ann") as ann,
        opened(f"{server.url}/managed/lobby?userId=bob") as bob,
    ):
        await bob.send("hello")
        assert await recv(ann) == "hello"
        assert await recv(bob) == "hello"


async def test_managed_a_silent_socket_is_closed_after_a_minute(
    autojump_clock: trio.abc.Clock,
) -> None:
    # The guide's cleanup finds no lastSeen in any attachment and closes nobody.
    async with (
        open_test_server(ROUTES) as server,
        server.connect("/managed/lobby?userId=ann") as ann,
    ):
        start = trio.current_time()
        assert await ann.receive_close() == (1000, "Idle timeout")
        assert trio.current_time() - start == pytest.approx(60.001, abs=1e-6)  # floats of 1.7e9 s


async def test_managed_a_socket_that_speaks_stays(autojump_clock: trio.abc.Clock) -> None:
    # The guide's webSocketMessage updates a map that nothing fills, not the attachment.
    async with (
        open_test_server(ROUTES) as server,
        server.connect("/managed/lobby?userId=ann") as ann,
        server.connect("/managed/lobby?userId=bob") as bob,
    ):
        start = trio.current_time()
        for _ in range(3):
            await trio.sleep(45)
            await bob.send("still here")
            assert await bob.receive_text() == "still here"
            if trio.current_time() - start < 60:
                assert await ann.receive_text() == "still here"
        assert ann.close_code == 1000 and ann.close_reason == "Idle timeout"
        assert bob.close_code is None
        assert await bob.receive_close() == (1000, "Idle timeout")
        # Due a minute and a millisecond after bob's last message, on Date.now()'s
        # whole milliseconds: up to one of them sooner.
        assert 135 + 60 < trio.current_time() - start <= 135 + 60.001 + 1e-6


class Drowsy(ManagedRoom):
    hibernate_after = 1.0


async def test_managed_the_sweep_works_across_hibernation(autojump_clock: trio.abc.Clock) -> None:
    async with (
        open_test_server({"/managed": Drowsy}) as server,
        server.connect("/managed/lobby?userId=ann") as ann,
    ):
        start = trio.current_time()
        await trio.sleep(30)
        assert server.room("lobby", "/managed") is None  # hibernated
        await ann.send("at 30 s")  # wakes it: lastSeen goes to the attachment
        assert await ann.receive_text() == "at 30 s"
        await trio.sleep(2)
        assert server.room("lobby", "/managed") is None  # hibernated again
        assert await ann.receive_close() == (1000, "Idle timeout")
        assert 30 + 60 < trio.current_time() - start <= 30 + 60.001 + 1e-6


async def test_managed_pings_answered_without_waking_the_room_count_as_seen(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with (
        open_test_server({"/managed": Drowsy}) as server,
        server.connect("/managed/lobby?userId=ann") as ann,
    ):
        start = trio.current_time()
        for _ in range(3):
            await trio.sleep(45)
            await ann.send("ping")
            assert await ann.receive_text() == "pong"
            assert server.room("lobby", "/managed") is None  # not woken
        assert await ann.receive_close() == (1000, "Idle timeout")
        assert 135 + 60 < trio.current_time() - start <= 135 + 60.001 + 1e-6


# ProtocolRoom


async def test_protocol_room_speaks_the_guides_typed_messages(start: Start) -> None:
    server = await start(ROUTES)
    url = f"{server.url}/protocol/lobby?userId="
    async with opened(url + "ann") as ann, open_client(url + "bob") as bob:
        assert json.loads(await recv(ann)) == {"type": "user_joined", "userId": "bob"}
        before = time.time()
        with trio.fail_after(WAIT):
            await bob.send_message('{"type": "chat", "message": "hi"}')
            from_bob = [json.loads(await recv(ann)), json.loads(await bob.get_message())]
        for sent in from_bob:
            assert list(sent) == ["type", "from", "message", "timestamp"]
            assert sent["type"] == "chat" and sent["from"] == "bob" and sent["message"] == "hi"
            assert before * 1000 - 1 <= sent["timestamp"] <= time.time() * 1000
        await ann.send('{"type": "typing"}')
        with trio.fail_after(WAIT):
            assert json.loads(await bob.get_message()) == {"type": "typing", "userId": "ann"}
        await ann.send('{"type": "ping"}')  # the next thing ann gets: not its own typing
        assert json.loads(await recv(ann)) == {"type": "pong"}


async def test_protocol_room_tells_who_left(start: Start) -> None:
    server = await start(ROUTES)
    url = f"{server.url}/protocol/lobby?userId="
    async with opened(url + "ann") as ann:
        async with opened(url + "bob"):
            assert json.loads(await recv(ann)) == {"type": "user_joined", "userId": "bob"}
        assert json.loads(await recv(ann)) == {"type": "user_left", "userId": "bob"}
        async with opened(f"{server.url}/protocol/lobby"):
            assert json.loads(await recv(ann)) == {"type": "user_joined", "userId": "anonymous"}


@pytest.mark.parametrize(
    ("sent", "reply"),
    [
        ('{"type": "chat"}', "invalid 'chat' message: field 'message' is missing"),
        (
            '{"type": "chat", "message": 7}',
            "invalid 'chat' message: field 'message' must be a string, not an integer",
        ),
        (
            '{"type": "join", "userId": "ann"}',  # what the guide's client sends on open
            "unknown message type 'join'; expected one of: chat, typing, ping",
        ),
        ('{"type": "chat", "message": ""}', "a chat message is 1 to 4096 characters"),
        (
            json.dumps({"type": "chat", "message": "x" * 4097}),
            "a chat message is 1 to 4096 characters",
        ),
    ],
)
async def test_protocol_room_answers_what_it_cannot_take_with_an_error(
    start: Start, sent: str, reply: str
) -> None:
    server = await start(ROUTES)
    async with opened(f"{server.url}/protocol/lobby?userId=ann") as ann:
        await ann.send(sent)
        assert json.loads(await recv(ann)) == {"type": "error", "message": reply}
        await ann.send('{"type": "ping"}')
        assert json.loads(await recv(ann)) == {"type": "pong"}


async def test_protocol_room_with_roomkits_client_decodes_to_the_guides_types(
    start: Start,
) -> None:
    server = await start(ROUTES)
    protocol = ProtocolRoom.protocol
    url = f"{server.url}/protocol/lobby?userId=ann"
    async with roomkit.connect(url, protocol=protocol) as ann:
        with trio.fail_after(WAIT):
            await ann.send(SendChat("x" * 4096))
            chat = await ann.receive()
            assert isinstance(chat, Chat) and (chat.from_, chat.message) == ("ann", "x" * 4096)
            await ann.send(SendChat(""))
            assert await ann.receive() == Error("a chat message is 1 to 4096 characters")


# The command line


def test_roomkit_serve_serves_the_guide_routes() -> None:
    with roomkit_serve("examples.guide:ROUTES", "--storage", ":memory:") as (_, url):
        with connect_sync(f"{url}/chat/lobby") as chat:
            chat.send("hello")
            assert chat.recv(timeout=WAIT) == "hello"
        with connect_sync(f"{url}/tagged/lobby?userId=ann") as tagged:
            tagged.send('{"type": "direct", "targetUserId": "ann"}')
            assert tagged.recv(timeout=WAIT) == '{"type":"direct","targetUserId":"ann"}'
        with connect_sync(f"{url}/protocol/lobby?userId=ann") as typed:
            typed.send('{"type": "ping"}')
            assert json.loads(typed.recv(timeout=WAIT)) == {"type": "pong"}
