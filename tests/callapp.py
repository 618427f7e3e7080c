"""The room of the tests of calls between processes (tests/test_rpc_wire.py), served by
``roomkit serve tests.callapp:Desk --workers N`` and by a cluster's nodes."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import trio

import roomkit


class Desk(roomkit.Room):
    """A room that calls other rooms and is called.

    A POST of ``{"room": name, "method": m, "args": [...], "timeout": seconds}`` (and
    optionally ``"times": n``) calls ``m`` of the room ``name`` from this room's turn
    (``self.rooms``), ``times`` times in a row; the answer is ``{"results": [...],
    "pid": this process}`` or, for a call that raised, ``{"error": {...}}`` with the
    error's class, ``type``, ``message`` and ``ran``. Each @rpc method that runs says so
    on stderr (``ran METHOD in ROOM``), so that a test sees whether it ran at all.
    """

    async def on_request(self, request: roomkit.Request) -> roomkit.Response:
        asked = json.loads(request.body)
        stub = self.rooms.get(asked["room"])
        results = []
        try:
            for _ in range(asked.get("times", 1)):
                call = stub.call(asked["method"], *asked["args"], timeout=asked["timeout"])
                results.append(await call)
        except roomkit.RoomCallError as exc:
            error = {"class": type(exc).__name__, "type": exc.type, "message": exc.message}
            return roomkit.Response(200, {"error": {**error, "ran": exc.ran}})
        return roomkit.Response(200, {"results": results, "pid": os.getpid()})

    def _ran(self, method: str) -> None:
        print(f"ran {method} in {self.name}", file=sys.stderr, flush=True)  # the tests read it

    @roomkit.rpc
    async def add(self, n: int) -> int:
        """Adds ``n`` to the room's stored total; the new total."""
        self._ran("add")
        total: int = await self.storage.get("total", 0) + n
        await self.storage.put("total", total)
        return total

    @roomkit.rpc
    async def pid(self) -> int:
        return os.getpid()

    @roomkit.rpc
    async def fail(self, message: str) -> None:
        await self.storage.put("failed", True)  # rolled back with the raise
        raise ValueError(message)

    @roomkit.rpc
    async def sleep(self, seconds: float) -> int:
        self._ran("sleep")
        await trio.sleep(seconds)
        return os.getpid()

    @roomkit.rpc
    async def via(self, room: str, method: str, args: list[Any]) -> Any:
        """The result of ``method(*args)`` of the room ``room``, called from this turn."""
        return await self.rooms.get(room).call(method, *args)
