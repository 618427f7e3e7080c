"""Rooms for the tests of ``roomkit serve --workers N`` (tests/test_workers.py)."""

from __future__ import annotations

import json
import os
import time

import roomkit

from .apps import Farewell


class Where(Farewell):
    """Farewell, with a few more operations: ``pid``, the process that serves the room;
    ``say``, a broadcast of ``{"said": text}`` to everyone in it; ``put_key``, a put that
    answers with its key (so that a client that resends knows which put was stored);
    and ``hang``, which blocks the event loop for ``seconds`` (a hook stuck in a loop).
    An alarm also stores the wall time it fired at, as ``fired_at``."""

    async def _pid(self, conn: roomkit.Connection) -> int:
        return os.getpid()

    async def _say(self, conn: roomkit.Connection, text: str) -> None:
        self.broadcast(json.dumps({"said": text}))

    async def _put_key(self, conn: roomkit.Connection, key: str, value: object) -> str:
        await self.storage.put(key, value)
        return key

    async def _hang(self, conn: roomkit.Connection, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            pass

    async def on_alarm(self, info: roomkit.AlarmInfo) -> None:
        await self.storage.put("fired_at", time.time())
        await super().on_alarm(info)
