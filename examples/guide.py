"""The examples of Cloudflare's guide "WebSockets in Cloudflare Workers", as roomkit rooms.

Each room speaks its example's wire protocol exactly, so that a client written for the
guide works against it unchanged. Serve them all with
``roomkit serve examples.guide:ROUTES``, then connect to ``ws://127.0.0.1:8080/chat/{room}``,
``/tagged/{room}?userId=ada``, and so on. docs/porting.md walks the guide section by
section, its TypeScript beside this file's Python, and names every difference.

Where the guide has a bug that would bite, the room fixes it and says so in a comment:
a user called ``all`` (TaggedChatRoom), messages stored under keys that collide within
one millisecond (HibernatingRoom), and a sweep that never learns when a socket was last
seen (ManagedRoom).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Final, TypeGuard

import attrs

import roomkit

__all__ = [
    "ROUTES",
    "Chat",
    "ChatRoom",
    "Error",
    "HibernatingRoom",
    "ManagedRoom",
    "Ping",
    "Pong",
    "ProtocolRoom",
    "SendChat",
    "TaggedChatRoom",
    "Typing",
    "UserJoined",
    "UserLeft",
    "UserTyping",
]


def as_text(message: str | bytes) -> str:
    """A message as the guide reads it: text as sent, binary decoded as UTF-8.

    ``new TextDecoder().decode(message)`` drops a leading byte order mark and replaces
    bytes that are not UTF-8 with U+FFFD, as ``utf-8-sig`` with ``errors="replace"`` does.
    """
    return message if isinstance(message, str) else message.decode("utf-8-sig", "replace")


def parse(text: str) -> Any:
    """``JSON.parse(text)``: raises ValueError where JavaScript throws.

    Python's ``json`` also reads ``NaN``, ``Infinity`` and ``-Infinity``, which are not
    JSON and which ``JSON.parse`` refuses; so are they here.
    """
    try:
        return json.loads(text, parse_constant=_not_json)
    except ValueError as exc:  # json.JSONDecodeError is one
        raise ValueError(f"malformed JSON: {exc}") from None


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def stringify(value: Any) -> str:
    """``JSON.stringify(value)``: compact, keys in their order, non-ASCII text as is.

    Raises ValueError for what JSON cannot carry on the wire, where JavaScript writes
    something else: a number out of a float's range (``1e400`` reads as infinity,
    which ``JSON.stringify`` writes as ``null``), and a string holding a lone surrogate
    (``"\\ud800"``), which UTF-8 cannot encode and ``JSON.stringify`` escapes.
    """
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError:
        raise ValueError("a number is out of the range JSON can carry") from None
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ValueError("a string holds a lone surrogate, which UTF-8 cannot carry") from None
    return text


def error(message: str) -> str:
    """The reply to a message the room cannot read: the shape of roomkit's own."""
    return stringify({"type": "error", "message": message})


class ChatRoom(roomkit.Room):
    """The guide's basic handler: every message goes to every socket of the room.

    The sender's own socket gets it too, as ``getWebSockets()`` includes it. The guide's
    ``webSocketError`` has no hook here: a socket that breaks the WebSocket protocol,
    sends text that is not UTF-8 or drops is closed (1002, 1007, 1006), and ``on_close``
    hears of it with ``was_clean=False``. What its body does, logging and closing with
    1011 "Internal error", is what roomkit's default ``on_error`` does when a hook raises.
    """

    async def on_message(self, conn: roomkit.Connection, message: str | bytes) -> None:
        self.broadcast(as_text(message))


#: The longest ``userId`` TaggedChatRoom takes: a tag is at most 256 characters, as in
#: Durable Objects, and the user's tag has :data:`USER_TAG`'s 5 before it.
MAX_USER_ID: Final = 251
#: What a user's tag starts with: see :meth:`TaggedChatRoom.on_connect`.
USER_TAG: Final = "user:"


class TaggedChatRoom(roomkit.Room):
    """The guide's tagged room: ``broadcast`` messages go to everyone, ``direct`` ones
    to every socket of ``targetUserId``.

    What goes out is the message as the client sent it, as ``JSON.stringify(data)``
    writes it again: keys in the order sent, no whitespace (``{"type":"broadcast"}``),
    strings as they were. Numbers are written as Python writes them: ``1.0`` stays
    ``1.0`` where JavaScript writes ``1``, and integers past 2**53 stay exact.
    """

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        user_id = request.query.get("userId") or "anonymous"
        if len(user_id) > MAX_USER_ID:
            raise roomkit.Reject(400, f"userId is at most {MAX_USER_ID} characters")
        # The guide tags a socket [userId, "all"]: a user called "all" then shares the
        # tag of everyone, and a direct message to "all" reaches every socket. Giving
        # user tags a prefix keeps the two apart: "user:all" is that user alone.
        conn.tags = [USER_TAG + user_id, "all"]

    async def on_message(self, conn: roomkit.Connection, message: str | bytes) -> None:
        # The guide's JSON.parse throws on a message that is not JSON; here the sender
        # is told, in the shape of roomkit's error replies, and stays connected.
        try:
            data = parse(as_text(message))
            text = stringify(data)
        except ValueError as exc:
            conn.send(error(str(exc)))
            return
        if not isinstance(data, dict):
            return  # data.type is undefined: neither branch of the guide's is taken
        if data.get("type") == "broadcast":
            self.broadcast(text, tag="all")
        elif data.get("type") == "direct" and _is_user_id(target := data.get("targetUserId")):
            self.broadcast(text, tag=USER_TAG + target)


def _is_user_id(value: object) -> TypeGuard[str]:
    """Whether ``value`` could be a connected user's id (the guide: any truthy value)."""
    return isinstance(value, str) and 0 < len(value) <= MAX_USER_ID


def millis(seconds: float) -> int:
    """``Date.now()``'s unit, whole milliseconds, from :meth:`roomkit.Room.time`'s seconds."""
    return int(seconds * 1000)


#: The storage key of HibernatingRoom's count of the messages it has stored.
MESSAGES: Final = "messages"


def message_key(number: int) -> str:
    """The storage key of message ``number``: zero-padded, keys sort in arrival order."""
    return f"message:{number:016d}"


class HibernatingRoom(roomkit.Room):
    """The guide's hibernating room: every message stored, then sent to everyone as
    ``{"from", "message", "timestamp"}``; a socket's leaving told to the others.

    Who a socket is lives in its attachment, ``{"userId", "joinedAt"}``, which survives
    hibernation; times are the guide's milliseconds since the epoch.
    """

    #: Messages kept in storage, the latest; the guide keeps every one, for ever.
    kept: ClassVar[int] = 1000

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        user_id = request.query.get("userId")
        if user_id:
            conn.attachment = {"userId": user_id, "joinedAt": millis(self.time())}

    async def on_message(self, conn: roomkit.Connection, message: str | bytes) -> None:
        attachment = conn.attachment
        data = {
            "from": (attachment or {}).get("userId") or "anonymous",
            "message": as_text(message),
            "timestamp": millis(self.time()),
        }
        # The guide stores each message at `message:${Date.now()}`: two messages in one
        # millisecond get one key, and the second overwrites the first. Numbered with a
        # count kept in storage (an attribute would not survive hibernation), each gets
        # a key of its own.
        number = await self.storage.get(MESSAGES, 0)
        await self.storage.put_many({message_key(number): data, MESSAGES: number + 1})
        if number >= self.kept:
            await self.storage.delete(message_key(number - self.kept))
        self.broadcast(stringify(data))

    async def on_close(
        self, conn: roomkit.Connection, code: int, reason: str, was_clean: bool
    ) -> None:
        # The closed socket is no longer among self.connections(): the guide's
        # `socket !== ws` is done. Its userId is undefined without an attachment, and
        # JSON.stringify leaves the key out.
        left = {"type": "user_left"}
        if (attachment := conn.attachment) is not None:
            left["userId"] = attachment["userId"]
        self.broadcast(stringify(left))
        conn.close(code, reason)  # as the guide does: roomkit has closed it already


#: How long ManagedRoom lets a socket be silent: the guide's minute, in milliseconds.
IDLE_TIMEOUT_MS: Final = 60_000


class ManagedRoom(ChatRoom):
    """The guide's managed room: a ChatRoom whose sockets are closed with 1000 "Idle
    timeout" once silent for a minute, by a sweep its own alarm runs.

    roomkit does this by itself with ``idle_timeout = 60``; this room does it as the
    guide writes it. When a socket was last seen lives in its attachment, so that the
    sweep works on a room that hibernated in between.
    """

    # The guide's second best practice, a heartbeat: "ping" is answered "pong" by the
    # connection itself, without waking the room, and counts as being seen.
    auto_response = ("ping", "pong")

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        user_id = request.query.get("userId") or "anonymous"
        conn.attachment = {"userId": user_id, "lastSeen": millis(self.time())}
        if await self.storage.get_alarm() is None:  # else it is due sooner
            await self.storage.set_alarm(delay=(IDLE_TIMEOUT_MS + 1) / 1000)

    async def on_message(self, conn: roomkit.Connection, message: str | bytes) -> None:
        # The guide updates lastSeen in a map nothing ever fills, and its cleanup reads
        # lastSeen from the attachment, where nothing ever writes it: nobody is closed.
        # Here it is written to the attachment, which hibernation keeps as it would not
        # keep a map.
        attachment = conn.attachment
        attachment["lastSeen"] = millis(self.time())
        conn.attachment = attachment
        await super().on_message(conn, message)

    async def on_alarm(self, info: roomkit.AlarmInfo) -> None:
        await self.cleanup()

    async def cleanup(self) -> None:
        """Close the sockets silent for over a minute; set the alarm for the next one."""
        now = self.time() * 1000  # not floored as Date.now() is: the alarm is due at `due`
        last_seen = []
        for socket in self.connections():
            seen = socket.attachment["lastSeen"]
            if (pinged := socket.auto_response_timestamp) is not None:
                seen = max(seen, millis(pinged))  # getWebSocketAutoResponseTimestamp
            if now - seen > IDLE_TIMEOUT_MS:
                socket.close(1000, "Idle timeout")
            else:
                last_seen.append(seen)
        if last_seen:
            due = min(last_seen) + IDLE_TIMEOUT_MS + 1  # the guide's test is `>`
            await self.storage.set_alarm(delay=(due - now) / 1000)


# What ProtocolRoom's clients send: the guide's ClientMessage.


@attrs.frozen
class SendChat:
    message: str


@attrs.frozen
class Typing:
    pass


@attrs.frozen
class Ping:
    pass


# What ProtocolRoom sends: the guide's ServerMessage, and its pong and typing.


@attrs.frozen
class Chat:
    from_: str  # travels as "from", a keyword in Python
    message: str
    timestamp: int


@attrs.frozen
class UserTyping:
    user_id: str


@attrs.frozen
class Pong:
    pass


@attrs.frozen
class UserJoined:
    user_id: str


@attrs.frozen
class UserLeft:
    user_id: str


@attrs.frozen
class Error:
    message: str


#: The longest chat message ProtocolRoom passes on, in characters.
MAX_CHAT_MESSAGE: Final = 4096


class ProtocolRoom(roomkit.Room):
    """The guide's typed messages: chat, typing and ping from clients; chat, typing,
    pong, user_joined, user_left and error from the room.

    roomkit checks every message against the protocol before ``on_message`` sees it,
    and answers one that does not fit with ``{"type": "error", "message": ...}``, the
    guide's own error message; the room adds the checks types cannot make.
    """

    protocol = roomkit.Protocol(
        client={"chat": SendChat, "typing": Typing, "ping": Ping},
        server={
            "chat": Chat,
            "typing": UserTyping,
            "pong": Pong,
            "user_joined": UserJoined,
            "user_left": UserLeft,
            "error": Error,
        },
        field_names="camelCase",  # user_id travels as userId
    )

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        user_id = request.query.get("userId") or "anonymous"
        conn.attachment = {"userId": user_id}
        self.broadcast(UserJoined(user_id), exclude=conn)

    async def on_message(self, conn: roomkit.Connection, message: object) -> None:
        user_id: str = conn.attachment["userId"]
        match message:
            case SendChat(message=text) if not 0 < len(text) <= MAX_CHAT_MESSAGE:
                conn.send(Error(f"a chat message is 1 to {MAX_CHAT_MESSAGE} characters"))
            case SendChat(message=text):
                self.broadcast(Chat(user_id, text, millis(self.time())))
            case Typing():
                self.broadcast(UserTyping(user_id), exclude=conn)  # broadcastExcept
            case Ping():
                conn.send(Pong())

    async def on_close(
        self, conn: roomkit.Connection, code: int, reason: str, was_clean: bool
    ) -> None:
        self.broadcast(UserLeft(conn.attachment["userId"]))


ROUTES: Final[dict[str, type[roomkit.Room]]] = {
    "/chat": ChatRoom,
    "/tagged": TaggedChatRoom,
    "/hibernating": HibernatingRoom,
    "/managed": ManagedRoom,
    "/protocol": ProtocolRoom,
}
