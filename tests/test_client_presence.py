"""roomkit.connect keeps the room's presence (docs/presence.md) in sync, against
roomkit's own server (examples/chat.py, keyed by user) over real sockets, under
asyncio and Trio: ``client.presence`` and ``on_presence``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest

import roomkit

from .clientservers import ThreadServer


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with ThreadServer() as server:
        yield server.url


class Watch:
    """A client's on_presence: every event, and a way to wait for a presence."""

    def __init__(self) -> None:
        self.events: list[roomkit.PresenceEvent] = []
        self._changed = anyio.Event()

    def __call__(self, event: roomkit.PresenceEvent) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = anyio.Event()

    async def until(self, holds: Callable[[dict[str, list[dict[str, Any]]]], bool]) -> None:
        """Until the last event's presence ``holds`` (at most 5 s)."""
        with anyio.fail_after(5):
            while not (self.events and holds(self.events[-1].presence)):
                await self._changed.wait()


def tabs(presence: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    return {key: len(metas) for key, metas in presence.items()}


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_client_sees_joins_two_tabs_and_leaves(backend: str, url: str) -> None:
    async def main() -> None:
        room = f"{url}/chat/presence-{backend}?userId="
        ann_watch, bob_watch = Watch(), Watch()
        async with roomkit.connect(room + "ann", on_presence=ann_watch) as ann:
            await ann_watch.until(lambda p: tabs(p) == {"ann": 1})
            assert ann.session is not None
            me = {"user": "ann", "ref": ann.session.id}
            assert ann_watch.events[0].joins == {"ann": [me]}
            assert ann_watch.events[0].leaves == {}
            assert ann.presence == {"ann": [me]}
            async with roomkit.connect(room + "bob") as bob_1:
                await ann_watch.until(lambda p: tabs(p) == {"ann": 1, "bob": 1})
                async with roomkit.connect(room + "bob", on_presence=bob_watch) as bob_2:
                    await ann_watch.until(lambda p: tabs(p) == {"ann": 1, "bob": 2})
                    await bob_watch.until(lambda p: tabs(p) == {"ann": 1, "bob": 2})
                    assert bob_watch.events[0].joins == {}  # its state came first
                    assert bob_2.presence == ann.presence
                    assert [m["ref"] for m in ann.presence["bob"]] == [
                        c.session.id for c in (bob_1, bob_2) if c.session is not None
                    ]
                    copy = ann.presence
                    copy["bob"].clear()
                    assert len(ann.presence["bob"]) == 2  # a copy
                await ann_watch.until(lambda p: tabs(p) == {"ann": 1, "bob": 1})
            await ann_watch.until(lambda p: tabs(p) == {"ann": 1})
            assert ann_watch.events[-1].leaves["bob"][0]["user"] == "bob"
            assert ann_watch.events[-1].presence == ann.presence

    anyio.run(main, backend=backend)
