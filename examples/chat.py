"""The chat room of the Durable Objects WebSocket guide, written for roomkit.

Run it with ``make demo`` (or ``roomkit serve examples.chat:ChatRoom``) and connect to
``ws://127.0.0.1:8080/{room}?userId={name}``. Every socket of a user carries the tags
``[userId, "all"]``, so a direct message reaches all of that user's tabs.

Every socket also sets its presence (docs/presence.md), keyed by its user (the tags are
not ``user:`` ones, so ``presence_key`` says so): the demo page's user list comes from
it; the room's own ``welcome``/``user_joined``/``user_left`` messages stay for the
guide's plain clients.

Client → server: ``chat``, ``typing``, ``ping``, ``direct``.
Server → client: ``welcome``, ``user_joined``, ``user_left``, ``message``,
``direct_message``, ``user_typing``, ``pong``, ``undeliverable``.
"""

from __future__ import annotations

import time

import attrs

import roomkit

# What clients send.


@attrs.frozen
class Chat:
    text: str


@attrs.frozen
class Typing:
    active: bool = True


@attrs.frozen
class Ping:
    pass


@attrs.frozen
class Direct:
    to: str
    text: str


# What the room sends.


@attrs.frozen
class Welcome:
    user: str
    users: list[str]


@attrs.frozen
class UserJoined:
    user: str


@attrs.frozen
class UserLeft:
    user: str


@attrs.frozen
class Message:
    user: str
    text: str
    at: float


@attrs.frozen
class DirectMessage:
    user: str
    to: str
    text: str
    at: float


@attrs.frozen
class UserTyping:
    user: str
    active: bool


@attrs.frozen
class Pong:
    pass


@attrs.frozen
class Undeliverable:
    to: str
    reason: str


class ChatRoom(roomkit.Room):
    protocol = roomkit.Protocol(
        client=Chat | Typing | Ping | Direct,
        server=Welcome
        | UserJoined
        | UserLeft
        | Message
        | DirectMessage
        | UserTyping
        | Pong
        | Undeliverable,
    )
    max_message_size = 64 * 1024

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        user = request.query.get("userId", "").strip()
        if not user or user == "all" or len(user) > 64:
            raise roomkit.Reject(400, "Join with ?userId=<your name> (1-64 characters)")
        first_socket = not self.connections(tag=user)
        conn.tags = [user, "all"]
        conn.attachment = {"user": user}
        conn.presence = {"user": user}
        conn.send(Welcome(user=user, users=self.users()))
        if first_socket:
            self.broadcast(UserJoined(user), exclude=conn)

    async def on_message(self, conn: roomkit.Connection, message: object) -> None:
        user: str = conn.attachment["user"]
        match message:
            case Chat(text=text):
                self.broadcast(Message(user, text, time.time()), tag="all")
            case Typing(active=active):
                self.broadcast(UserTyping(user, active), exclude=self.connections(tag=user))
            case Ping():
                conn.send(Pong())
            case Direct(to=to, text=text):
                sent = DirectMessage(user, to, text, time.time())
                if to == "all":  # a tag every socket carries, not a user
                    conn.send(Undeliverable(to, "direct messages go to one user"))
                elif self.broadcast(sent, tag=to) == 0:
                    conn.send(Undeliverable(to, f"{to} is not in this room"))
                elif to != user:  # the sender's own tabs see it too
                    self.broadcast(sent, tag=user)

    async def on_close(
        self, conn: roomkit.Connection, code: int, reason: str, was_clean: bool
    ) -> None:
        user: str = conn.attachment["user"]
        if not self.connections(tag=user):
            self.broadcast(UserLeft(user))

    def presence_key(self, conn: roomkit.Connection) -> str:
        """A socket's presence is its user's: two tabs are one key with two metas."""
        user: str = conn.attachment["user"]
        return user

    def users(self) -> list[str]:
        """Everyone in the room, once each, in the order they joined."""
        return list(dict.fromkeys(c.attachment["user"] for c in self.connections()))
