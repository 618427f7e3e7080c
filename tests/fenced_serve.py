"""A test-only server: ``roomkit.serve`` of ``tests.apps:KV`` on a storage file opened
without its lock, as each worker of ``roomkit serve --workers N`` opens it, so that two
of these processes share one file.

``python -m tests.fenced_serve DATABASE DIRECTORY`` prints ``listening on ws://...`` on
stderr once it listens. Its commits wait while ``DIRECTORY/hold`` exists (so that a
test can gather several rooms' writes into one group commit), and each commit appends
a line to ``DIRECTORY/commits.jsonl``: the rooms of its batch, and those refused.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

import roomkit
from roomkit.storage import Changes, Claim, SQLiteStore

from .apps import KV


class Watched(SQLiteStore):
    """The SQLite store, holding its commits while a file exists, and logging them."""

    directory = Path()

    async def commit(self, batch: Sequence[tuple[Claim, Changes]]) -> list[roomkit.FencedError]:
        # A file, not a trio.Event: the test that sets it is another process.
        while (self.directory / "hold").exists():  # noqa: ASYNC110
            await trio.sleep(0.01)
        refused = await super().commit(batch)
        line = {
            "rooms": sorted({str(claim.room) for claim, _ in batch}),
            "refused": sorted(str(error.room) for error in refused),
        }
        with (self.directory / "commits.jsonl").open("a") as log:
            log.write(json.dumps(line) + "\n")
        return refused


async def main(database: str, directory: str) -> None:
    store = await Watched.open(database, lock=False)
    store.directory = Path(directory)
    try:
        async with trio.open_nursery() as nursery:
            serve = functools.partial(roomkit.serve, KV, port=0, storage=store)
            server = await nursery.start(serve)
            print(f"listening on {server.url}", file=sys.stderr, flush=True)
    finally:
        await store.aclose()


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:])
