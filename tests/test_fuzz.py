"""Property: whatever a client sends to a typed room - arbitrary JSON, text or bytes -
it gets back either what its message decoded to or a clear error, and the room keeps
answering. Hypothesis makes the inputs; each example runs a fresh server, in memory
(roomkit.testing: the real server code without sockets), so examples cost little."""

from __future__ import annotations

import json
from typing import Any

import attrs
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import roomkit
from roomkit.testing import open_test_server


@attrs.frozen
class Chat:
    text: str


@attrs.frozen
class Move:
    x: float
    y: float
    path: list[int] = attrs.Factory(list)


@attrs.frozen
class Echoed:
    message: str


class Typed(roomkit.Room):
    protocol = roomkit.Protocol(client=Chat | Move, server=Echoed)
    rate_limit = None

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        assert isinstance(message, Chat | Move)
        conn.send(Echoed(repr(message)))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
near_misses = st.fixed_dictionaries(
    {"type": st.sampled_from(["chat", "move", "Chat", "", "echoed"])},
    optional={"text": json_values, "x": json_values, "y": json_values, "path": json_values},
)
inputs = st.one_of(
    json_values.map(json.dumps),
    near_misses.map(json.dumps),
    st.text(max_size=200),
    st.binary(max_size=200),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(inputs, min_size=1, max_size=15))
def test_every_input_gets_a_message_or_a_clear_error(messages: list[str | bytes]) -> None:
    trio.run(_exchange, messages)


async def _exchange(messages: list[str | bytes]) -> None:
    async with open_test_server(Typed) as server, server.connect("/fuzz") as client:
        for message in messages:
            await client.send(message)
            reply = await client.receive_json()
            if reply["type"] == "error":
                assert isinstance(reply["message"], str) and reply["message"]
            else:
                assert reply["type"] == "echoed"
                sent = json.loads(message)
                assert sent["type"] in ("chat", "move")
        await client.send('{"type": "chat", "text": "still there?"}')
        assert (await client.receive_json())["message"] == "Chat(text='still there?')"
