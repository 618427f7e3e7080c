"""roomkit: stateful real-time rooms over WebSockets for Trio.

One live actor per room name, written by subclassing :class:`Room`; see docs/.
"""

from typing import TYPE_CHECKING

from . import storage as storage
from ._client import Client as Client
from ._client import ErrorMessage as ErrorMessage
from ._client import connect as connect
from ._clientevents import CloseEvent as CloseEvent
from ._clientevents import OpenEvent as OpenEvent
from ._clientevents import PresenceEvent as PresenceEvent
from ._clientevents import ReconnectEvent as ReconnectEvent
from ._clientsession import Session as Session
from ._closecodes import CloseCode as CloseCode
from ._connection import Connection as Connection
from ._connection import ConnectionState as ConnectionState
from ._core.alarms import AlarmInfo as AlarmInfo
from ._core.frontdoor import Response as Response
from ._core.history import History as History
from ._core.ratelimit import RateLimit as RateLimit
from ._errors import ClientClosed as ClientClosed
from ._errors import DecodeError as DecodeError
from ._errors import FencedError as FencedError
from ._errors import OutsideHookError as OutsideHookError
from ._errors import Reject as Reject
from ._errors import RoomCallCycle as RoomCallCycle
from ._errors import RoomCallError as RoomCallError
from ._errors import RoomCallTimeout as RoomCallTimeout
from ._errors import RoomkitError as RoomkitError
from ._errors import StorageError as StorageError
from ._protocol import Protocol as Protocol
from ._protocol import wire_name as wire_name
from ._proxy import ProxyOptions as ProxyOptions
from ._proxy import ProxyServer as ProxyServer
from ._proxy import proxy as proxy
from ._request import Request as Request
from ._room import Room as Room
from ._server import ServeOptions as ServeOptions
from ._server import Server as Server
from ._server import serve as serve
from ._statistics import ProxyStatistics as ProxyStatistics
from ._statistics import ServerStatistics as ServerStatistics
from ._storage import Storage as Storage
from ._storage import Transaction as Transaction
from ._stubs import Rooms as Rooms
from ._stubs import RoomStub as RoomStub
from ._stubs import rpc as rpc

__all__ = [
    "AlarmInfo",
    "Client",
    "ClientClosed",
    "CloseCode",
    "CloseEvent",
    "Connection",
    "ConnectionState",
    "DecodeError",
    "ErrorMessage",
    "FencedError",
    "History",
    "OpenEvent",
    "OutsideHookError",
    "PresenceEvent",
    "Protocol",
    "ProxyOptions",
    "ProxyServer",
    "ProxyStatistics",
    "RateLimit",
    "ReconnectEvent",
    "Reject",
    "Request",
    "Response",
    "Room",
    "RoomCallCycle",
    "RoomCallError",
    "RoomCallTimeout",
    "RoomStub",
    "RoomkitError",
    "Rooms",
    "ServeOptions",
    "Server",
    "ServerStatistics",
    "Session",
    "Storage",
    "StorageError",
    "Transaction",
    "connect",
    "proxy",
    "rpc",
    "serve",
    "storage",
    "wire_name",
]

if not TYPE_CHECKING:  # to a type checker a removed name is simply missing
    # PEP 562: Python calls it for a name the module lacks, such as a removed one.
    from ._removed import removed_name as __getattr__  # noqa: F401
