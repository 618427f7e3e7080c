"""roomkit._workerspec: what the supervisor tells each worker."""

from __future__ import annotations

import pytest

from roomkit._roomid import RoomId
from roomkit._workerspec import WorkerSpec


def test_a_spec_travels_as_json() -> None:
    spec = WorkerSpec(1, 3, "/run/x", (5, 6), 7, worker_timeout=2.5)
    assert WorkerSpec.from_json(spec.to_json()) == spec


def test_a_workers_commits_wait_out_the_supervisors_kill_deadline() -> None:
    assert WorkerSpec(0, 1, "/run/x", (5,), 7, worker_timeout=2.5).busy_timeout == 7.5
    assert WorkerSpec(0, 1, "/run/x", (5,), 7).busy_timeout == 15.0  # 10 s by default
    with pytest.raises(ValueError):
        WorkerSpec(0, 1, "/run/x", (5,), 7, worker_timeout=0)


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
