"""Logs: the JSON formatter as pure logic, the lines a connection's life writes (caught
with ``caplog``), and ``roomkit serve --log-json`` in a subprocess.

Servers listen on 127.0.0.1 port 0; waiting is ``wait_all_tasks_blocked`` or
``fail_after`` around an event.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio.testing
from websockets.sync.client import connect

import roomkit
from roomkit._logs import JSONFormatter, configure_logging, format_address

from .helpers import ROOT, Start, expect_close, http, open_client


def record(**extra: Any) -> logging.LogRecord:
    logger = logging.getLogger("roomkit.connection")
    return logger.makeRecord(
        logger.name, logging.INFO, __file__, 1, "%s: %s opened", ("/r", "ab-1"), None, extra=extra
    )


def test_json_lines_carry_the_extra_fields_as_keys() -> None:
    line = JSONFormatter().format(record(room="/r", connection="ab-1", remote="1.2.3.4:5"))
    entry = json.loads(line)
    assert "\n" not in line
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry.pop("time"))
    assert entry == {
        "level": "INFO",
        "logger": "roomkit.connection",
        "message": "/r: ab-1 opened",
        "room": "/r",
        "connection": "ab-1",
        "remote": "1.2.3.4:5",
    }


def test_json_lines_carry_the_traceback_and_survive_odd_values() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        error = record(cut=None, where=object())
        error.exc_info = sys.exc_info()
    entry = json.loads(JSONFormatter().format(error))
    assert entry["cut"] is None and entry["where"].startswith("<object object")
    assert entry["exception"].startswith("Traceback") and "ValueError: boom" in entry["exception"]


def test_addresses_are_written_host_colon_port() -> None:
    assert format_address(("127.0.0.1", 5000)) == "127.0.0.1:5000"
    assert format_address(("::1", 5000)) == "[::1]:5000"
    assert format_address(None) == "unknown"


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, restored after configure_logging replaced its handlers."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_configure_logging(root_logger: logging.Logger) -> None:
    configure_logging("WARNING", json_lines=True)
    assert root_logger.level == logging.WARNING
    assert isinstance(root_logger.handlers[0].formatter, JSONFormatter)
    configure_logging("debug")
    assert root_logger.level == logging.DEBUG
    assert not isinstance(root_logger.handlers[0].formatter, JSONFormatter)
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        configure_logging("loud")


def test_every_line_of_a_worker_says_which(
    root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("info", worker=3)
    logging.getLogger("roomkit.room").info("hello")
    logging.getLogger("roomkit.supervisor").info("about another", extra={"worker": 1})
    configure_logging("info")
    logging.getLogger("roomkit.room").info("alone")
    lines = [line.split(" ", 3)[3] for line in capsys.readouterr().err.splitlines()]
    assert lines == [
        "roomkit.room [worker 3]: hello",
        "roomkit.supervisor [worker 1]: about another",
        "roomkit.room: alone",
    ]
    configure_logging("info", json_lines=True, worker=0)
    logging.getLogger("roomkit.room").info("hello")
    assert json.loads(capsys.readouterr().err)["worker"] == 0


class Chatty(roomkit.Room):
    max_message_size = 10

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        if "reject" in request.query:
            raise roomkit.Reject(401, "who are you?")
        conn.send(conn.id)

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        if message == "fail":
            raise RuntimeError("on purpose")


def lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger]


async def test_a_connection_logs_its_open_and_its_close(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server = await start({"/chat": Chatty})
    async with open_client(f"{server.url}/chat/lobby") as ws:
        conn_id = await ws.get_message()
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]+", str(conn_id))
        opened = lines(caplog, "roomkit.connection")
        assert len(opened) == 1
        line: Any = opened[0]
        assert line.levelno == logging.INFO
        assert (line.room, line.connection) == ("/chat/lobby", conn_id)
        assert re.fullmatch(r"127\.0\.0\.1:\d+", line.remote)
        assert line.getMessage() == f"/chat/lobby: {conn_id} opened from {line.remote}"
    await trio.testing.wait_all_tasks_blocked()
    closed: Any = lines(caplog, "roomkit.connection")[1]
    assert (closed.room, closed.connection, closed.remote) == ("/chat/lobby", conn_id, line.remote)
    assert (closed.code, closed.reason, closed.clean, closed.cut) == (1000, "", True, None)
    assert closed.getMessage() == f"/chat/lobby: {conn_id} closed: 1000 ''"


async def test_a_cut_off_is_named_in_the_close_line(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server = await start(Chatty)
    async with open_client(f"{server.url}/r") as ws:
        await ws.get_message()
        await ws.send_message("x" * 11)
        assert (await expect_close(ws)).code == 1009
    await trio.testing.wait_all_tasks_blocked()
    closed: Any = lines(caplog, "roomkit.connection")[-1]
    assert (closed.code, closed.cut) == (1009, "message_too_big")
    assert closed.getMessage().endswith("closed: 1009 'Message too big', cut off (message_too_big)")


async def test_a_refused_handshake_and_a_hook_error_are_logged(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server = await start(Chatty)
    upgrade = (
        b"GET /r?reject HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    assert (await http(server.port, upgrade))[0] == 401
    refused: Any = lines(caplog, "roomkit.connection")[0]
    assert (refused.room, refused.status, refused.reason) == ("/r", 401, "who are you?")
    assert refused.levelno == logging.INFO and "refused: 401 who are you?" in refused.getMessage()

    async with open_client(f"{server.url}/r") as ws:
        conn_id = await ws.get_message()
        await ws.send_message("fail")
        assert (await expect_close(ws)).code == 1011
    error: Any = lines(caplog, "roomkit.room")[0]
    assert error.levelno == logging.ERROR
    assert (error.room, error.connection) == ("/r", conn_id)
    assert error.exc_info is not None and str(error.exc_info[1]) == "on purpose"


def test_cli_logs_json_lines_and_serves_metrics() -> None:
    command = (sys.executable, "-m", "roomkit", "serve", "examples.chat:ChatRoom", "--port", "0")
    options = ("--storage", ":memory:", "--log-json", "--log-level", "DEBUG", "--metrics")
    process = subprocess.Popen(
        [*command, *options],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    try:
        listening = json.loads(process.stderr.readline())
        assert (listening["level"], listening["logger"]) == ("INFO", "roomkit.server")
        url = listening["message"].removeprefix("roomkit listening on ")
        with connect(f"{url}/lobby?userId=ann") as ws:
            ws.recv(timeout=5)
            opened = json.loads(process.stderr.readline())
            assert (opened["logger"], opened["room"]) == ("roomkit.connection", "/lobby")
            port = int(url.rpartition(":")[2])
            status, _, body = trio.run(http, port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status == 200
            assert 'roomkit_connections{room_class="ChatRoom"} 1.0' in body.decode()
    finally:
        process.kill()
        process.wait()
        process.stderr.close()
