"""The ``roomkit`` command: signals and graceful restarts, configuration, usage errors.

Signals go to real ``roomkit serve`` subprocesses that the tests start themselves; each
waits for the process with a bounded timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

import roomkit
from roomkit._cli import _runner, main, parse_args
from roomkit._envoptions import UsageError, flag_of
from roomkit._options import OptionSet, usable_cpus
from roomkit._proxy import PROXY_OPTIONS
from roomkit._server import SERVE_OPTIONS
from roomkit.storage._sqlite import SQLiteCore

from .helpers import (
    ROOT,
    call,
    roomkit_command,
    roomkit_env,
    roomkit_serve,
    roomkit_serve_refused,
)
from .test_routing import by_header

ROOMKIT = (sys.executable, "-m", "roomkit")
TARGET = "examples.chat:ChatRoom"


def stored(db: Path, room: str, keys: list[str]) -> dict[str, Any]:
    """What ``room`` (served by a single Room class) has stored in the SQLite file ``db``."""

    async def read() -> dict[str, str]:
        store = await roomkit.storage.SQLiteStore.open(db)
        try:
            return await store.get_many(roomkit.storage.RoomId("", room), keys)
        finally:
            await store.aclose()

    return {key: json.loads(value) for key, value in trio.run(read).items()}


def closed_with(ws: ClientConnection) -> tuple[int, str]:
    """Read until the server closes: its close code and reason."""
    with pytest.raises(ConnectionClosed) as info:
        while True:
            ws.recv(timeout=5)
    assert info.value.rcvd is not None
    return info.value.rcvd.code, info.value.rcvd.reason


def test_sigterm_closes_with_1012_commits_storage_and_exits_0(tmp_path: Path) -> None:
    db = tmp_path / "rooms.sqlite3"
    with roomkit_serve("tests.apps:Farewell", "--storage", str(db)) as (process, url):
        with connect(f"{url}/ledger") as ws:
            assert call(ws, "put", key="a", value=1) is None
            process.send_signal(signal.SIGTERM)
            assert closed_with(ws) == (1012, "Service restart")
        assert process.wait(timeout=10) == 0
    # "goodbye" was written by on_close, during the drain: committed before the exit.
    assert stored(db, "ledger", ["a", "goodbye"]) == {"a": 1, "goodbye": [1012, "Service restart"]}


def test_sigterm_stops_a_proxy_with_status_0() -> None:
    with roomkit_command("proxy", "ws://127.0.0.1:9", "--port", "0") as (process, _):
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_a_room_refusing_with_an_unnamed_status_leaves_the_process_serving() -> None:
    with roomkit_serve("tests.apps:Picky", "--storage", ":memory:") as (process, url):
        with pytest.raises(InvalidStatus) as info, connect(f"{url}/doomed?status=499"):
            pass
        assert info.value.response.status_code == 499
        assert info.value.response.reason_phrase == "Client Error"
        with connect(f"{url}/other") as ws:
            ws.send("still serving")
            assert ws.recv(timeout=5) == "still serving"
        assert process.poll() is None


def test_the_default_room_and_the_route_hook_from_the_command_line() -> None:
    options = ("--storage", ":memory:", "--default-room", "lobby")
    route = ("--route", "tests.test_routing:by_header")
    with roomkit_serve("tests.test_routing:Where", *options, *route) as (_, url):
        with connect(f"{url}/") as ws:
            assert ws.recv(timeout=5) == "Where 'lobby' 'lobby' /"
        with connect(f"{url}/", additional_headers={"X-Room": "team"}) as ws:
            assert ws.recv(timeout=5) == "Where 'team' 'team' /"


def test_a_second_signal_during_a_held_up_drain_exits_at_once(tmp_path: Path) -> None:
    db = tmp_path / "rooms.sqlite3"
    options = ("--storage", str(db), "--drain-timeout", "60")
    with roomkit_serve("tests.apps:Farewell", *options) as (process, url):
        with connect(f"{url}/ledger") as ws:
            call(ws, "put", key="linger", value=True)  # on_close will hold the drain up
            process.send_signal(signal.SIGTERM)
            assert closed_with(ws)[0] == 1012
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=0.2)  # draining, for up to a minute
        process.send_signal(signal.SIGINT)
        # 130, not the 0 of a finished drain: the second signal cut the minute short.
        assert process.wait(timeout=5) == 128 + signal.SIGINT


def test_a_second_server_on_one_storage_file_refuses_to_start(tmp_path: Path) -> None:
    db = tmp_path / "rooms.sqlite3"
    lock = tmp_path / "rooms.sqlite3.roomkit.lock"
    with roomkit_serve("tests.apps:KV", "--storage", str(db)) as (first, url):
        with connect(f"{url}/lobby") as ws:
            call(ws, "put", key="a", value=1)
        # The refusal is logged at every level, the quietest too.
        options = ("--storage", str(db), "--log-level", "critical")
        second = roomkit_serve_refused("tests.apps:KV", *options)
        assert second.returncode == 1
        assert (
            f"cannot start: the storage file {db} is in use by another server "
            f"(pid {first.pid}), which holds {lock}; one server per storage file"
        ) in second.stderr
        assert "Traceback" not in second.stderr
        with connect(f"{url}/lobby") as ws:
            assert call(ws, "get", key="a") == 1  # the first one serves on
    # roomkit_serve killed the first one with SIGKILL: its lock file and pid stay behind,
    # and do not stop the next start.
    assert lock.read_text() == f"{first.pid}\n"
    with roomkit_serve("tests.apps:KV", "--storage", str(db)) as (third, url):
        assert lock.read_text() == f"{third.pid}\n"
        with connect(f"{url}/lobby") as ws:
            assert call(ws, "get", key="a") == 1


def without_root_overrides(probe: Path) -> list[str]:
    """A command prefix under which file permissions apply, even to root.

    Root ignores permission bits (CAP_DAC_OVERRIDE), so the suite, which runs as root,
    would write a read-only file. ``setpriv`` drops that capability, and the one that
    reads past them, from the child; files the test owns stay as they are to a normal
    user. ``probe`` must be a file that its mode forbids writing: checked here.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("as root, a read-only file needs setpriv (util-linux) to stay read-only")
    caps = "-dac_override,-dac_read_search"
    prefix = [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}"]
    check = subprocess.run(
        [*prefix, sys.executable, "-c", f"open({str(probe)!r}, 'r+')"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    if "PermissionError" not in check.stderr:
        pytest.skip(f"setpriv cannot drop CAP_DAC_OVERRIDE here: {check.stderr.strip()!r}")
    return prefix


def test_a_read_only_storage_file_refuses_to_start(tmp_path: Path) -> None:
    db = tmp_path / "rooms.sqlite3"
    SQLiteCore(db).close()
    db.chmod(0o444)
    result = roomkit_serve_refused(
        "tests.apps:KV", "--storage", str(db), prefix=without_root_overrides(db)
    )
    assert result.returncode == 1, result.stderr
    assert (
        f"cannot start: the storage file {db} cannot be written by this process "
        "(attempt to write a readonly database)"
    ) in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_usage_errors() -> None:
    run = partial(subprocess.run, cwd=ROOT, capture_output=True, text=True, timeout=30)
    result = run([*ROOMKIT, "serve", "examples.chat"])
    assert result.returncode == 2 and "expected MODULE:ATTR" in result.stderr
    result = run([*ROOMKIT, "serve", "examples.chat:Chat"])
    assert result.returncode == 2 and "neither a Room subclass nor a mapping" in result.stderr
    result = run([*ROOMKIT, "serve", "no_such_module:Room"])
    assert result.returncode == 2 and "no module named 'no_such_module'" in result.stderr
    result = run([*ROOMKIT, "serve", "examples.chat:Nope"])
    assert result.returncode == 2 and "has no attribute 'Nope'" in result.stderr
    result = run([*ROOMKIT, "serve", TARGET, "--route", "examples.chat:Nope"])
    assert result.returncode == 2 and "has no attribute 'Nope'" in result.stderr


def test_route_names_a_function_to_import() -> None:
    assert _runner(serve_args()).keywords["route"] is None
    by_flag = _runner(serve_args("--route", "tests.test_routing:by_header"))
    by_variable = _runner(serve_args(ROOMKIT_ROUTE="tests.test_routing:by_header"))
    assert by_flag.keywords["route"] is by_variable.keywords["route"] is by_header
    with pytest.raises(UsageError) as raised:
        _runner(serve_args("--route", "tests.test_routing:TOKENS"))
    assert str(raised.value).startswith(
        "tests.test_routing:TOKENS is not a function (a route hook), but {"
    )
    with pytest.raises(UsageError, match="expected MODULE:ATTR"):
        _runner(serve_args("--route", "by_header"))


#: The command as installed (``pip install -e .``), not ``python -m roomkit``, which puts
#: the working directory on ``sys.path`` by itself.
INSTALLED = str(Path(sys.executable).with_name("roomkit"))


def serve_from(cwd: Path, target: str, **environ: str) -> str:
    """What ``roomkit serve TARGET`` run in ``cwd`` answers "hi" with, or its usage error."""
    command = [INSTALLED, "serve", target, "--port", "0", "--storage", ":memory:"]
    env = {**roomkit_env(), **environ}
    with subprocess.Popen(command, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True) as process:
        try:
            assert process.stderr is not None
            line = process.stderr.readline()
            if "listening on" not in line:
                process.wait(timeout=10)
                return line + process.stderr.read()
            with connect(f"{line.split()[-1]}/lobby?userId=ann") as ws:
                ws.send(json.dumps({"type": "chat", "text": "hi"}))
                return str(ws.recv(timeout=5))
        finally:
            process.kill()


def test_the_module_is_imported_from_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "lobby.py").write_text(
        "import roomkit\n\n"
        "class Lobby(roomkit.Room):\n"
        "    async def on_message(self, conn, message):\n"
        "        conn.send('lobby: ' + message)\n"
    )
    assert serve_from(tmp_path, "lobby:Lobby").startswith('lobby: {"type": "chat"')


def test_examples_are_served_from_the_repository_or_with_it_on_the_path(tmp_path: Path) -> None:
    # examples/ is the repository's, not installed: elsewhere it is not found...
    refused = serve_from(tmp_path, TARGET)
    assert "no module named 'examples' in the current directory" in refused
    assert f"({tmp_path})" in refused
    # ...unless the repository is on PYTHONPATH, or is the working directory.
    for cwd, environ in ((tmp_path, {"PYTHONPATH": str(ROOT)}), (ROOT, {})):
        assert json.loads(serve_from(cwd, TARGET, **environ))["type"] == "welcome"


def serve_args(*argv: str, **environ: str) -> argparse.Namespace:
    return parse_args(["serve", TARGET, *argv], environ)


def proxy_args(*argv: str, **environ: str) -> argparse.Namespace:
    return parse_args(["proxy", "ws://127.0.0.1:9000", *argv], environ)


def test_serve_options_and_their_defaults() -> None:
    args = serve_args()
    assert args.target == TARGET
    assert (args.host, args.port, args.storage, args.group_commit) == (
        "127.0.0.1",
        8080,
        "roomkit.sqlite3",
        True,
    )
    assert (args.handshake_timeout, args.max_connections, args.allowed_origins) == (10, None, None)
    assert (args.drain_timeout, args.demo_page) == (10, False)
    # Every option of serve() has its flag (ssl_context has two: --certfile, --keyfile).
    assert set(SERVE_OPTIONS.options) - {"ssl_context"} <= set(vars(args))


#: For each option of serve() and proxy() but the switches, a value other than its
#: default, as a flag or a variable gives it.
SAMPLES = {
    "host": "::1",
    "port": "9000",
    "storage": "rooms.sqlite3",
    "default_room": "lobby",
    "handshake_timeout": "2.5",
    "max_connections": "100",
    "allowed_origins": "https://a.example",
    "drain_timeout": "30",
    "advertise": "10.0.0.1:9000",
    "lease": "2.5",
    "cluster_secret": "s3cret",
    "max_message_size": "1000",
    "rate_limit": "10,5",
    "forward_headers": "x-tenant,cookie",
    "drop_headers": "x-forwarded-for",
}


@pytest.mark.parametrize(
    ("command", "prefix", "options"),
    [(serve_args, "ROOMKIT_", SERVE_OPTIONS), (proxy_args, "ROOMKIT_PROXY_", PROXY_OPTIONS)],
    ids=["serve", "proxy"],
)
def test_every_option_has_a_flag_and_a_variable_that_give_the_same_value(
    command: Any, prefix: str, options: OptionSet[Any]
) -> None:
    given = {name: option for name, option in options.options.items() if option.on_command_line}
    # --certfile and --keyfile make ssl_context; --route names a function to import.
    assert set(options.options) - set(given) <= {"ssl_context", "route"}
    for name, option in given.items():
        flag = flag_of(name)
        if isinstance(option.default, bool):
            argv, text = (f"--no-{flag[2:]}", "off") if option.default else (flag, "on")
        else:
            argv, text = f"{flag}={SAMPLES[name]}", SAMPLES[name]
        by_flag = command(argv)
        by_variable = command(**{prefix + name.upper(): text})
        value = getattr(by_flag, name)
        assert value == getattr(by_variable, name) != option.default_of_command, name
        assert _runner(by_flag).keywords[name] == value  # and the function gets it


def test_every_option_from_the_environment() -> None:
    args = serve_args(
        ROOMKIT_HOST="0.0.0.0",
        ROOMKIT_PORT="9000",
        ROOMKIT_STORAGE="/var/lib/roomkit/rooms.sqlite3",
        ROOMKIT_GROUP_COMMIT="off",
        ROOMKIT_HANDSHAKE_TIMEOUT="2.5",
        ROOMKIT_MAX_CONNECTIONS="100",
        ROOMKIT_ALLOWED_ORIGINS="https://a.example, https://b.example:8443/",
        ROOMKIT_DRAIN_TIMEOUT="30",
        ROOMKIT_DEMO_PAGE="Yes",
        ROOMKIT_DEFAULT_ROOM="general talk",
    )
    assert (args.host, args.port, args.storage) == (
        "0.0.0.0",
        9000,
        "/var/lib/roomkit/rooms.sqlite3",
    )
    assert (args.group_commit, args.handshake_timeout, args.max_connections) == (False, 2.5, 100)
    assert args.allowed_origins == ("https://a.example", "https://b.example:8443/")
    assert (args.drain_timeout, args.demo_page, args.default_room) == (30, True, "general talk")


def test_a_flag_wins_over_its_variable_and_an_empty_variable_is_unset() -> None:
    args = serve_args(
        "--port=1",
        "--no-demo-page",
        "--drain-timeout=0",
        "--group-commit",
        ROOMKIT_PORT="2",
        ROOMKIT_DEMO_PAGE="1",
        ROOMKIT_DRAIN_TIMEOUT="5",
        ROOMKIT_GROUP_COMMIT="0",
        ROOMKIT_HOST="::1",
        ROOMKIT_STORAGE="",
        ROOMKIT_MAX_CONNECTIONS="  ",
    )
    assert (args.port, args.demo_page, args.drain_timeout, args.group_commit) == (1, False, 0, True)
    assert (args.host, args.storage, args.max_connections) == ("::1", "roomkit.sqlite3", None)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("ROOMKIT_PORT", "http", "expected a port number (0-65535), not 'http'"),
        ("ROOMKIT_PORT", "65536", "expected a port number"),
        ("ROOMKIT_DRAIN_TIMEOUT", "-1", "expected a number of seconds, 0 or more, not '-1'"),
        ("ROOMKIT_DRAIN_TIMEOUT", "nan", "expected a number of seconds"),
        ("ROOMKIT_HANDSHAKE_TIMEOUT", "0", "expected a number of seconds, more than 0"),
        ("ROOMKIT_MAX_CONNECTIONS", "0", "expected a whole number, 1 or more, not '0'"),
        ("ROOMKIT_GROUP_COMMIT", "maybe", "expected 1, true, yes, on, 0, false, no or off"),
        ("ROOMKIT_ALLOWED_ORIGINS", "example.com", "expected comma-separated origins"),
        ("ROOMKIT_ALLOWED_ORIGINS", "https://a.example,", "expected comma-separated origins"),
        (
            "ROOMKIT_DEFAULT_ROOM",
            "a/b",
            "expected a room name, not 'a/b': a room name cannot contain '/'",
        ),
    ],
)
def test_a_bad_variable_is_a_usage_error_naming_it(
    capsys: pytest.CaptureFixture[str], variable: str, value: str, expected: str
) -> None:
    with pytest.raises(SystemExit) as info:
        serve_args(**{variable: value})
    assert info.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith(f"roomkit serve: error: environment variable {variable}: {expected}")


def test_a_bad_flag_is_a_usage_error_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        serve_args("--port", "http", ROOMKIT_PORT="8000")
    assert info.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert (
        error
        == "roomkit serve: error: argument --port: expected a port number (0-65535), not 'http'"
    )


def test_help_shows_each_option_with_its_default_and_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(["serve", "--help"], {})
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for group in ("listening:", "storage:", "connections:", "shutdown:", "demo:", "processes:"):
        assert group in text
    assert "--port PORT port; 0 picks a free one [default: 8080; env: ROOMKIT_PORT]" in text
    assert "[default: on; env: ROOMKIT_GROUP_COMMIT]" in text
    assert "[default: no limit; env: ROOMKIT_MAX_CONNECTIONS]" in text
    assert "[default: 10; env: ROOMKIT_DRAIN_TIMEOUT]" in text
    assert "--default-room NAME the room that / reaches" in text
    assert "[default: default; env: ROOMKIT_DEFAULT_ROOM]" in text
    assert "--route MODULE:ATTR a function of the request" in text
    assert "[default: none: by path alone; env: ROOMKIT_ROUTE]" in text
    assert "--workers N N worker processes (auto: one per CPU)" in text
    assert "[default: none: one process; env: ROOMKIT_WORKERS]" in text


def test_certfile_and_keyfile_go_together(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", TARGET, "--certfile", "cert.pem"])
    assert info.value.code == 2
    together = "--certfile and --keyfile (ROOMKIT_CERTFILE, ROOMKIT_KEYFILE) go together"
    assert f"{together}; only --certfile was given" in capsys.readouterr().err
    monkeypatch.setenv("ROOMKIT_KEYFILE", "key.pem")
    with pytest.raises(SystemExit) as info:
        main(["serve", TARGET])
    assert info.value.code == 2 and "only --keyfile was given" in capsys.readouterr().err
    missing = tmp_path / "missing.pem"
    with pytest.raises(SystemExit) as info:
        main(["serve", TARGET, "--certfile", str(missing), "--keyfile", str(missing)])
    assert info.value.code == 2
    assert f"cannot load certificate {str(missing)!r} with key" in capsys.readouterr().err


def test_proxy_limits_default_to_the_servers_and_have_flags_and_variables() -> None:
    run = _runner(proxy_args())
    assert run.keywords == {
        "host": "127.0.0.1",
        "port": 8080,
        "ssl_context": None,
        "handshake_timeout": 10.0,
        "forward_headers": None,
        "drop_headers": (),
        "max_message_size": roomkit.Room.max_message_size,
        "max_connections": 10_000,
        "rate_limit": roomkit.Room.rate_limit,
    }
    # Every option of proxy() has its flag.
    assert set(PROXY_OPTIONS.options) == set(run.keywords)
    run = _runner(
        proxy_args(
            "--max-message-size=1000",
            "--rate-limit",
            "10,5",
            ROOMKIT_PROXY_MAX_CONNECTIONS="7",
            ROOMKIT_PROXY_HANDSHAKE_TIMEOUT="2.5",
            ROOMKIT_PROXY_MAX_MESSAGE_SIZE="9",
        )
    )
    assert (run.keywords["max_message_size"], run.keywords["max_connections"]) == (1000, 7)
    assert run.keywords["handshake_timeout"] == 2.5
    assert run.keywords["rate_limit"] == roomkit.RateLimit(per_second=10, burst=5)
    assert _runner(proxy_args("--rate-limit=off")).keywords["rate_limit"] is None


@pytest.mark.parametrize("value", ["100", "100,", "fast,200", "0,200", "100,0", "1,2,3"])
def test_a_bad_proxy_rate_limit_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], value: str
) -> None:
    with pytest.raises(SystemExit) as info:
        proxy_args(ROOMKIT_PROXY_RATE_LIMIT=value)
    assert info.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith("roomkit proxy: error: environment variable ROOMKIT_PROXY_RATE_LIMIT")
    assert "expected PER_SECOND,BURST (such as 100,200) or off" in error


def test_workers_from_a_flag_or_its_variable_and_auto_is_one_per_cpu() -> None:
    assert serve_args().workers is None  # one process, as ever
    assert serve_args("--workers", "3").workers == 3
    assert serve_args(ROOMKIT_WORKERS="2").workers == 2
    assert serve_args("--workers=1", ROOMKIT_WORKERS="4").workers == 1
    assert serve_args("--workers", "auto").workers == usable_cpus()
    assert serve_args(ROOMKIT_WORKERS="AUTO").workers == usable_cpus()
    assert "workers" not in _runner(serve_args("--workers", "2")).keywords  # not serve's


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2,
    reason="needs CPU affinity, and two CPUs to leave one out",
)
def test_auto_is_one_worker_per_cpu_the_server_may_run_on() -> None:
    """Under ``taskset`` or a container's cpuset, ``auto`` counts the CPUs it is given,
    not the machine's."""
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        assert serve_args("--workers", "auto").workers == 1
    finally:
        os.sched_setaffinity(0, allowed)


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_worker_count_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], value: str
) -> None:
    with pytest.raises(SystemExit) as info:
        serve_args(ROOMKIT_WORKERS=value)
    assert info.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error == (
        "roomkit serve: error: environment variable ROOMKIT_WORKERS: "
        f"expected a number of workers, 1 or more, or auto, not {value!r}"
    )


def test_the_worker_timeout_from_a_flag_or_its_variable_ten_seconds_by_default() -> None:
    assert serve_args().worker_timeout == 10.0
    assert serve_args("--worker-timeout", "2").worker_timeout == 2.0
    assert serve_args(ROOMKIT_WORKER_TIMEOUT="30").worker_timeout == 30.0
    assert "worker_timeout" not in _runner(serve_args("--worker-timeout", "2")).keywords


@pytest.mark.parametrize("value", ["0.25", "0.1"])
def test_a_worker_timeout_within_a_heartbeat_interval_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], value: str
) -> None:
    with pytest.raises(SystemExit) as info:
        serve_args("--worker-timeout", value)
    assert info.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.endswith(f"expected more than the 0.25 s between heartbeats, not {value!r}")
