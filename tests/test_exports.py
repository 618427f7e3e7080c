"""The public API is exactly what ``roomkit/__init__.py`` re-exports."""

from __future__ import annotations

import roomkit


def test_public_names() -> None:
    assert sorted(roomkit.__all__) == [
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
    for name in set(roomkit.__all__) - {"storage"}:
        assert getattr(roomkit, name).__module__.startswith("roomkit._")
    assert sorted(roomkit.storage.__all__) == [
        "Acquired",
        "AlarmWrite",
        "Changes",
        "Claim",
        "ClusterStore",
        "KeyRange",
        "Owned",
        "Owner",
        "PostgresStore",
        "RoomId",
        "SQLiteStore",
        "Store",
        "StoredAlarm",
        "open_store",
    ]


def test_the_testing_kit_is_a_subpackage_imported_on_demand() -> None:
    import roomkit.testing

    assert sorted(roomkit.testing.__all__) == ["TestClient", "TestServer", "open_test_server"]
    for name in roomkit.testing.__all__:
        assert getattr(roomkit.testing, name).__module__.startswith("roomkit.testing._")


def test_errors_share_a_root() -> None:
    assert issubclass(roomkit.Reject, roomkit.RoomkitError)
    assert issubclass(roomkit.DecodeError, roomkit.RoomkitError)
    assert issubclass(roomkit.OutsideHookError, roomkit.RoomkitError)
