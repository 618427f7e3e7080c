"""Rooms the tests serve, in process and through ``roomkit serve`` in a subprocess."""

from __future__ import annotations

import json
from typing import Any

import trio

import roomkit


class KV(roomkit.Room):
    """Runs one storage operation per JSON message and answers with its result.

    ``{"op": "put", "key": "a", "value": 1}`` → ``{"op": "put", "result": null}``.
    """

    rate_limit = None  # the crash test streams thousands of writes as fast as it can

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        command = json.loads(message)
        op = command.pop("op")
        result = await getattr(self, f"_{op}")(conn, **command)
        conn.send(json.dumps({"op": op, "result": result}))

    async def on_alarm(self, info: roomkit.AlarmInfo) -> None:
        self.last_alarm = info
        fired = await self.storage.get("fired", [])
        fired.append({"at": trio.current_time(), "retry": info.retry_count})
        await self.storage.put("fired", fired)
        self.broadcast(json.dumps({"alarm": info.retry_count, "is_retry": info.is_retry}))
        if await self.storage.get("fail_alarm"):
            raise RuntimeError("on_alarm failed on purpose")
        again = await self.storage.get("repeat_alarm")
        if again:
            await self.storage.set_alarm(delay=again)

    async def on_error(self, conn: roomkit.Connection | None, error: Exception) -> None:
        report = {"error": f"{type(error).__name__}: {error}"}
        if conn is not None:
            conn.send(json.dumps(report))
        else:  # on_alarm failed: its own broadcast was dropped, this one is not
            self.broadcast(json.dumps(report | {"retry": self.last_alarm.retry_count}))

    async def _get(self, conn: roomkit.Connection, key: str, default: Any = None) -> Any:
        return await self.storage.get(key, default)

    async def _get_many(self, conn: roomkit.Connection, keys: list[str]) -> Any:
        return await self.storage.get_many(keys)

    async def _put(self, conn: roomkit.Connection, key: str, value: Any) -> Any:
        await self.storage.put(key, value)

    async def _put_many(self, conn: roomkit.Connection, entries: dict[str, Any]) -> Any:
        await self.storage.put_many(entries)

    async def _delete(self, conn: roomkit.Connection, key: str) -> Any:
        return await self.storage.delete(key)

    async def _delete_many(self, conn: roomkit.Connection, keys: list[str]) -> Any:
        return await self.storage.delete_many(keys)

    async def _list(self, conn: roomkit.Connection, **options: Any) -> Any:
        return list((await self.storage.list(**options)).items())

    async def _delete_all(self, conn: roomkit.Connection) -> Any:
        await self.storage.delete_all()

    async def _put_then_fail(self, conn: roomkit.Connection, key: str) -> Any:
        await self.storage.put(key, "lost")
        conn.send("sent by a hook that raised")
        self.broadcast("broadcast by a hook that raised")
        raise RuntimeError("hook failed after writing")

    async def _transaction(self, conn: roomkit.Connection, mode: str) -> Any:
        await self.storage.put("outside", 1)
        try:
            async with self.storage.transaction() as txn:
                await self.storage.put("inside", 2)
                await self.storage.delete("outside")
                seen = await self.storage.get_many(["inside", "outside"])
                if mode == "rollback":
                    txn.rollback()
                elif mode == "raise":
                    raise ValueError("undo the block")
        except ValueError:
            pass
        return {"seen": seen, "after": await self.storage.get_many(["inside", "outside"])}

    async def _set_alarm(self, conn: roomkit.Connection, **when: Any) -> Any:
        await self.storage.set_alarm(**when)
        return await self._get_alarm(conn)

    async def _get_alarm(self, conn: roomkit.Connection) -> Any:
        due = await self.storage.get_alarm()
        return None if due is None else due.timestamp()

    async def _delete_alarm(self, conn: roomkit.Connection) -> Any:
        await self.storage.delete_alarm()


class Farewell(KV):
    """KV that writes down every goodbye: ``"goodbye"`` is ``[code, reason]`` of the last
    close. Once ``"linger"`` is stored, ``on_close`` then sleeps for a minute, holding up
    a shutdown's drain."""

    async def on_close(self, conn: roomkit.Connection, code: int, reason: str, clean: bool) -> None:
        await self.storage.put("goodbye", [code, reason])
        if await self.storage.get("linger"):
            await trio.sleep(60)


class Picky(roomkit.Room):
    """Refuses every handshake with the status in its ``status`` query parameter, as
    ``Reject(status)``; without one, accepts and echoes each message."""

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        if "status" in request.query:
            raise roomkit.Reject(int(request.query["status"]), "go away")

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        conn.send(message)
