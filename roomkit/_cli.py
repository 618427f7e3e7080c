"""The ``roomkit`` command.

``roomkit serve MODULE:ATTR [--host] [--port] [--storage PATH] [--demo-page]`` serves
rooms; ``roomkit proxy BACKEND_URL [--host] [--port]`` forwards WebSockets to a backend.
"""

from __future__ import annotations

import argparse
import importlib
import logging
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
    """Run the server (or proxy); SIGINT or SIGTERM shuts it down gracefully."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(run)
            logger.info("roomkit listening on %s", server.url)
            async for signum in signals:
                logger.info("%s: shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


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
        "--demo-page", action="store_true", help="serve the chat demo page at / (examples.chat)"
    )
    forward = commands.add_parser("proxy", help="forward WebSockets to a backend")
    forward.add_argument("backend", metavar="BACKEND_URL", help="ws://host:port of the backend")
    forward.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    forward.add_argument("--port", type=int, default=8080, help="port to listen on (8080)")
    return parser
