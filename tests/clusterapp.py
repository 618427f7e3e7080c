"""The room of the cluster's tests (tests/test_cluster.py), served by ``roomkit serve
tests.clusterapp:Ledger --storage postgresql://...`` on several nodes."""

from __future__ import annotations

import os
import sys
from typing import Any

import roomkit

from .apps import KV


class Ledger(KV):
    """KV with what a cluster's tests ask of a room: ``append``, which stores its value
    under the next entry number and answers with that number once it is durable (the
    output gate); ``entries``, every value appended, in order; ``pid``, the process that
    serves the room; ``remote``, the client's address as the room sees it; ``header``,
    one of the request's headers as the room sees it. Each append says so on stderr, so
    that a test sees whether a hook ran at all. An alarm stores the pid of the process
    it fired in, as ``fired_by``."""

    async def _append(self, conn: roomkit.Connection, value: Any) -> int:
        print(f"appending {value!r}", file=sys.stderr, flush=True)  # what the tests read
        count: int = await self.storage.get("count", 0)
        await self.storage.put_many({"count": count + 1, f"entry:{count:08d}": value})
        return count

    async def _entries(self, conn: roomkit.Connection) -> list[Any]:
        return list((await self.storage.list(prefix="entry:")).values())

    async def _pid(self, conn: roomkit.Connection) -> int:
        return os.getpid()

    async def _remote(self, conn: roomkit.Connection) -> Any:
        return conn.request.remote

    async def _header(self, conn: roomkit.Connection, name: str) -> Any:
        return conn.request.headers.get(name)

    async def on_alarm(self, info: roomkit.AlarmInfo) -> None:
        await self.storage.put("fired_by", os.getpid())
