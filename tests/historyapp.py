"""The room the history check's nodes serve: an append-only log (tests/history.py).

``roomkit serve tests.historyapp:History --storage postgresql://...``. Each instance is
an *activation*, with an id of its own made in ``on_start``, where it also loads the
stored log into memory, as a room that keeps its state in memory does; so a stale
instance answers from its own memory, and a split brain shows.

* ``{"op": "write", "id": ID}`` appends the entry ``{"seq", "op": ID, "activation",
  "member"}`` under the key ``log/{seq:08}``, ``seq`` one past the last entry's, and
  answers ``{"id": ID, "seq", "activation"}``. The answer is sent from the hook, so the
  output gate holds it until the entry is committed. (One past the last, not one past
  the count: a hole in the stored log is then a ``GAP`` alone, and never makes a later
  write overwrite an entry.)
* ``{"op": "read", "id": ID}`` answers ``{"id": ID, "activation", "ops": [op ids of the
  log, in order]}``.

``member`` is the node's advertise address, from ``ROOMKIT_ADVERTISE``.
"""

from __future__ import annotations

import json
import os
import secrets
from typing import Any

import roomkit

#: The prefix of the log's keys; each key is it and the entry's seq, zero-padded so that
#: key order is seq order.
LOG = "log/"


def log_key(seq: int) -> str:
    return f"{LOG}{seq:08}"


class History(roomkit.Room):
    """An append-only log of writes, each answered only once it is durable."""

    rate_limit = None  # clients write as fast as their replies come
    #: The op ids of the log, once loaded: ``on_start`` loads it, and when that failed
    #: (PostgreSQL was down: the instance stays all the same), the next message does.
    log: list[str] | None = None
    #: The last entry's seq.
    seq = 0

    async def on_start(self) -> None:
        self.activation = secrets.token_hex(6)
        self.member = os.environ.get("ROOMKIT_ADVERTISE", "")
        await self._loaded()

    async def on_message(self, conn: roomkit.Connection, message: str | bytes) -> None:
        command: dict[str, Any] = json.loads(message)
        log = await self._loaded()
        reply: dict[str, Any] = {"id": command["id"], "activation": self.activation}
        if command["op"] == "write":
            seq = self.seq + 1
            entry = {"seq": seq, "op": command["id"], "activation": self.activation}
            await self.storage.put(log_key(seq), entry | {"member": self.member})
            log.append(command["id"])
            self.seq = reply["seq"] = seq
        else:
            reply["ops"] = log
        conn.send(json.dumps(reply))

    async def _loaded(self) -> list[str]:
        if self.log is None:
            entries = list((await self.storage.list(prefix=LOG)).values())
            self.log = [entry["op"] for entry in entries]
            self.seq = entries[-1]["seq"] if entries else 0
        return self.log
