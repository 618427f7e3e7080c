"""The message codec (pure), what a client gets for bad input (real sockets), and the
guide's typed protocol in a room driven through roomkit.testing (in memory,
``autojump_clock``)."""

from __future__ import annotations

import datetime
import json
import typing
from typing import Any

import attrs
import pytest
import trio

import roomkit
from examples import guide
from examples.guide import Chat as ChatPosted
from examples.guide import (
    Error,
    Ping,
    Pong,
    ProtocolRoom,
    SendChat,
    Typing,
    UserTyping,
)
from roomkit._converter import make_converter
from roomkit._protocol import MessageSet, error_message, type_tag
from roomkit.testing import open_test_server

from .helpers import Start, open_client, receive_json


def message_set(classes: Any) -> MessageSet:
    """One side of a protocol, with a strict converter of its own."""
    return roomkit.Protocol(client=classes, server=classes).client


@attrs.frozen
class Chat:
    text: str
    count: int = 0


@attrs.frozen
class Move:
    x: float
    y: float
    path: list[str] = attrs.Factory(list)


@attrs.frozen
class UserJoined:
    user: str
    admin: bool = False


@attrs.frozen
class HTTPError:
    status: int


def test_type_tags_are_snake_case_class_names() -> None:
    assert type_tag(UserJoined) == "user_joined"
    assert type_tag(Chat) == "chat"
    assert type_tag(HTTPError) == "http_error"


def test_round_trip_through_json() -> None:
    messages = message_set(Chat | Move)
    assert messages.decode(messages.encode(Chat("hi", 2))) == Chat("hi", 2)
    assert messages.decode('{"type": "move", "x": 1, "y": 2.5}') == Move(1.0, 2.5)
    assert json.loads(messages.encode(Move(1, 2, ["a"]))) == {
        "type": "move",
        "x": 1,
        "y": 2,
        "path": ["a"],
    }


def test_single_class_and_typing_union_are_accepted() -> None:
    assert message_set(Chat).classes == (Chat,)
    assert message_set(typing.Union[Chat, Move]).classes == (Chat, Move)  # noqa: UP007


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ("{nope", "malformed JSON: Expecting property name enclosed in double quotes"),
        ("[1, 2]", "a message must be a JSON object, not an array"),
        ('{"text": "hi"}', "the message has no 'type' field; expected one of: chat, move"),
        ('{"type": "shout"}', "unknown message type 'shout'; expected one of: chat, move"),
        ('{"type": 7}', "the 'type' field must be a string, not an integer"),
        ('{"type": null}', "the 'type' field must be a string, not null"),
        ('{"type": "chat"}', "invalid 'chat' message: field 'text' is missing"),
        (
            '{"type": "chat", "text": 5}',
            "invalid 'chat' message: field 'text' must be a string, not an integer",
        ),
        (
            '{"type": "chat", "text": "a", "count": 1.5}',
            "invalid 'chat' message: field 'count' must be an integer, not a number",
        ),
        (
            '{"type": "chat", "text": "a", "count": true}',
            "invalid 'chat' message: field 'count' must be an integer, not a boolean",
        ),
        (
            '{"type": "move", "x": "1", "y": 2}',
            "invalid 'move' message: field 'x' must be a number, not a string",
        ),
        (
            '{"type": "move", "x": 1, "y": 2, "path": "ab"}',
            "invalid 'move' message: field 'path' must be an array, not a string",
        ),
        (
            '{"type": "move", "x": 1, "y": 2, "path": ["a", null]}',
            "invalid 'move' message: field 'path[1]' must be a string, not null",
        ),
    ],
)
def test_decode_errors_say_what_is_wrong(data: str, error: str) -> None:
    with pytest.raises(roomkit.DecodeError) as info:
        message_set(Chat | Move).decode(data)
    assert str(info.value).startswith(error)


@attrs.frozen
class Point:
    x: float
    y: float


@attrs.frozen
class Place:
    at: Point


def test_nested_messages_are_checked_too() -> None:
    messages = message_set(Place)
    assert messages.decode('{"type": "place", "at": {"x": 1, "y": 2}}') == Place(Point(1, 2))
    with pytest.raises(roomkit.DecodeError, match="field 'at' must be an object, not a string"):
        messages.decode('{"type": "place", "at": "a"}')
    with pytest.raises(roomkit.DecodeError, match=r"field 'at\.y' is missing"):
        messages.decode('{"type": "place", "at": {"x": 1}}')


def test_several_problems_are_all_named() -> None:
    with pytest.raises(roomkit.DecodeError) as info:
        message_set(Move).decode('{"type": "move", "x": null}')
    assert "field 'x' must be a number, not null" in str(info.value)
    assert "field 'y' is missing" in str(info.value)


def test_encoding_a_foreign_message_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"Move is not one of this protocol's messages \(Chat\)"):
        message_set(Chat).encode(Move(1, 2))


def test_bad_message_sets_are_refused() -> None:
    @attrs.frozen
    class Typed:
        type: str

    with pytest.raises(TypeError, match="Typed has a field named 'type': that is the tag"):
        message_set(Typed)
    with pytest.raises(TypeError, match="is not an attrs class"):
        message_set(int)
    with pytest.raises(TypeError, match="expected an attrs class or a union"):
        message_set("chat")

    @attrs.frozen
    class Chat:  # same wire name as the module's Chat
        pass

    with pytest.raises(ValueError, match="share the tag 'chat'"):
        message_set(Chat | globals()["Chat"])


def test_a_room_protocol_must_be_a_protocol() -> None:
    with pytest.raises(TypeError, match=r"protocol must be a roomkit\.Protocol"):

        class Wrong(roomkit.Room):
            protocol = Chat  # type: ignore[assignment]


class Typed(roomkit.Room):
    protocol = roomkit.Protocol(client=Chat | Move, server=UserJoined | Chat)

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        conn.send(UserJoined(request.query.get("user", "anon")))

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        assert isinstance(message, Chat | Move)
        if isinstance(message, Chat):
            self.broadcast(Chat(message.text.upper(), message.count + 1))


async def test_typed_room_decodes_and_encodes(start: Start) -> None:
    server = await start(Typed)
    async with open_client(f"{server.url}/t?user=ann") as ws:
        assert await receive_json(ws) == {"type": "user_joined", "user": "ann", "admin": False}
        await ws.send_message('{"type": "chat", "text": "hi", "count": 1}')
        assert await receive_json(ws) == {"type": "chat", "text": "HI", "count": 2}


async def test_every_kind_of_bad_input_gets_an_error_and_the_room_goes_on(start: Start) -> None:
    server = await start(Typed)
    async with open_client(f"{server.url}/t") as ws:
        await receive_json(ws)  # user_joined
        cases = [
            ("not json", "malformed JSON"),
            ('{"type": "dance"}', "unknown message type 'dance'; expected one of: chat, move"),
            ('{"type": "chat"}', "invalid 'chat' message: field 'text' is missing"),
            ('{"type": "chat", "text": 1}', "field 'text' must be a string, not an integer"),
            ('{"type": "move", "x": 1, "y": 1.9, "path": "p"}', "field 'path' must be an array"),
            (b'{"type": "chat"}', "binary messages are not part of this room's protocol"),
        ]
        for data, error in cases:
            await ws.send_message(data)
            reply = await receive_json(ws)
            assert reply["type"] == "error"
            assert error in reply["message"], reply
        await ws.send_message('{"type": "chat", "text": "still", "count": 0}')
        assert await receive_json(ws) == {"type": "chat", "text": "STILL", "count": 1}


async def test_sending_a_message_outside_the_protocol_raises_in_the_hook(start: Start) -> None:
    class Sloppy(Typed):
        async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
            try:
                conn.send(Move(0, 0))  # a client message: not something the server sends
            except TypeError as exc:
                conn.send(str(exc))

    server = await start(Sloppy)
    async with open_client(f"{server.url}/t") as ws:
        await receive_json(ws)
        await ws.send_message('{"type": "chat", "text": "x"}')
        with trio.fail_after(5):
            assert "Move is not one of this protocol's messages" in await ws.get_message()


# One converter per protocol.


def lenient_strings(protocol: roomkit.Protocol) -> roomkit.Protocol:
    """``protocol``, made to take any JSON value for a ``str`` field, as its text."""
    protocol.converter.register_structure_hook(str, lambda value, _: str(value))
    return protocol


def test_a_protocols_hooks_change_its_own_messages_only() -> None:
    lenient = lenient_strings(roomkit.Protocol(client=Chat, server=Chat))
    strict = roomkit.Protocol(client=Chat, server=Chat)
    assert lenient.client.decode('{"type": "chat", "text": 5}') == Chat("5")
    assert lenient.server.decode('{"type": "chat", "text": 5}') == Chat("5")
    with pytest.raises(roomkit.DecodeError, match="field 'text' must be a string"):
        strict.client.decode('{"type": "chat", "text": 5}')
    assert lenient.converter is not strict.converter


def test_hooks_registered_after_a_decode_apply_from_the_next() -> None:
    protocol = roomkit.Protocol(client=Place, server=Chat)
    with pytest.raises(roomkit.DecodeError, match=r"field 'at\.x' must be a number"):
        protocol.client.decode('{"type": "place", "at": {"x": "1", "y": 2}}')
    protocol.converter.register_structure_hook(float, lambda value, _: float(value))
    assert protocol.client.decode('{"type": "place", "at": {"x": "1", "y": 2}}') == Place(
        Point(1, 2)
    )


def test_a_given_converter_is_copied_hooks_and_all() -> None:
    given = lenient_strings(roomkit.Protocol(client=Chat, server=Chat)).converter
    protocol = roomkit.Protocol(client=Chat, server=Chat, converter=given)
    given.register_structure_hook(str, lambda value, _: "changed later")
    assert protocol.converter is not given
    assert protocol.client.decode('{"type": "chat", "text": 5}') == Chat("5")


def test_a_converter_must_be_a_cattrs_converter() -> None:
    with pytest.raises(TypeError, match=r"converter must be a cattrs\.Converter, not dict"):
        roomkit.Protocol(client=Chat, server=Chat, converter={})  # type: ignore[arg-type]


def test_the_process_wide_converter_is_gone_with_a_pointer() -> None:
    with pytest.raises(AttributeError, match=r"roomkit\.converter was removed: .*protocol\.conv"):
        roomkit.converter  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(AttributeError, match="module 'roomkit' has no attribute 'nothing'"):
        roomkit.nothing  # type: ignore[attr-defined]  # noqa: B018


# Wire names: of message types, and of fields.

# The typed protocol of Cloudflare's WebSockets guide, as examples.guide writes it. Client:
# chat{message}, typing, ping. Server: chat{from, message, timestamp}, typing{userId}, pong,
# user_joined{userId}, user_left{userId}, error{message}.

GUIDE = ProtocolRoom.protocol


@attrs.frozen
class Joined:
    user_id: str


def test_a_mapping_names_each_message_type() -> None:
    assert GUIDE.client.classes == (SendChat, Typing, Ping)
    assert GUIDE.client.encode(SendChat("hi")) == '{"type":"chat","message":"hi"}'
    assert GUIDE.client.decode('{"type": "typing"}') == Typing()
    with pytest.raises(roomkit.DecodeError, match=r"expected one of: chat, typing, ping$"):
        GUIDE.client.decode('{"type": "send_chat", "message": "hi"}')


def test_a_client_and_a_server_type_may_share_a_wire_name() -> None:
    posted = ChatPosted(from_="ann", message="hi", timestamp=1700000000000)
    text = '{"type":"chat","from":"ann","message":"hi","timestamp":1700000000000}'
    assert GUIDE.server.encode(posted) == text
    assert GUIDE.server.decode(text) == posted
    assert GUIDE.client.decode(text) == SendChat("hi")
    assert GUIDE.server.encode(guide.UserJoined("ann")) == '{"type":"user_joined","userId":"ann"}'


@pytest.mark.parametrize(
    ("classes", "error", "match"),
    [
        ({}, ValueError, "a mapping of message classes must name at least one"),
        ({1: Chat}, TypeError, "a message type's wire name must be a str, not int"),
        ({"": Chat}, ValueError, "wire name must be a non-empty string .*, not ''"),
        ({" chat": Chat}, ValueError, "with no space at either end, not ' chat'"),
        ({"chat\n": Chat}, ValueError, "of printable characters.*, not 'chat\\\\n'"),
        ({"a": Chat, "b": Move, "c": Chat}, ValueError, "Chat is listed twice, as 'a' and 'c'"),
        ({"chat": int}, TypeError, "<class 'int'> is not an attrs class"),
        ({"chat": "Chat"}, TypeError, "'chat' must name an attrs class, not 'Chat'"),
        ({"chat": Chat(1)}, TypeError, "'chat' must name an attrs class, not Chat"),
    ],
)
def test_bad_mappings_are_refused(classes: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        roomkit.Protocol(client=classes, server=Chat)
    with pytest.raises(error, match=match):
        roomkit.Protocol(client=Chat, server=classes)


@attrs.frozen
class Keywords:
    from_: str
    class_: int = 0
    id_: str = ""  # not a keyword: it keeps its underscore


def test_a_keyword_field_travels_as_the_keyword() -> None:
    messages = message_set(Keywords)
    text = '{"type":"keywords","from":"ann","class":2,"id_":"x"}'
    assert messages.encode(Keywords("ann", 2, "x")) == text
    assert messages.decode(text) == Keywords("ann", 2, "x")
    with pytest.raises(roomkit.DecodeError, match=r"field 'from' is missing$"):
        messages.decode('{"type": "keywords", "from_": "ann"}')


@attrs.frozen
class Spot:
    x_pos: float
    label: str = attrs.field(default="", metadata=roomkit.wire_name("name"))


@attrs.frozen
class Named:
    sender: str = attrs.field(metadata=roomkit.wire_name("from"))
    room_id: str = attrs.field(metadata={**roomkit.wire_name("room-id"), "doc": "kept"})
    spots: list[Spot] = attrs.Factory(list)


def test_wire_name_metadata_names_a_field_in_every_protocol() -> None:
    message = Named("ann", "r1", [Spot(1.0, "here")])
    for field_names in (None, "camelCase"):
        messages = roomkit.Protocol(client=Named, server=Named, field_names=field_names).client
        assert json.loads(messages.encode(message)) == {
            "type": "named",
            "from": "ann",
            "room-id": "r1",
            "spots": [{"xPos" if field_names else "x_pos": 1.0, "name": "here"}],
        }
        assert messages.decode(messages.encode(message)) == message
    assert attrs.fields(Named).room_id.metadata["doc"] == "kept"


@pytest.mark.parametrize(
    ("name", "error", "match"),
    [
        (7, TypeError, "a field's wire name must be a str, not int"),
        ("", ValueError, "a field's wire name must be a non-empty string"),
        ("from ", ValueError, "no space at either end, not 'from '"),
    ],
)
def test_a_bad_wire_name_is_refused(name: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        roomkit.wire_name(name)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ('{"type": "named", "room-id": "r"}', "invalid 'named' message: field 'from' is missing"),
        (
            '{"type": "named", "from": 1, "room-id": "r"}',
            "invalid 'named' message: field 'from' must be a string, not an integer",
        ),
        (
            '{"type": "named", "from": "a", "room-id": "r", "spots": [{"xPos": 1}, {"name": 2}]}',
            "invalid 'named' message: field 'spots[1].xPos' is missing; "
            "field 'spots[1].name' must be a string, not an integer",
        ),
        (
            '{"type": "chat", "from": "a", "message": "m", "timestamp": 1.5}',
            "invalid 'chat' message: field 'timestamp' must be an integer, not a number",
        ),
        (
            '{"type": "typing", "user_id": "a"}',
            "invalid 'typing' message: field 'userId' is missing",
        ),
    ],
)
def test_decode_errors_name_fields_as_the_peer_sent_them(data: str, error: str) -> None:
    messages = roomkit.Protocol(
        client=Named,
        server={"named": Named, "chat": ChatPosted, "typing": UserTyping},
        field_names="camelCase",
    ).server
    with pytest.raises(roomkit.DecodeError) as info:
        messages.decode(data)
    assert str(info.value) == error


@attrs.frozen
class Cased:
    user_id: str
    target_user_id: str = ""
    x2_y: int = 0
    _secret: str = ""
    a__b: int = 0


def test_camel_case_field_names() -> None:
    messages = roomkit.Protocol(client=Cased, server=Cased, field_names="camelCase").client
    message = Cased("u", "t", 2, "s", 3)
    text = '{"type":"cased","userId":"u","targetUserId":"t","x2Y":2,"_secret":"s","a__b":3}'
    assert messages.encode(message) == text
    assert messages.decode(text) == message


def test_field_names_may_be_a_function_of_the_python_name() -> None:
    seen: list[str] = []

    def upper(name: str) -> str:
        seen.append(name)
        return name.upper()

    messages = roomkit.Protocol(client=Keywords | Named, server=Chat, field_names=upper).client
    assert messages.encode(Keywords("ann")) == '{"type":"keywords","FROM":"ann","CLASS":0,"ID_":""}'
    assert messages.decode('{"type": "keywords", "FROM": "b"}') == Keywords("b")
    assert {"from", "class", "id_", "spots", "x_pos"} <= set(seen)
    assert {"from_", "sender", "room_id", "label"}.isdisjoint(seen)  # keyword; wire_name


@pytest.mark.parametrize(
    ("field_names", "error", "match"),
    [
        (
            "snake_case",
            ValueError,
            "field_names must be one of 'camelCase' or a function, not 'snake_case'",
        ),
        (3, TypeError, "field_names must be a str or a function, not int"),
        (lambda name: "", ValueError, r"field_names\('text'\) for Chat must be a non-empty string"),
        (lambda name: 5, TypeError, r"field_names\('text'\) for Chat must be a str, not int"),
        (lambda name: "same", ValueError, "Chat.text and Chat.count share the wire name 'same'"),
        (
            lambda name: "type" if name == "text" else name,
            TypeError,
            "Chat has a field 'text' that travels as 'type'",
        ),
    ],
)
def test_bad_field_names_are_refused(field_names: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        roomkit.Protocol(client=Chat, server=Chat, field_names=field_names)


@attrs.frozen
class Clash:
    to: str
    target: str = attrs.field(default="", metadata=roomkit.wire_name("to"))


@attrs.frozen
class HoldsClash:
    inner: Clash | None = None


@attrs.frozen
class Kind:
    type: str = attrs.field(metadata=roomkit.wire_name("kind"))


@attrs.frozen
class Tagged:
    kind: str = attrs.field(metadata=roomkit.wire_name("type"))


def test_a_field_may_be_named_type_only_off_the_wire() -> None:
    messages = message_set(Kind)
    assert messages.encode(Kind("a")) == '{"type":"kind","kind":"a"}'
    with pytest.raises(
        TypeError, match="Tagged has a field 'kind' that travels as 'type': that is the tag"
    ):
        message_set(Tagged)


def test_two_fields_with_one_wire_name_are_refused_nested_ones_too() -> None:
    with pytest.raises(ValueError, match=r"Clash\.to and Clash\.target share the wire name 'to'"):
        message_set(Clash)
    with pytest.raises(ValueError, match=r"Clash\.to and Clash\.target share the wire name 'to'"):
        roomkit.Protocol(client=Chat, server=HoldsClash)


def test_protocols_naming_one_class_differently_do_not_interfere() -> None:
    camel = roomkit.Protocol(client=Joined, server=Joined, field_names="camelCase")
    plain = roomkit.Protocol(client=Joined, server=Joined)
    copied = roomkit.Protocol(client=Joined, server=Joined, converter=camel.converter)
    for _ in range(2):  # and after their hooks are cached
        assert camel.server.encode(Joined("a")) == '{"type":"joined","userId":"a"}'
        assert plain.server.encode(Joined("a")) == '{"type":"joined","user_id":"a"}'
        assert copied.server.encode(Joined("a")) == '{"type":"joined","user_id":"a"}'
        assert camel.client.decode('{"type": "joined", "userId": "b"}') == Joined("b")
        assert plain.client.decode('{"type": "joined", "user_id": "b"}') == Joined("b")
    with pytest.raises(roomkit.DecodeError, match="field 'user_id' is missing"):
        plain.client.decode('{"type": "joined", "userId": "b"}')


@attrs.frozen
class Stamp:
    at: datetime.datetime


@attrs.frozen
class Stamped:
    user_id: str
    stamp: Stamp
    when: datetime.datetime


def test_hooks_of_a_given_converter_still_apply_beside_the_names() -> None:
    given = make_converter()
    given.register_unstructure_hook(datetime.datetime, datetime.datetime.isoformat)
    given.register_structure_hook(
        datetime.datetime, lambda value, _: datetime.datetime.fromisoformat(value)
    )
    given.register_unstructure_hook(Stamp, lambda stamp: stamp.at.timestamp())
    given.register_structure_hook(
        Stamp, lambda value, _: Stamp(datetime.datetime.fromtimestamp(value, datetime.UTC))
    )
    protocol = roomkit.Protocol(
        client=Stamped, server=Stamped, converter=given, field_names="camelCase"
    )
    at = datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC)
    text = '{"type":"stamped","userId":"a","stamp":1767312000.0,"when":"2026-01-02T00:00:00+00:00"}'
    assert protocol.server.encode(Stamped("a", Stamp(at), at)) == text
    assert protocol.client.decode(text) == Stamped("a", Stamp(at), at)


def test_roomkits_error_replies_decode_as_a_servers_own_error_class() -> None:
    for reply in (error_message("malformed JSON"), error_message("slow down", code="rate_limited")):
        assert isinstance(GUIDE.server.decode(reply), Error)
    assert GUIDE.server.decode(error_message("no")) == Error("no")


class GuideRoom(roomkit.Room):
    """The guide's ProtocolRoom: user ids from ``?userId=``, time from Trio's clock."""

    protocol = GUIDE

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        conn.attachment = request.query.get("userId", "anonymous")
        self.broadcast(guide.UserJoined(conn.attachment), exclude=[conn])

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        user = conn.attachment
        if isinstance(message, SendChat):
            millis = int(trio.current_time() * 1000)
            self.broadcast(ChatPosted(from_=user, message=message.message, timestamp=millis))
        elif isinstance(message, Typing):
            self.broadcast(UserTyping(user), exclude=[conn])
        else:
            conn.send(Pong())

    async def on_close(
        self, conn: roomkit.Connection, code: int, reason: str, was_clean: bool
    ) -> None:
        self.broadcast(guide.UserLeft(conn.attachment), exclude=[conn])


async def test_a_room_speaks_the_guides_protocol(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_server(GuideRoom) as server, server.connect("/r?userId=ann") as ann:
        async with server.connect("/r?userId=bob") as bob:
            assert await ann.receive() == {"type": "user_joined", "userId": "bob"}
            await trio.sleep(1.5)
            await bob.send({"type": "chat", "message": "hi"})
            posted = {"type": "chat", "from": "bob", "message": "hi", "timestamp": 1500}
            assert await ann.receive() == posted
            assert await bob.receive() == posted
            await ann.send(Typing())
            assert await bob.receive() == {"type": "typing", "userId": "ann"}
            await bob.send({"type": "ping"})
            assert await bob.receive() == {"type": "pong"}
            await bob.send({"type": "chat", "text": "hi"})
            reply = await bob.receive_text()
            assert reply == error_message("invalid 'chat' message: field 'message' is missing")
            assert GUIDE.server.decode(reply) == Error(
                "invalid 'chat' message: field 'message' is missing"
            )
            await ann.receive_nothing()
        assert await ann.receive() == {"type": "user_left", "userId": "bob"}


async def test_roomkits_client_receives_error_replies_as_the_servers_error_class(
    start: Start,
) -> None:
    server = await start(GuideRoom)
    async with roomkit.connect(f"{server.url}/r?userId=ann", protocol=GUIDE) as client:
        await client.send('{"type": "chat"}')
        with trio.fail_after(5):
            assert await client.receive() == Error(
                "invalid 'chat' message: field 'message' is missing"
            )
        await client.send(SendChat("hi"))
        with trio.fail_after(5):
            posted = await client.receive()
        assert isinstance(posted, ChatPosted)
        assert (posted.from_, posted.message) == ("ann", "hi")


def test_a_message_a_users_hook_unstructures_oddly_is_encoded_as_before() -> None:
    protocol = roomkit.Protocol(client=Chat, server=Pong | Chat)
    protocol.converter.register_unstructure_hook(Chat, lambda chat: {"type": "x", "t": chat.text})
    assert protocol.server.encode(Chat("hi")) == '{"type":"x","t":"hi"}'
    protocol.converter.register_unstructure_hook(Pong, lambda pong: [1])
    with pytest.raises(TypeError):
        protocol.server.encode(Pong())
