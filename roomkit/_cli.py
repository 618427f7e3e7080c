"""The ``roomkit`` command.

``roomkit serve MODULE:ATTR [--host] [--port] [--storage PATH] [--demo-page]`` serves
rooms; ``roomkit proxy BACKEND_URL [--host] [--port]`` forwards WebSockets to a backend.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import trio

from ._proxy import proxy
from ._room import Room
from ._server import Server, serve
from ._wsurl import WebSocketURL

__all__ = ["main"]

logger = logging.getLogger("roomkit")


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line; exits with 2 on a usage error."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "proxy":
        try:
            WebSocketURL.parse(args.backend)
        except ValueError as exc:
            parser.error(str(exc))
        run = partial(proxy, args.backend, host=args.host, port=args.port)
    else:
        try:
            rooms = load_rooms(args.target)
        except UsageError as exc:
            parser.error(str(exc))
        run = partial(
            serve,
            rooms,
            host=args.host,
            port=args.port,
            storage=args.storage,
            drain_timeout=args.drain_timeout,
            demo_page=args.demo_page,
        )
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    trio.run(_serve_until_signalled, run)


class UsageError(Exception):
    """Raised when the command line names something that cannot be served."""


def load_rooms(target: str) -> type[Room] | Mapping[str, type[Room]]:
    """Import ``"module:attr"`` and return the Room subclass or route mapping it names.

    The working directory is importable, as with ``python -m``. An error raised by the
    module's own code propagates with its traceback; only a bad name is a UsageError.
    """
    module_name, colon, attr = target.partition(":")
    if not colon or not module_name or not attr:
        raise UsageError(f"expected MODULE:ATTR (e.g. examples.chat:ChatRoom), not {target!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        value: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        named = exc.name is not None and (
            exc.name == module_name or module_name.startswith(exc.name + ".")
        )
        if not named:  # the module exists, but something it imports does not
            raise
        raise UsageError(f"no module named {exc.name!r}") from None
    for part in attr.split("."):
        if not hasattr(value, part):
            raise UsageError(f"{target}: {value!r} has no attribute {part!r}")
        value = getattr(value, part)
    if isinstance(value, type) and issubclass(value, Room):
        return value
    if isinstance(value, Mapping) and all(
        isinstance(v, type) and issubclass(v, Room) for v in value.values()
    ):
        return value
    raise UsageError(f"{target} is neither a Room subclass nor a mapping of them")


async def _serve_until_signalled(run: Any) -> None:
    """Run the server (or proxy) until SIGINT or SIGTERM, then shut it down as a restart.

    Clients get 1012 "Service restart" and come back at once, to this server's successor.
    A second signal while it drains exits at once, with status 128 + the signal's number.
    """
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            server: Server = await nursery.start(run)
            logger.info("roomkit listening on %s", server.url)
            signum = await anext(signals)
        # A plain handler, not Trio's receiver: it runs even if a hook is stuck in a loop.
        for each in (signal.SIGINT, signal.SIGTERM):
            signal.signal(each, _exit_at_once)
        logger.info("%s: shutting down (a second signal exits at once)", _name(signum))
        server.shutdown(restart=True)


def _exit_at_once(signum: int, frame: object) -> None:
    logger.warning("%s: exiting at once, without waiting for the rest", _name(signum))
    os._exit(128 + signum)


def _name(signum: int) -> str:
    return signal.Signals(signum).name


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="roomkit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="serve rooms over WebSockets")
    run.add_argument("target", metavar="MODULE:ATTR", help="a Room subclass or a route mapping")
    run.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    run.add_argument("--port", type=int, default=8080, help="port to listen on (8080)")
    run.add_argument(
        "--storage",
        default="roomkit.sqlite3",
        metavar="PATH",
        help="SQLite database file for room storage (roomkit.sqlite3); :memory: keeps none",
    )
    run.add_argument(
        "--drain-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="at SIGTERM or SIGINT, how long clients and rooms get to finish (10)",
    )
    run.add_argument(
        "--demo-page", action="store_true", help="serve the chat demo page at / (examples.chat)"
    )
    forward = commands.add_parser("proxy", help="forward WebSockets to a backend")
    forward.add_argument("backend", metavar="BACKEND_URL", help="ws://host:port of the backend")
    forward.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    forward.add_argument("--port", type=int, default=8080, help="port to listen on (8080)")
    return parser
