"""The load's one WebSocket client, the same for every server measured: asyncio streams
and hand-written framing, as light as a client can be, so that the server is what is
measured. Client frames are masked with an all-zero key (any key is valid, and zero
costs no XOR).

Socket.IO servers speak Engine.IO inside WebSocket text frames: ``Peer.open(...,
socketio=True)`` does that handshake, and ``send``/``recv`` then carry ``42[...]``
event packets, answering the server's Engine.IO pings on the way.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
from typing import Any

_MASK = b"\x00\x00\x00\x00"


def _frame(payload: bytes, opcode: int = 0x1) -> bytes:
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    return head + _MASK + payload


class Peer:
    """One client connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.socketio = False

    @classmethod
    async def open(cls, url: str, path: str, *, socketio: bool = False) -> Peer:
        host, port = url.removeprefix("ws://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port), limit=1 << 20)
        if socketio:
            path = "/socket.io/?EIO=4&transport=websocket"
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
        peer = cls(reader, writer)
        if socketio:
            await peer._recv_raw()  # Engine.IO open packet: 0{...}
            peer.writer.write(_frame(b"40"))  # connect to the default namespace
            while not (await peer._recv_raw()).startswith("40"):
                pass
            peer.socketio = True
        return peer

    async def send(self, text: str, event: str = "message") -> None:
        if self.socketio:
            text = "42" + json.dumps([event, text])
        self.writer.write(_frame(text.encode()))
        await self.writer.drain()

    def send_nowait(self, text: str, event: str = "message") -> None:
        if self.socketio:
            text = "42" + json.dumps([event, text])
        self.writer.write(_frame(text.encode()))

    async def recv(self) -> Any:
        """The next message (for Socket.IO, the event's argument)."""
        while True:
            message = await self._recv_raw()
            if not self.socketio:
                return message
            if message == "2":  # Engine.IO ping
                self.writer.write(_frame(b"3"))
            elif isinstance(message, str) and message.startswith("42"):
                return json.loads(message[2:])[1]

    async def _recv_raw(self) -> Any:
        while True:
            first, second = await self.reader.readexactly(2)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
            payload = await self.reader.readexactly(length)
            opcode = first & 0x0F
            if opcode == 0x1:
                return payload.decode()
            if opcode == 0x2:
                return payload
            if opcode == 0x9:  # ping: pong
                self.writer.write(_frame(payload, 0xA))
            elif opcode == 0x8:
                raise ConnectionError("closed by the server")

    async def receive_many(self, count: int) -> None:
        """Read ``count`` text or binary frames, answering pings; the connection's last
        reads (what follows the last frame counted in the same read is dropped).

        Frames are parsed header by header in chunks of up to 64 KiB and their payloads
        skipped, so that reading a message costs this client far less than sending it
        costs any server: a fan-out's figure is then the server's, not the client's.
        """
        buffer, got = b"", 0
        while got < count:
            chunk = await self.reader.read(1 << 16)
            if not chunk:
                raise ConnectionError("closed by the server")
            buffer += chunk
            pos, end = 0, len(buffer)
            while got < count and end - pos >= 2:
                opcode, length, start = buffer[pos] & 0x0F, buffer[pos + 1] & 0x7F, pos + 2
                if length >= 126:
                    start += 2 if length == 126 else 8
                    if end < start:
                        break
                    length = int.from_bytes(buffer[pos + 2 : start], "big")
                if end < start + length:
                    break
                if opcode in (0x1, 0x2):
                    got += 1
                elif opcode == 0x9:  # ping: pong
                    self.writer.write(_frame(buffer[start : start + length], 0xA))
                elif opcode == 0x8:
                    raise ConnectionError("closed by the server")
                pos = start + length
            buffer = buffer[pos:]

    def close(self) -> None:
        self.writer.close()
