"""A room that answers plain HTTP, for the tests of plain requests across processes
(``roomkit serve tests.httpapp:Counter --workers N``, and a cluster's nodes)."""

from __future__ import annotations

import os

import roomkit


class Counter(roomkit.Room):
    """Counts the requests it was sent, in storage; answers with the count, its name,
    the body and the process that serves it."""

    async def on_request(self, request: roomkit.Request) -> roomkit.Response:
        count = int(await self.storage.get("count") or 0) + 1
        await self.storage.put("count", count)
        body = request.body.decode()
        return roomkit.Response(
            200, {"room": request.room, "count": count, "body": body, "pid": os.getpid()}
        )
