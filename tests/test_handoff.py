"""Connections handed between the workers of ``--workers N``, over real sockets.

Two or three ``serve_on`` workers (``WorkerSpec``s of one run directory) share one
listening socket on 127.0.0.1, in this process (SCM_RIGHTS works within a process too)
and, once, across two processes. Clients: the ``websockets`` package's and
trio-websocket's; raw Unix sockets for a peer worker that misbehaves. Real time with
short bounds (``fail_after``), no sleeps but the retries being measured.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from typing import Any

import attrs
import pytest
import trio
import trio.testing
import trustme
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

import roomkit
from roomkit._core.handoff import Frame, Handoff, Kind, encode
from roomkit._exposition import merged_exposition
from roomkit._gateway import Gateway
from roomkit._handoff import METRICS_TIMEOUT, Peers
from roomkit._metrics import Metrics
from roomkit._roomid import RoomId
from roomkit._server import SERVE_OPTIONS, serve_on
from roomkit._workerspec import WorkerSpec

from .helpers import ROOT, exchange, expect_close, http, open_client, roomkit_env
from .workerapp import Chat, listen_on

ROOMS = [f"room-{i}" for i in range(6)]


@pytest.fixture
def rundir() -> Iterator[str]:
    """The run directory: short, as a Unix socket's path must be (108 bytes)."""
    path = tempfile.mkdtemp(prefix="rk-")
    os.chmod(path, 0o700)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def shared() -> Iterator[socket.socket]:
    """The listening socket all the workers accept on."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock


@attrs.define
class Workers:
    """Workers run in a test's nursery, each in a scope of its own (to stop one)."""

    nursery: trio.Nursery
    rundir: str
    shared: socket.socket
    count: int
    servers: dict[int, roomkit.Server] = attrs.field(factory=dict)
    scopes: dict[int, trio.CancelScope] = attrs.field(factory=dict)

    def spec(self, index: int) -> WorkerSpec:
        return WorkerSpec(index, self.count, self.rundir, (self.shared.fileno(),), -1)

    async def start(self, index: int, **options: Any) -> roomkit.Server:
        complete = SERVE_OPTIONS.complete({"handshake_timeout": 2.0, **options})
        run = partial(serve_on, listen_on(self.shared.fileno()), Chat, worker=self.spec(index))
        self.scopes[index] = scope = trio.CancelScope()

        async def worker(task_status: trio.TaskStatus[roomkit.Server]) -> None:
            with scope:
                await run(complete, task_status=task_status)

        self.servers[index] = await self.nursery.start(worker)
        return self.servers[index]

    async def start_all(self, **options: Any) -> list[roomkit.Server]:
        return [await self.start(i, **options) for i in range(self.count)]

    def owner(self, room: str) -> int:
        return int(self.spec(0).placement.owner(RoomId("", room)))

    @property
    def port(self) -> int:
        port: int = self.shared.getsockname()[1]
        return port


@pytest.fixture
def workers(nursery: trio.Nursery, rundir: str, shared: socket.socket) -> Workers:
    return Workers(nursery, rundir, shared, 2)


def chat(url: str, members: int, barrier: threading.Barrier, ssl_context: Any = None) -> list[str]:
    """A websockets-package client of a Chat room: it waits until every client of the
    test is connected, says its name, and returns what its room said (its ``members``)."""
    with connect(url, ssl=ssl_context, open_timeout=5, close_timeout=2) as ws:
        greeting = json.loads(ws.recv(timeout=5))
        assert greeting["room"] == url.rsplit("/", 1)[1]
        barrier.wait(timeout=10)
        name = f"{url} #{threading.get_ident()}"
        ws.send(name)
        heard = [str(ws.recv(timeout=5)) for _ in range(members)]
        assert name in heard
        return heard


async def everyone_hears_everyone(
    url: str, rooms: list[str], per_room: int, ssl_context: Any = None
) -> None:
    """``per_room`` websockets clients in each of ``rooms``: each hears every member of
    its room, and no one else."""
    barrier = threading.Barrier(len(rooms) * per_room)
    heard: dict[str, list[list[str]]] = {room: [] for room in rooms}

    async def one(room: str) -> None:
        run = partial(chat, f"{url}/{room}", per_room, barrier, ssl_context)
        heard[room].append(await trio.to_thread.run_sync(run, abandon_on_cancel=True))

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for room in rooms:
                for _ in range(per_room):
                    nursery.start_soon(one, room)
    for room, lists in heard.items():
        assert len(lists) == per_room
        assert all(sorted(names) == sorted(lists[0]) for names in lists)  # the same members
        assert all(name.startswith(f"{url}/{room} ") for name in lists[0])


async def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The samples of ``GET /metrics``: by name and labels, their values."""
    status, _, body = await http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200
    return samples_of(body)


def samples_of(page: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(page.decode())
        for sample in family.samples
    }


async def handoffs(port: int, count: int, outcome: str = "sent") -> list[float]:
    """How many connections each of ``count`` workers counts under ``outcome``, as
    ``/metrics`` (asked of any worker) says."""
    samples = await scrape(port)
    return [
        samples[("roomkit_handoffs_total", frozenset({("outcome", outcome), ("worker", str(i))}))]
        for i in range(count)
    ]


async def opened(port: int) -> list[float]:
    """The WebSocket connections each of two workers opened (accepted in a room)."""
    samples = await scrape(port)
    return [
        samples[
            (
                "roomkit_connections_opened_total",
                frozenset({("room_class", "Chat"), ("worker", str(i))}),
            )
        ]
        for i in range(2)
    ]


async def until(condition: Callable[[], bool]) -> None:
    """Wait, for at most 10 s, until ``condition()`` holds."""
    with trio.fail_after(10):
        while not condition():  # noqa: ASYNC110 (statistics have no event to wait on)
            await trio.sleep(0.005)


@pytest.mark.parametrize("count", [2, 3])
async def test_each_room_lives_in_one_worker_and_everyone_hears_everyone(
    nursery: trio.Nursery, rundir: str, shared: socket.socket, count: int
) -> None:
    workers = Workers(nursery, rundir, shared, count)
    servers = await workers.start_all(metrics=True)
    url = f"ws://127.0.0.1:{workers.port}"
    owners = {room: workers.owner(room) for room in ROOMS}
    assert len(set(owners.values())) == count  # every worker holds a room
    # Connect until every worker has accepted a connection for another's room.
    for attempt in range(200):
        if all(await handoffs(workers.port, count)):
            break
        room = ROOMS[attempt % len(ROOMS)]
        with trio.fail_after(5):
            async with open_client(f"{url}/{room}") as ws:
                assert json.loads(await ws.get_message())["room"] == room
    assert all(await handoffs(workers.port, count))
    await until(lambda: sum(s.room_count for s in servers) == 0)  # they end with their clients

    per_room = 3
    done = trio.Event()

    async def count_rooms() -> None:  # while every client is connected
        await until(lambda: sum(s.statistics().connections for s in servers) == per_room * 6)
        for index, server in enumerate(servers):
            mine = [room for room, owner in owners.items() if owner == index]
            assert server.room_count == len(mine)
            assert server.statistics().connections == per_room * len(mine)
        done.set()

    nursery.start_soon(count_rooms)
    await everyone_hears_everyone(url, ROOMS, per_room)
    assert done.is_set()


async def test_a_worker_in_another_process_takes_its_rooms_connections(
    workers: Workers,
) -> None:
    spec = workers.spec(1)
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "tests.workerapp", spec.to_json(), '{"metrics": true}'],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=roomkit_env(),
        pass_fds=spec.listen_fds,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        said = b""
        with trio.fail_after(20):
            while not said.endswith(b"\n"):
                said += await process.stdout.receive_some()
        assert said == b"ready\n"
        here = await workers.start(0, metrics=True)
        url = f"ws://127.0.0.1:{workers.port}"
        for attempt in range(100):  # until each worker handed one over
            if all(await handoffs(workers.port, 2)):
                break
            async with open_client(f"{url}/{ROOMS[attempt % len(ROOMS)]}") as ws:
                with trio.fail_after(5):
                    await ws.get_message()
        assert all(await handoffs(workers.port, 2))
        before = await opened(workers.port)
        await everyone_hears_everyone(url, ROOMS, 2)
        after = await opened(workers.port)
        for worker in (0, 1):  # each worker opened the connections of its rooms, all of them
            mine = sum(workers.owner(room) == worker for room in ROOMS)
            assert after[worker] - before[worker] == 2 * mine
        samples = await scrape(workers.port)
        assert samples[("roomkit_worker_up", frozenset({("worker", "0")}))] == 1
        assert samples[("roomkit_worker_up", frozenset({("worker", "1")}))] == 1
        assert here.room_count == 0  # its rooms ended with their clients
    finally:
        await process.stdin.aclose()  # the worker shuts down, and exits 0
        with trio.fail_after(10):
            assert await process.wait() == 0
        await process.stdout.aclose()


UPGRADE = (
    "GET /{room} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def room_of(workers: Workers, index: int) -> str:
    """A room that lives in worker ``index``."""
    return next(room for room in ROOMS if workers.owner(room) == index)


async def test_a_missing_owner_is_waited_for_then_answered_503(workers: Workers) -> None:
    await workers.start(0, handshake_timeout=0.5)
    request = UPGRADE.format(room=room_of(workers, 1)).encode()
    began = trio.current_time()
    status, _, body = await http(workers.port, request)
    waited = trio.current_time() - began
    assert (status, body) == (503, b"Service unavailable")
    assert 0.5 <= waited < 1.5  # the handshake timeout, spent retrying


@contextlib.asynccontextmanager
async def greeted_by_worker_1(workers: Workers) -> AsyncIterator[None]:
    """A client (in a thread) of a room of worker 1, through worker 0 (started already),
    0.3 s on when the block starts; when it ends, worker 1 is started, and the client
    must then be greeted from its room."""
    room = room_of(workers, 1)
    greeting: list[str] = []

    def client() -> None:
        with connect(f"ws://127.0.0.1:{workers.port}/{room}", open_timeout=5) as ws:
            greeting.append(str(ws.recv(timeout=5)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(trio.to_thread.run_sync, client, abandon_on_cancel=True))
        await trio.sleep(0.3)
        yield
        await workers.start(1)
    assert json.loads(greeting[0])["room"] == room


async def test_an_owner_that_comes_back_in_time_gets_the_connection(workers: Workers) -> None:
    await workers.start(0, handshake_timeout=5)
    async with greeted_by_worker_1(workers):
        pass  # the client waits in worker 0 for worker 1, restarting


async def test_a_handoff_lost_with_an_owner_that_died_goes_to_its_replacement(
    workers: Workers,
) -> None:
    """An owner stopped (SIGSTOP) takes hand-offs into its socket's backlog, and loses
    them when it is killed: the connection goes to the worker that replaces it."""
    await workers.start(0, handshake_timeout=5)
    stopped = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stopped.bind(workers.spec(1).socket_path(1))
    stopped.listen(8)  # never accepts, as a stopped process does not
    async with greeted_by_worker_1(workers):  # its hand-off waits in the stopped backlog
        stopped.close()  # killed: the kernel resets what waited, and its file stays
        await trio.sleep(0.1)


async def test_an_owner_whose_backlog_is_full_is_tried_again(workers: Workers) -> None:
    """A Unix socket whose backlog is full refuses a connect with EAGAIN (its worker is
    busy, 100,000 connections arriving at once): the hand-off waits and tries again."""
    await workers.start(0, handshake_timeout=5)
    busy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    busy.bind(workers.spec(1).socket_path(1))
    busy.listen(0)  # never accepts, and its backlog is filled below
    waiting = []
    with contextlib.suppress(BlockingIOError):
        while True:
            filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            waiting.append(filler)
            filler.setblocking(False)
            filler.connect(busy.getsockname())
    async with greeted_by_worker_1(workers):  # its hand-off refused with EAGAIN, tried again
        for sock in (busy, *waiting):
            sock.close()


async def unix_connect(path: str) -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.connect(path)
    return sock


async def send_frame(path: str, data: bytes, fd: int | None = None) -> bytes:
    """Send ``data`` (with the socket ``fd``) to the worker socket ``path``; return what
    it answers before it closes."""
    sock = await unix_connect(path)
    with sock:
        rights = (
            [] if fd is None else [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
        )
        await sock.sendmsg([data], rights)
        answer = b""
        with trio.fail_after(5):
            while chunk := await sock.recv(65536):
                answer += chunk
    return answer


async def read_to_end(sock: socket.socket, until: bytes | None = None) -> bytes:
    """What ``sock`` receives until its end (or until it ends with ``until``), read
    without blocking the workers of this process."""
    data = b""
    with trio.fail_after(5), trio.socket.from_stdlib_socket(sock.dup()) as ours:
        while chunk := await ours.recv(65536):
            data += chunk
            if until is not None and data.endswith(until):
                break
    return data


async def test_a_message_that_is_no_handoff_fails_alone(workers: Workers) -> None:
    await workers.start_all(metrics=True)
    path = workers.spec(1).socket_path(1)
    good = Handoff(RoomId("", room_of(workers, 1)), None, UPGRADE.format(room="x").encode())
    no_route = Handoff(RoomId("/nope", "r"), None, good.head)
    plain = Handoff(good.room, None, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    carried = []
    for data, with_socket in [
        (b"GET / HTTP/1.1\r\n\r\n", False),  # not a frame
        (b"RKH1\x01\xff\xff\xff\xff\x00\x00\x00\x00", True),  # past its bound
        (encode(good.frame()), False),  # a hand-off without its socket
        (encode(good.frame(relay=True)), True),  # a relay with a socket
        (encode(no_route.frame()), True),  # a room no route serves
        (encode(plain.frame()), True),  # no WebSocket upgrade
        (encode(Frame(Kind.TAKEN)), False),  # not a request
    ]:
        ours, theirs = socket.socketpair()
        with ours, theirs:
            answer = await send_frame(path, data, theirs.fileno() if with_socket else None)
            assert answer == b""  # refused: no TAKEN
            theirs.close()  # the worker closed its copy of the socket, so it ends
            assert await read_to_end(ours) == b""
        carried.append(with_socket)
    samples = await scrape(workers.port)
    malformed = ("roomkit_handoffs_total", frozenset({("outcome", "malformed"), ("worker", "1")}))
    assert samples[malformed] == len(carried)
    await everyone_hears_everyone(f"ws://127.0.0.1:{workers.port}", [good.room.name], 2)
    assert (await opened(workers.port))[1] == 2  # worker 1 serves on


async def test_a_connection_handed_to_a_worker_that_does_not_hold_its_room_gets_503(
    workers: Workers,
) -> None:
    await workers.start_all(metrics=True)
    room = room_of(workers, 0)
    handoff = Handoff(RoomId("", room), ("10.0.0.1", 4000), UPGRADE.format(room=room).encode())
    ours, theirs = socket.socketpair()
    with ours, theirs:
        path = workers.spec(1).socket_path(1)
        answer = await send_frame(path, encode(handoff.frame()), theirs.fileno())
        assert answer == encode(Frame(Kind.TAKEN))
        theirs.close()
        response = await read_to_end(ours)
    assert response.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert response.endswith(b"\r\n\r\nService unavailable")
    samples = await scrape(workers.port)
    refused = frozenset({("reason", "misplaced"), ("worker", "1")})
    assert samples[("roomkit_handshakes_refused_total", refused)] == 1


async def test_a_handed_connection_keeps_its_first_frames_and_address(workers: Workers) -> None:
    await workers.start_all()
    room = room_of(workers, 1)
    frame = b"\x81\x85abcd" + bytes(c ^ k for c, k in zip(b"hello", b"abcdabcd", strict=False))
    handoff = Handoff(
        RoomId("", room), ("10.0.0.1", 4000), UPGRADE.format(room=room).encode(), frame
    )
    ours, theirs = socket.socketpair()
    with ours, theirs:
        answer = await send_frame(
            workers.spec(1).socket_path(1), encode(handoff.frame()), theirs.fileno()
        )
        assert answer == encode(Frame(Kind.TAKEN))
        theirs.close()
        data = await read_to_end(ours, until=b"hello")
    assert data.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b'"remote": ["10.0.0.1", 4000]' in data  # the greeting: the client's address
    assert data.endswith(b"\x81\x05hello")  # the frame sent with the head, broadcast back


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds descriptors in /proc")
async def test_a_handed_socket_is_not_inherited_by_the_processes_a_room_starts(
    workers: Workers,
) -> None:
    await workers.start_all()
    room = room_of(workers, 1)
    handoff = Handoff(RoomId("", room), None, UPGRADE.format(room=room).encode())
    ours, theirs = socket.socketpair()
    with ours, theirs:
        handed = os.fstat(theirs.fileno()).st_ino
        answer = await send_frame(
            workers.spec(1).socket_path(1), encode(handoff.frame()), theirs.fileno()
        )
        assert answer == encode(Frame(Kind.TAKEN))
        theirs.close()
        greeted = await read_to_end(ours, until=b'"remote": null}')  # the room's greeting
        assert greeted.startswith(b"HTTP/1.1 101 ")
        adopted = [fd for fd in descriptors() if os.fstat(fd).st_ino == handed]
        assert adopted  # the owner's, which the room holds
        assert not any(os.get_inheritable(fd) for fd in adopted)


def descriptors() -> list[int]:
    """This process's open file descriptors."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the directory's own, closed since
            os.fstat(int(name))
            found.append(int(name))
    return found


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server's context and a client's, of a throwaway CA."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


async def tls_scrape(
    port: int, context: ssl.SSLContext
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    stream = trio.SSLStream(
        await trio.open_tcp_stream("127.0.0.1", port), context, server_hostname="127.0.0.1"
    )
    status, _, body = await exchange(stream, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200
    return samples_of(body)


async def test_tls_connections_are_relayed_to_their_rooms_worker(
    workers: Workers, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_context, client_context = tls
    servers = await workers.start_all(ssl_context=server_context, metrics=True)
    url = f"wss://127.0.0.1:{workers.port}"
    relayed = ("roomkit_handoffs_total", frozenset({("outcome", "relayed"), ("worker", "0")}))
    for _ in range(100):  # until worker 0 relayed a connection to worker 1
        if (await tls_scrape(workers.port, client_context))[relayed]:
            break
        async with open_client(f"{url}/{room_of(workers, 1)}", client_context) as ws:
            with trio.fail_after(5):
                await ws.get_message()
    assert (await tls_scrape(workers.port, client_context))[relayed]
    await everyone_hears_everyone(url, ROOMS, 2, client_context)
    # A relayed client's close is clean both ways; so is the server's at shutdown (1012).
    room = room_of(workers, 1)
    async with open_client(f"{url}/{room}", client_context) as ws:
        await ws.send_message("x" * 100_000)  # more than a relay's read
        with trio.fail_after(5):
            assert json.loads(await ws.get_message())["room"] == room
            assert await ws.get_message() == "x" * 100_000
        await ws.aclose()
        assert ws.closed is not None and ws.closed.code == 1000
    codes: list[int] = []
    async with trio.open_nursery() as nursery:
        for room in ROOMS:
            await nursery.start(hold_client, f"{url}/{room}", client_context, codes)
        await until(lambda: sum(s.statistics().connections for s in servers) == len(ROOMS))
        for server in servers:
            server.shutdown(restart=True)
    assert codes == [1012] * len(ROOMS)


async def hold_client(
    url: str,
    context: ssl.SSLContext,
    codes: list[int],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A client that is greeted, then waits for the server's close: its code in ``codes``."""
    async with open_client(url, context) as ws:
        with trio.fail_after(5):
            await ws.get_message()
        task_status.started()
        codes.append((await expect_close(ws)).code)


async def test_metrics_cover_every_worker_and_say_which_are_missing(workers: Workers) -> None:
    await workers.start_all(metrics=True)
    async with open_client(f"ws://127.0.0.1:{workers.port}/{room_of(workers, 1)}") as ws:
        with trio.fail_after(5):
            await ws.get_message()
        samples = await scrape(workers.port)  # whichever worker answers, both are in it
    for worker in "01":
        assert samples[("roomkit_worker_up", frozenset({("worker", worker)}))] == 1
        assert samples[("process_open_fds", frozenset({("worker", worker)}))] > 0
    opened = frozenset({("room_class", "Chat"), ("worker", "1")})
    assert samples[("roomkit_connections_opened_total", opened)] == 1
    here = frozenset({("room_class", "Chat"), ("worker", "0")})
    assert samples[("roomkit_connections_opened_total", here)] == 0

    workers.scopes[1].cancel()  # worker 1 is gone; in its place, one that never answers
    await until(lambda: not os.path.exists(workers.spec(1).socket_path(1)))
    with socket.socket(socket.AF_UNIX) as hung:
        hung.bind(workers.spec(1).socket_path(1))
        hung.listen()
        began = trio.current_time()
        samples = await scrape(workers.port)
        assert trio.current_time() - began >= METRICS_TIMEOUT
    assert samples[("roomkit_worker_up", frozenset({("worker", "0")}))] == 1
    assert samples[("roomkit_worker_up", frozenset({("worker", "1")}))] == 0
    assert [dict(labels)["worker"] for name, labels in samples if name == "process_open_fds"] == [
        "0"
    ]
    status, _, body = await http(workers.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, body) == (200, b"ok")


def test_merged_metrics_label_every_sample_and_leave_out_what_is_no_page() -> None:
    page = (
        b"# HELP roomkit_x_total X.\n# TYPE roomkit_x_total counter\n"
        b'roomkit_x_total{reason="a"} 2.0\n'
    )
    merged = merged_exposition({"1": page, "0": page, "2": None, "3": b"\xff{"})
    assert merged.decode() == (
        "# HELP roomkit_worker_up Whether the worker's metrics are in this scrape"
        " (0: it did not answer in time).\n"
        "# TYPE roomkit_worker_up gauge\n"
        'roomkit_worker_up{worker="0"} 1.0\n'
        'roomkit_worker_up{worker="1"} 1.0\n'
        'roomkit_worker_up{worker="2"} 0.0\n'
        'roomkit_worker_up{worker="3"} 0.0\n'
        "# HELP roomkit_x_total X.\n"
        "# TYPE roomkit_x_total counter\n"
        'roomkit_x_total{reason="a",worker="0"} 2.0\n'
        'roomkit_x_total{reason="a",worker="1"} 2.0\n'
    )


async def test_a_failure_of_roomkits_own_ends_that_handoff_only(
    workers: Workers, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    await workers.start_all(metrics=True)

    def broken(self: object, handoff: Handoff) -> None:
        raise RuntimeError("a bug")

    room = room_of(workers, 1)
    handoff = Handoff(RoomId("", room), None, UPGRADE.format(room=room).encode())
    with monkeypatch.context() as patch:
        patch.setattr(Gateway, "prepare", broken)
        ours, theirs = socket.socketpair()
        with ours, theirs:
            answer = await send_frame(
                workers.spec(1).socket_path(1), encode(handoff.frame()), theirs.fileno()
            )
            theirs.close()
            assert (answer, await read_to_end(ours)) == (b"", b"")
    assert "serving a hand-off failed" in caplog.text
    samples = await scrape(workers.port)
    refused = frozenset({("reason", "internal_error"), ("worker", "1")})
    assert samples[("roomkit_handshakes_refused_total", refused)] == 1
    await everyone_hears_everyone(f"ws://127.0.0.1:{workers.port}", [room], 2)


async def test_a_workers_socket_replaces_a_stale_one_is_private_and_goes_at_the_end(
    workers: Workers,
) -> None:
    path = workers.spec(0).socket_path(0)
    with socket.socket(socket.AF_UNIX) as stale:  # left by a worker that died in slot 0
        stale.bind(path)
    await workers.start(0)
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    workers.servers[0].shutdown()
    await until(lambda: not os.path.exists(path))
    await trio.Path(path).write_text("")  # not a socket: never removed
    with pytest.raises(FileExistsError, match="is not a socket"):
        await workers.start(0)
    assert await trio.Path(path).read_text() == ""


async def test_a_relay_outlives_its_workers_drain_to_carry_the_owners_close(
    workers: Workers, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_context, client_context = tls
    servers = await workers.start_all(ssl_context=server_context, metrics=True)
    url = f"wss://127.0.0.1:{workers.port}/{room_of(workers, 1)}"
    relayed = ("roomkit_handoffs_total", frozenset({("outcome", "relayed"), ("worker", "0")}))
    codes: list[int] = []
    async with trio.open_nursery() as nursery:
        for _ in range(100):  # clients of worker 1's room, until one is relayed by worker 0
            before = (await tls_scrape(workers.port, client_context))[relayed]
            await nursery.start(hold_client, url, client_context, codes)
            if (await tls_scrape(workers.port, client_context))[relayed] > before:
                break
        assert (await tls_scrape(workers.port, client_context))[relayed]
        servers[0].shutdown(restart=True)  # it holds no room: its own drain is over at once
        await trio.sleep(0.3)  # and yet its relay goes on
        servers[1].shutdown(restart=True)
    assert codes and codes == [1012] * len(codes)


@pytest.mark.parametrize("client", ["socket", "stream"])
async def test_a_relay_whose_client_is_gone_while_its_owner_sends_ends_alone(
    rundir: str, client: str
) -> None:
    """Writes to the client fail while the owner sends: that relay ends quietly, with
    both its sockets closed, and the relays' nursery (a TLS worker's) serves on."""
    peers = Peers(WorkerSpec(0, 2, rundir, (), -1), timeout=2, metrics=Metrics())
    async with trio.open_nursery() as nursery:
        await nursery.start(peers.run)
        ends = []
        for _ in range(2):  # a second relay, after the first ended
            client_end, client_peer = socket.socketpair()
            owner_end, owner_peer = socket.socketpair()
            client_peer.close()
            owner_peer.setblocking(False)
            owner_peer.send(b"x" * 60_000)
            owner = trio.SocketStream(trio.socket.from_stdlib_socket(owner_end))
            gone: trio.abc.Stream = trio.SocketStream(trio.socket.from_stdlib_socket(client_end))
            if client == "stream":  # as TLS is: copied through Python
                await gone.aclose()
                gone, peer = trio.testing.memory_stream_pair()
                await peer.aclose()
            peers.relay(gone, owner, b"")
            with trio.fail_after(5):
                await peers.drain(5)
            ends.append(owner.socket.fileno())
            owner_peer.close()
        assert ends == [-1, -1]
        nursery.cancel_scope.cancel()
