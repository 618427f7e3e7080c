"""A roomkit cluster under faults, and the history its clients saw (tests/history.py).

:func:`run` starts three ``roomkit serve tests.historyapp:History`` nodes on 127.0.0.1
(real processes, one PostgreSQL database, a short lease), clients that write and read
through random nodes, and a schedule of faults on the owners of the rooms (the
``roomkit.rooms`` table names each room's owner, a node's advertise address):

* ``kill``: SIGKILL of a room's owner, restarted ``RESTART_AFTER`` leases later (with
  the same address: a new incarnation of the same member);
* ``stop``: SIGSTOP of a room's owner for ``STOP_FOR`` leases, then SIGCONT;
* ``postgres``: a restart of the PostgreSQL server (the throwaway one of tests/pg.py);
* ``drain``: SIGTERM of a room's owner, which drains it, then a restart.

Each client stays in one room: it connects through a random node, runs one operation at
a time, and on a close (1012, 1006...), a refused handshake (503), or a reply later than
its timeout, reconnects through another node. Half of the clients give up on a reply
after half a lease, the others wait ``PATIENT`` leases: those stay on a stopped node until
it resumes, and so test that a resumed node serves nothing stale. They read more
(``patient_reads``): a stale node's first write is refused, which closes its room, but
it would answer reads from its memory for as long as it is let. With the actor's lease
check and the member's fencing turned off, two stops of a node with half the
operations reads gave 52 and 86 ``OVERLAP``s and a few ``STALE_READ``s; a single stop
often gives none, as PostgreSQL ends the stopped node's open commit, and the room
resets (1011) as soon as the node resumes. At the end the nodes are drained, and each
room's log is read straight from PostgreSQL.

tests/test_history.py runs a short plan in ``make test``; benchmarks/history.py a long
one.
"""

from __future__ import annotations

import json
import math
import random
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import psycopg
import trio
import trio_websocket

from .helpers import ROOT, http, roomkit_env
from .history import Ack, Entry, Event, EventType, Fault, Op, Seen, Verdict, check

#: Leases a killed node stays down before it is restarted: long enough for another node
#: to take its rooms over when its lease runs out, not only itself when it comes back.
RESTART_AFTER = 1.5
#: Leases a stopped node stays stopped: well past its lease, so that its rooms move.
STOP_FOR = 2.5
#: Leases a patient client waits for a reply (an impatient one: half a lease).
PATIENT = 5.0
#: Leases a client waits for a handshake's answer, as for a reply. Waiting longer than a
#: forward to a stopped owner waits before its 503 (a lease) did not help: with 1.25
#: leases, failovers after a stop took 2.0 s (median) and up to 3.1 s, against 1.65 and
#: 2.7 s (a 1 s lease, 6 stops each), as the forwards gave no answer within it either.
HANDSHAKE = 0.5
#: Seconds a node has to start listening, and a drained one to exit, before it is killed.
START_TIMEOUT = 30.0
DRAIN_TIMEOUT = 15.0
#: What the nodes' logs (each node's, over all its lives) tell, counted by these lines'
#: patterns: rooms whose writes the store refused (a stale epoch: fenced), leases that
#: ran out in a node (it fenced its rooms itself), commits that failed.
TALLIES = {
    "fenced_writes": re.compile(r"WARNING roomkit\.room: room \S+: writes under epoch \d+ refused"),
    "lease_ran_out": re.compile(r"WARNING roomkit\.cluster: member \S+: lease ran out"),
    "commit_failures": re.compile(r"ERROR roomkit\.storage: storage commit failed"),
}
#: Seconds a draining node waits for its connections. Not the default 10 s: its rooms
#: move at once, but the node exits only once the connections it splices to other
#: nodes' rooms have ended, which their clients need not do, and the runner starts the
#: node again only after it exits.
NODE_DRAIN_TIMEOUT = 1.0
APP = "tests.historyapp:History"


@attrs.frozen
class Plan:
    """What :func:`run` does: rooms, clients, the lease, the faults in order."""

    faults: tuple[str, ...] = ("kill", "stop", "postgres", "drain")
    rooms: int = 3
    clients_per_room: int = 2
    lease: float = 1.0
    #: Seconds before the first fault, between faults, and after the last one.
    settle: float = 3.0
    #: Seconds a client waits between operations, and the share of reads: of the
    #: impatient clients, and of the patient ones.
    think: float = 0.02
    reads: float = 0.1
    patient_reads: float = 0.5
    seed: int = 0


@attrs.frozen
class Run:
    """What happened: the history, the stored logs, the faults and the nodes' counts."""

    plan: Plan
    events: list[Event]
    stored: dict[str, list[Entry]]
    faults: list[Fault]
    #: How long PostgreSQL was down at each restart, seconds.
    outages: list[float]
    tallies: dict[str, int]
    duration: float
    connects: list[Connect]

    def verdict(self) -> Verdict:
        return check(self.events, self.stored, self.faults)

    def dump(self, path: Path) -> None:
        """Write the history, the faults and the stored logs to ``path``, one JSON line
        each, for a look at what happened."""
        with path.open("w") as out:
            items: list[Any] = [*self.faults, *self.events, *self.connects]
            for item in items:
                out.write(json.dumps(attrs.asdict(item), default=_plain) + "\n")
            for room, log in sorted(self.stored.items()):
                out.write(json.dumps({"room": room, "log": [attrs.asdict(e) for e in log]}) + "\n")


@attrs.define
class Node:
    """One ``roomkit serve`` node, on a port it keeps across restarts."""

    port: int
    argv: list[str]
    log: Path
    process: trio.Process | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start the node, and again whenever it exits before it serves (as a supervisor
        would: a node that cannot reach PostgreSQL as it starts exits)."""
        env = roomkit_env() | {"ROOMKIT_ADVERTISE": self.address}
        with trio.move_on_after(START_TIMEOUT):
            while True:
                with self.log.open("ab") as log:
                    self.process = await trio.lowlevel.open_process(
                        self.argv,
                        cwd=ROOT,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=log,
                    )
                while self.process.returncode is None:
                    if await self.healthy():
                        return
                    await trio.sleep(0.05)
                await trio.sleep(0.2)
        raise RuntimeError(f"node {self.address} did not start: see {self.log}")

    async def healthy(self) -> bool:
        with trio.move_on_after(1):
            try:
                status, _, _ = await http(self.port, b"GET /healthz HTTP/1.1\r\nHost: n\r\n\r\n")
            except OSError:
                return False
            return status == 200
        return False

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def end(self, signum: int) -> None:
        """Signal the process and wait for it to exit (killed if it takes too long)."""
        assert self.process is not None
        self.signal(signum)
        with trio.move_on_after(DRAIN_TIMEOUT) as waited:
            await self.process.wait()
        if waited.cancelled_caught:
            self.process.kill()
            await self.process.wait()


@attrs.define
class Cluster:
    """The nodes and their database."""

    url: str
    nodes: list[Node]

    @classmethod
    def make(cls, url: str, lease: float, logs: Path) -> Cluster:
        secret = secrets.token_hex(16)
        nodes = []
        for index, port in enumerate(_free_ports(3)):
            options = ["--host", "127.0.0.1", "--port", str(port), "--storage", url]
            options += ["--advertise", f"127.0.0.1:{port}", "--lease", str(lease)]
            options += ["--cluster-secret", secret, "--log-level", "warning"]
            options += ["--drain-timeout", str(NODE_DRAIN_TIMEOUT)]
            argv = [sys.executable, "-m", "roomkit", "serve", APP, *options]
            nodes.append(Node(port, argv, logs / f"node{index}.log"))
        return cls(url, nodes)

    def tallies(self) -> dict[str, int]:
        """:data:`TALLIES`, counted in every node's log."""
        text = "".join(node.log.read_text() for node in self.nodes if node.log.exists())
        return {name: len(pattern.findall(text)) for name, pattern in TALLIES.items()}

    def node(self, member: str | None) -> Node | None:
        return next((node for node in self.nodes if node.address == member), None)

    async def owners(self) -> dict[str, str | None]:
        """Each claimed room's owner, as the ``roomkit.rooms`` table says right now."""
        rows = await trio.to_thread.run_sync(
            _query, self.url, "SELECT room, owner FROM roomkit.rooms WHERE namespace = ''"
        )
        return {room: owner for room, owner in rows}

    async def stored(self) -> dict[str, list[Entry]]:
        """Each room's log, read straight from the ``roomkit.kv`` table, in key order."""
        sql = "SELECT room, value FROM roomkit.kv WHERE namespace = '' AND key LIKE 'log/%'"
        rows = await trio.to_thread.run_sync(_query, self.url, sql + " ORDER BY room, key")
        logs: dict[str, list[Entry]] = {}
        for room, value in rows:
            logs.setdefault(room, []).append(Entry(**json.loads(value)))
        return logs


def _plain(value: object) -> object:
    return sorted(value) if isinstance(value, frozenset) else getattr(value, "value", value)


def _query(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as connection:
        return connection.execute(sql).fetchall()


def _free_ports(count: int) -> list[int]:
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


@attrs.define
class Recorder:
    """The history, on the Trio clock (one monotonic clock for every client), and each
    client's connections: when it tried which node, and how that ended."""

    events: list[Event] = attrs.Factory(list)
    connects: list[Connect] = attrs.Factory(list)

    def record(self, type: EventType, op: str, client: str, room: str, **more: Any) -> None:
        self.events.append(Event(type, op, client, room, trio.current_time(), **more))


@attrs.frozen
class Connect:
    """A client's connection through ``node``: tried at ``at``, open (the 101 came) at
    ``opened``, over at ``over``; ``ended`` says how (``closed 1012``, ``refused 503``,
    ``ConnectionTimeout``, ``gave up``: a reply came too late)."""

    client: str
    node: str
    at: float
    opened: float | None
    over: float
    ended: str


@attrs.define
class Client:
    """One client of ``room``: an operation at a time, reconnecting through another node
    whenever its connection ends or stalls.

    trio-websocket's own ``connect_timeout`` does not end a handshake that gets no
    answer: its reader task keeps the nursery open until the peer closes (a stopped node
    never does). So each connection is a TCP stream of the client's, closed when the
    connection is given up, wrapped in a nursery of its own, cancelled then; a refused
    handshake is raised by that nursery's reader task.
    """

    name: str
    room: str
    cluster: Cluster
    recorder: Recorder
    plan: Plan
    patient: bool
    rng: random.Random = attrs.field(init=False)
    opened: float | None = None  # when the current connection's 101 came
    numbers: Iterator[int] = attrs.field(init=False, factory=lambda: iter(range(1, sys.maxsize)))

    def __attrs_post_init__(self) -> None:
        self.rng = random.Random(f"{self.plan.seed}/{self.name}")

    async def run(self) -> None:
        """Until cancelled."""
        node = self.rng.choice(self.cluster.nodes)
        while True:
            at, self.opened = trio.current_time(), None
            try:
                async with trio.open_nursery() as nursery:
                    ended = await self._connection(nursery, node)
                    nursery.cancel_scope.cancel()
            except* trio_websocket.ConnectionRejected as refused:
                ended = f"refused {_status(refused)}"
            except* (trio_websocket.HandshakeError, OSError) as failed:
                ended = type(failed.exceptions[0]).__name__
            self.recorder.connects.append(
                Connect(self.name, node.address, at, self.opened, trio.current_time(), ended)
            )
            if ended != "gave up":
                await trio.sleep(self.rng.uniform(0.01, 0.05))  # refused or closed
            node = self.rng.choice([other for other in self.cluster.nodes if other is not node])

    async def _connection(self, nursery: trio.Nursery, node: Node) -> str:
        """Operations over one connection through ``node``, until it ends: how it did."""
        deadline = trio.current_time() + self.plan.lease * HANDSHAKE
        try:
            with trio.fail_at(deadline):
                stream = await trio.open_tcp_stream("127.0.0.1", node.port)
        except (OSError, trio.TooSlowError) as exc:
            return type(exc).__name__
        try:
            with trio.fail_at(deadline):
                ws = await trio_websocket.wrap_client_stream(
                    nursery, stream, node.address, f"/{self.room}"
                )
            self.opened = trio.current_time()
            for number in self.numbers:
                if not await self._operate(ws, f"{self.name}-{number}"):
                    break
                await trio.sleep(self.plan.think * self.rng.uniform(0.5, 1.5))
            return "gave up"
        except trio_websocket.ConnectionRejected as exc:
            return f"refused {exc.status_code}"
        except trio_websocket.ConnectionClosed as exc:
            return f"closed {exc.reason and exc.reason.code}"
        except (trio_websocket.HandshakeError, OSError, trio.TooSlowError) as exc:
            return type(exc).__name__
        finally:
            await trio.aclose_forcefully(stream)

    async def _operate(self, ws: trio_websocket.WebSocketConnection, op: str) -> bool:
        """One operation: whether the connection may carry another."""
        reads = self.plan.patient_reads if self.patient else self.plan.reads
        kind = Op.READ if self.rng.random() < reads else Op.WRITE
        self._record(EventType.INVOKE, op, kind=kind)
        try:
            await ws.send_message(json.dumps({"op": kind.value, "id": op}))
        except trio_websocket.ConnectionClosed:
            self._record(EventType.FAIL, op)  # a frame not sent whole is never read
            raise
        reply: dict[str, Any] | None = None
        try:
            with trio.move_on_after(self.plan.lease * (PATIENT if self.patient else 0.5)):
                reply = json.loads(await ws.get_message())
        except trio_websocket.ConnectionClosed:
            self._record(EventType.INFO, op)
            raise
        if reply is None:
            self._record(EventType.INFO, op)  # too slow: it may still land
            return False
        assert reply["id"] == op, (reply, op)
        if kind is Op.WRITE:
            ack = Ack(reply["activation"], reply["seq"])
            self._record(EventType.OK, op, kind=kind, reply=ack)
        else:
            seen = Seen(reply["activation"], tuple(reply["ops"]))
            self._record(EventType.OK, op, kind=kind, reply=seen)
        return True

    def _record(self, type: EventType, op: str, **more: Any) -> None:
        self.recorder.record(type, op, self.name, self.room, **more)


def _status(refused: BaseExceptionGroup[trio_websocket.ConnectionRejected]) -> int | None:
    return getattr(refused.exceptions[0], "status_code", None)


async def _kill(cluster: Cluster, node: Node, plan: Plan, nursery: trio.Nursery) -> None:
    await node.end(signal.SIGKILL)

    async def restart() -> None:
        await trio.sleep(plan.lease * RESTART_AFTER)
        await node.start()

    nursery.start_soon(restart)


async def _stop(cluster: Cluster, node: Node, plan: Plan, nursery: trio.Nursery) -> None:
    node.signal(signal.SIGSTOP)

    async def resume() -> None:
        await trio.sleep(plan.lease * STOP_FOR)
        node.signal(signal.SIGCONT)

    nursery.start_soon(resume)


async def _drain(cluster: Cluster, node: Node, plan: Plan, nursery: trio.Nursery) -> None:
    await node.end(signal.SIGTERM)
    nursery.start_soon(node.start)


ON_OWNER = {"kill": _kill, "stop": _stop, "drain": _drain}


async def _schedule(
    cluster: Cluster,
    plan: Plan,
    rooms: Sequence[str],
    restart_database: Callable[[], None],
    faults: list[Fault],
    outages: list[float],
) -> None:
    """The plan's faults, ``settle`` seconds apart, each on the owner of a random room."""
    rng = random.Random(plan.seed)
    async with trio.open_nursery() as nursery:
        for kind in plan.faults:
            await trio.sleep(plan.settle)
            if kind == "postgres":
                began = trio.current_time()
                await trio.to_thread.run_sync(restart_database)
                outages.append(trio.current_time() - began)
                faults.append(Fault(kind, trio.current_time(), frozenset(rooms)))
                continue
            owners = await cluster.owners()
            member = owners.get(rng.choice(rooms))
            node = cluster.node(member) or rng.choice(cluster.nodes)
            struck = frozenset(room for room in rooms if owners.get(room) == node.address)
            faults.append(Fault(kind, trio.current_time(), struck, node.address))
            await ON_OWNER[kind](cluster, node, plan, nursery)
        await trio.sleep(plan.settle)


async def run(plan: Plan, url: str, restart_database: Callable[[], None], logs: Path) -> Run:
    """Run ``plan`` on a fresh database ``url``; ``restart_database`` restarts its server
    (blocking; it runs in a thread). The nodes' output goes to files in ``logs``."""
    cluster = Cluster.make(url, plan.lease, logs)
    rooms = [f"room{index}" for index in range(plan.rooms)]
    recorder, faults, outages = Recorder(), list[Fault](), list[float]()
    began = trio.current_time()
    try:
        async with trio.open_nursery() as nursery:
            for node in cluster.nodes:
                nursery.start_soon(node.start)
        async with trio.open_nursery() as nursery:
            for room in rooms:
                for index in range(plan.clients_per_room):
                    name = f"{room}.c{index}"
                    each = Client(name, room, cluster, recorder, plan, patient=index % 2 == 1)
                    nursery.start_soon(each.run)
            await _schedule(cluster, plan, rooms, restart_database, faults, outages)
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                for node in cluster.nodes:
                    if node.process is not None and node.process.returncode is None:
                        node.signal(signal.SIGCONT)
                        nursery.start_soon(node.end, signal.SIGTERM)
    stored = await cluster.stored()
    duration = trio.current_time() - began
    tallies = cluster.tallies()
    return Run(plan, recorder.events, stored, faults, outages, tallies, duration, recorder.connects)


def summary(run: Run, verdict: Verdict) -> dict[str, Any]:
    """The figures of a run: operations, faults, violations, failover times."""
    times = sorted(f.seconds for f in verdict.failovers if f.seconds is not None)
    kinds = [fault.kind for fault in run.faults]
    return {
        "seconds": round(run.duration, 1),
        "writes": verdict.writes,
        "acknowledged": verdict.acknowledged,
        "indeterminate": verdict.indeterminate,
        "failed": verdict.failed,
        "reads": verdict.reads,
        "stored": sum(len(log) for log in run.stored.values()),
        "faults": {kind: kinds.count(kind) for kind in sorted(set(kinds))},
        "postgres_outage_s": [round(s, 2) for s in run.outages],
        "lost": verdict.lost,
        "violations": len(verdict.violations),
        **run.tallies,
        "lease_s": run.plan.lease,
        "failover_s": spread(times),
        "not_recovered": sum(f.seconds is None for f in verdict.failovers),
    }


def spread(times: Sequence[float]) -> dict[str, float] | None:
    """Min, median, p95 (the nearest rank) and max of ``times``, which are sorted."""
    if not times:
        return None
    middle, p95 = statistics.median(times), times[math.ceil(len(times) * 0.95) - 1]
    return {
        "min": round(times[0], 3),
        "median": round(middle, 3),
        "p95": round(p95, 3),
        "max": round(times[-1], 3),
    }
