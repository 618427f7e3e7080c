"""The public API is exactly what ``roomkit/__init__.py`` re-exports."""

from __future__ import annotations

import roomkit


def test_public_names() -> None:
    assert sorted(roomkit.__all__) == [
        "CloseCode",
        "Connection",
        "DecodeError",
        "Protocol",
        "Reject",
        "Request",
        "Room",
        "RoomkitError",
        "Server",
        "serve",
    ]
    for name in roomkit.__all__:
        assert getattr(roomkit, name).__module__.startswith("roomkit._")


def test_errors_share_a_root() -> None:
    assert issubclass(roomkit.Reject, roomkit.RoomkitError)
    assert issubclass(roomkit.DecodeError, roomkit.RoomkitError)
