"""The demo's chat room (examples/chat.py), end to end over real sockets."""

from __future__ import annotations

import pytest
import trio
import trio_websocket

from examples.chat import ChatRoom

from .helpers import Start, open_client, receive_json


async def test_join_chat_and_leave(start: Start) -> None:
    server = await start(ChatRoom)
    url = f"{server.url}/lobby?userId="
    async with open_client(url + "ann") as ann:
        assert await receive_json(ann) == {"type": "welcome", "user": "ann", "users": ["ann"]}
        async with open_client(url + "bob") as bob:
            welcome = await receive_json(bob)
            assert welcome == {"type": "welcome", "user": "bob", "users": ["ann", "bob"]}
            assert await receive_json(ann) == {"type": "user_joined", "user": "bob"}

            await bob.send_message('{"type": "chat", "text": "hi all"}')
            for ws in (ann, bob):
                message = await receive_json(ws)
                assert (message["type"], message["user"], message["text"]) == (
                    "message",
                    "bob",
                    "hi all",
                )

            await ann.send_message('{"type": "typing"}')
            assert await receive_json(bob) == {"type": "user_typing", "user": "ann", "active": True}

            await ann.send_message('{"type": "ping"}')
            assert await receive_json(ann) == {"type": "pong"}
        assert await receive_json(ann) == {"type": "user_left", "user": "bob"}


async def test_direct_messages_reach_every_tab_of_one_user(start: Start) -> None:
    server = await start(ChatRoom)
    url = f"{server.url}/lobby?userId="
    async with (
        open_client(url + "ann") as ann,
        open_client(url + "bob") as bob_1,
        open_client(url + "bob") as bob_2,
        open_client(url + "cy") as cy,
    ):
        await receive_json(ann)  # welcome
        for _ in range(2):  # bob joined once (a second tab is not a new user), cy joined
            assert (await receive_json(ann))["type"] == "user_joined"
        for ws in (bob_1, bob_2, cy):
            assert (await receive_json(ws))["type"] == "welcome"
        await receive_json(bob_1)  # cy joined
        await receive_json(bob_2)

        await ann.send_message('{"type": "direct", "to": "bob", "text": "psst"}')
        for ws in (bob_1, bob_2, ann):  # both of bob's tabs, and ann's own copy
            message = await receive_json(ws)
            assert (message["type"], message["user"], message["to"], message["text"]) == (
                "direct_message",
                "ann",
                "bob",
                "psst",
            )
        await ann.send_message('{"type": "direct", "to": "zed", "text": "hello?"}')
        assert await receive_json(ann) == {
            "type": "undeliverable",
            "to": "zed",
            "reason": "zed is not in this room",
        }
        await ann.send_message('{"type": "direct", "to": "all", "text": "everyone?"}')
        assert (await receive_json(ann))["reason"] == "direct messages go to one user"
        # cy saw none of it: the next thing cy gets is its own pong.
        await cy.send_message('{"type": "ping"}')
        assert await receive_json(cy) == {"type": "pong"}


async def test_joining_without_a_user_id_is_refused(start: Start) -> None:
    server = await start(ChatRoom)
    with pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with open_client(f"{server.url}/lobby"):
            pass
    assert info.value.status_code == 400
    assert b"userId" in (info.value.body or b"")


async def test_bad_messages_get_an_error_and_the_chat_goes_on(start: Start) -> None:
    server = await start(ChatRoom)
    async with open_client(f"{server.url}/lobby?userId=ann") as ann:
        await receive_json(ann)
        await ann.send_message('{"type": "direct", "to": "bob"}')
        error = await receive_json(ann)
        assert error == {
            "type": "error",
            "message": "invalid 'direct' message: field 'text' is missing",
        }
        await ann.send_message('{"type": "ping"}')
        with trio.fail_after(5):
            assert await receive_json(ann) == {"type": "pong"}
