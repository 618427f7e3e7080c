"""roomkit._workerspec: what the supervisor tells each worker."""

from __future__ import annotations

import pytest

from roomkit._roomid import RoomId
from roomkit._workerspec import WorkerSpec


def test_a_spec_travels_as_json() -> None:
    spec = WorkerSpec(1, 3, "/run/x", (5, 6), 7)
    assert WorkerSpec.from_json(spec.to_json()) == spec


def test_the_workers_agree_where_each_room_lives() -> None:
    specs = [WorkerSpec(i, 3, "/run/x", (5,), 7) for i in range(3)]
    for n in range(50):
        room = RoomId("", f"r{n}")
        assert sum(spec.placement.owns(room) for spec in specs) == 1


def test_each_worker_has_its_own_socket() -> None:
    spec = WorkerSpec(0, 2, "/run/x", (5,), 7)
    assert spec.socket_path(1) == "/run/x/worker-1.sock"
    assert spec.socket_path(0) != spec.socket_path(1)


@pytest.mark.parametrize(("index", "count"), [(2, 2), (-1, 2), (0, 0)])
def test_an_index_outside_the_slots_is_refused(index: int, count: int) -> None:
    with pytest.raises(ValueError):
        WorkerSpec(index, count, "/run/x", (5,), 7)
