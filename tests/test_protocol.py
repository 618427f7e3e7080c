"""The message codec (pure), and what a client gets for bad input (real sockets)."""

from __future__ import annotations

import json
import typing
from typing import Any

import attrs
import pytest
import trio

import roomkit
from roomkit._converter import make_converter
from roomkit._protocol import MessageSet, type_tag

from .helpers import Start, open_client, receive_json


def message_set(classes: Any) -> MessageSet:
    """One side of a protocol, with a strict converter of its own."""
    return MessageSet(classes, make_converter())


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

    with pytest.raises(TypeError, match="has a field named 'type'"):
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
