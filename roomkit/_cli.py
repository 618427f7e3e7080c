"""The ``roomkit`` command.

``roomkit serve MODULE:ATTR [options]`` serves rooms; every option can also be set by a
``ROOMKIT_*`` environment variable (``roomkit serve --help`` lists them). With
``--workers N``, it is a supervisor of N worker processes (``_supervisor``), each of
which serves as ``roomkit serve`` alone would (``_worker``). ``roomkit proxy
BACKEND_URL [options]`` forwards WebSockets to a backend, with the server's limits by
default; its options fall back on ``ROOMKIT_PROXY_*`` variables (``roomkit proxy
--help``). Both take ``--log-level LEVEL`` and ``--log-json``, and serve ``wss://``
with ``--certfile`` and ``--keyfile``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import ssl
import sys
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, Final, cast

import trio

from ._core.supervision import HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT
from ._envoptions import EnvOptions, UsageError
from ._errors import StorageError, first_leaf
from ._logs import configure_logging
from ._options import Option, positive_seconds, worker_count
from ._proxy import PROXY_OPTIONS, ProxyServer, proxy
from ._request import RouteHook
from ._room import Room
from ._server import SERVE_OPTIONS, ServeOptions, Server, serve
from ._supervisor import supervise
from ._wsurl import WebSocketURL

__all__ = ["main", "parse_args", "serve_arguments"]

LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")

logger = logging.getLogger("roomkit.server")


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line; exits with 2 on a usage error, 1 if the storage is unusable."""
    command = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(command)
    try:
        run = _runner(args)  # with --workers, too: a bad command line is refused here, once
    except UsageError as exc:
        args.command_parser.error(str(exc))
    configure_logging(args.log_level, json_lines=args.log_json)
    workers: int | None = getattr(args, "workers", None)
    status = 0
    try:
        if workers is None:
            trio.run(_serve_until_signalled, run)
        else:
            status = trio.run(partial(_supervise, args, command, workers))
    except* StorageError as group:
        logger.critical("cannot start: %s", first_leaf(group))  # shown at every --log-level
        sys.exit(1)
    if status:
        sys.exit(status)


def parse_args(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> argparse.Namespace:
    """Parse the command line, with the environment (``os.environ`` by default) filling
    in the options it leaves out; exits with 2 on a usage error."""
    args = _parser().parse_args(argv)
    options: EnvOptions | None = getattr(args, "env_options", None)
    if options is not None:
        try:
            options.resolve(args, os.environ if environ is None else environ)
        except UsageError as exc:
            options.parser.error(str(exc))
    return args


def _runner(args: argparse.Namespace) -> Any:
    """The server or proxy that ``args`` ask for, to start with ``nursery.start``."""
    if args.command == "proxy":
        try:
            WebSocketURL.parse(args.backend)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        ssl_context = _ssl_context(args)
        options = _given(args, PROXY_OPTIONS.options)
        return partial(proxy, args.backend, ssl_context=ssl_context, **options)
    rooms, serve_options = serve_arguments(args)
    return partial(serve, rooms, **serve_options)


def serve_arguments(
    args: argparse.Namespace,
) -> tuple[type[Room] | Mapping[str, type[Room]], ServeOptions]:
    """What ``roomkit serve`` ``args`` pass to ``serve``: the rooms, and the options.

    Raises:
      UsageError: for a bad ``MODULE:ATTR``, route hook or certificate.
    """
    ssl_context = _ssl_context(args)
    rooms = load_rooms(args.target)
    route = None if args.route is None else load_route(args.route)
    given = _given(args, SERVE_OPTIONS.options)
    return rooms, cast(ServeOptions, {**given, "ssl_context": ssl_context, "route": route})


async def _supervise(args: argparse.Namespace, command: Sequence[str], workers: int) -> int:
    """``roomkit serve --workers N``: the supervisor of ``workers`` processes, each
    running ``command`` (this one's arguments); its exit status."""
    return await supervise(
        command,
        workers,
        host=args.host,
        port=args.port,
        tls=args.certfile is not None,
        storage=args.storage,
        worker_timeout=args.worker_timeout,
    )


def _given(args: argparse.Namespace, options: Mapping[str, Option]) -> dict[str, Any]:
    """The values of ``options`` that the command line sets, from ``args``."""
    return {name: getattr(args, name) for name, option in options.items() if option.on_command_line}


def _ssl_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """A server-side TLS context for the certificate chain and key, if they are given."""
    certfile: str | None = args.certfile
    keyfile: str | None = args.keyfile
    if certfile is None and keyfile is None:
        return None
    if certfile is None or keyfile is None:
        variables = ", ".join(map(args.env_options.variable, ("certfile", "keyfile")))
        raise UsageError(
            f"--certfile and --keyfile ({variables}) go together; "
            f"only {'--certfile' if keyfile is None else '--keyfile'} was given"
        )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(
            f"cannot load certificate {certfile!r} with key {keyfile!r}: {exc}"
        ) from None
    return context


def load_rooms(target: str) -> type[Room] | Mapping[str, type[Room]]:
    """Import ``"module:attr"`` and return the Room subclass or route mapping it names.

    The module is looked for in the working directory first, as ``python -m`` and
    uvicorn do, then on the rest of ``sys.path`` (``PYTHONPATH``, installed packages).
    An error raised by the module's own code propagates with its traceback; only a bad
    name is a UsageError.
    """
    value = _load(target)
    if isinstance(value, type) and issubclass(value, Room):
        return value
    if isinstance(value, Mapping) and all(
        isinstance(v, type) and issubclass(v, Room) for v in value.values()
    ):
        return value
    raise UsageError(f"{target} is neither a Room subclass nor a mapping of them")


def load_route(target: str) -> RouteHook:
    """Import ``"module:attr"`` and return the route hook it names, as :func:`load_rooms`."""
    value = _load(target)
    if not callable(value):
        raise UsageError(f"{target} is not a function (a route hook), but {value!r}")
    return cast(RouteHook, value)


def _load(target: str) -> Any:
    """What ``"module:attr"`` names; UsageError for a bad name."""
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
        raise UsageError(
            f"no module named {exc.name!r} in the current directory ({os.getcwd()}) "
            "or on the Python path"
        ) from None
    for part in attr.split("."):
        if not hasattr(value, part):
            raise UsageError(f"{target}: {value!r} has no attribute {part!r}")
        value = getattr(value, part)
    return value


async def _serve_until_signalled(run: Any) -> None:
    """Run the server (or proxy) until SIGINT or SIGTERM, then shut it down.

    A server shuts down as a restart: clients get 1012 "Service restart" and come back
    at once, to this server's successor. A proxy stops. A second signal while it
    drains exits at once, with status 128 + the signal's number.
    """
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            running: Server | ProxyServer = await nursery.start(run)
            logger.info("roomkit listening on %s", running.url)
            signum = await anext(signals)
        # A plain handler, not Trio's receiver: it runs even if a hook is stuck in a loop.
        for each in (signal.SIGINT, signal.SIGTERM):
            signal.signal(each, _exit_at_once)
        logger.info("%s: shutting down (a second signal exits at once)", _name(signum))
        if isinstance(running, Server):
            running.shutdown(restart=True)
        else:
            running.shutdown()


def _exit_at_once(signum: int, frame: object) -> None:
    logger.warning("%s: exiting at once, without waiting for the rest", _name(signum))
    os._exit(128 + signum)


def _name(signum: int) -> str:
    return signal.Signals(signum).name


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="roomkit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "serve",
        help="serve rooms over WebSockets",
        description="Serve rooms over WebSockets. Each option falls back on its environment "
        "variable, then on its default. SIGTERM or SIGINT shuts the server down as a restart "
        "(clients get 1012 and come back at once); a second signal exits at once. With "
        "--workers N, N worker processes serve the port, each room in one of them, under a "
        "supervisor that restarts a worker that dies or hangs.",
    )
    run.add_argument("target", metavar="MODULE:ATTR", help="a Room subclass or a route mapping")
    run.set_defaults(command_parser=run, env_options=_serve_options(EnvOptions(run)))
    forward = commands.add_parser(
        "proxy",
        help="forward WebSockets to a backend",
        description="Forward WebSockets to a backend, with a server's limits by default. Each "
        "option falls back on its environment variable, then on its default.",
    )
    forward.add_argument(
        "backend",
        metavar="BACKEND_URL",
        help="ws:// or wss:// URL of the backend, optionally with a path prefix",
    )
    options = _proxy_options(EnvOptions(forward, prefix="ROOMKIT_PROXY_"))
    forward.set_defaults(command_parser=forward, env_options=options)
    return parser


#: The options of both commands that are not their functions': the files of the
#: ``ssl_context``.
_TLS_OPTIONS: Final = {
    "certfile": Option(
        default=None,
        group="TLS",
        metavar="PATH",
        shown="none: plain ws://",
        help="PEM file of the certificate chain; with --keyfile, listens for wss://",
    ),
    "keyfile": Option(
        default=None,
        group="TLS",
        metavar="PATH",
        shown="none",
        help="PEM file of the certificate's private key",
    ),
}


#: ``roomkit serve``'s name of ``serve``'s route hook, to import.
_ROUTE_OPTION: Final = {
    "route": Option(
        default=None,
        group="routing",
        metavar="MODULE:ATTR",
        shown="none: by path alone",
        help="a function of the request that chooses its room, or refuses it (see docs/api.md)",
    ),
}
#: What the commands have in place of their functions' options that are no text.
_STAND_INS: Final = {"ssl_context": _TLS_OPTIONS, "route": _ROUTE_OPTION}


def silence_limit(text: str) -> float:
    """``--worker-timeout``: seconds longer than ``HEARTBEAT_INTERVAL``; ValueError if not."""
    limit = positive_seconds(text)
    if limit <= HEARTBEAT_INTERVAL:
        raise ValueError(
            f"expected more than the {HEARTBEAT_INTERVAL} s between heartbeats, not {text!r}"
        )
    return limit


def log_level(text: str) -> str:
    """A logging level's name, in lower case; ValueError if there is no such level."""
    level = text.strip().lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"{text!r} is not a log level ({', '.join(LOG_LEVELS)})")
    return level


#: ``roomkit serve``'s processes: ``serve`` itself is one.
_WORKERS_OPTION: Final = {
    "workers": Option(
        default=None,
        group="processes",
        parse=worker_count,
        metavar="N",
        shown="none: one process",
        help="N worker processes (auto: one per CPU) under a supervisor that restarts them "
        "(see docs/operating.md)",
    ),
    "worker_timeout": Option(
        default=HEARTBEAT_TIMEOUT,
        group="processes",
        parse=silence_limit,
        metavar="SECONDS",
        help="with --workers, kill a worker silent this long as hung (more than "
        f"{HEARTBEAT_INTERVAL} s: its heartbeats' interval)",
    ),
}


#: How both commands log.
_LOGGING_OPTIONS: Final = {
    "log_level": Option(
        default="info",
        group="operations",
        parse=log_level,
        metavar="LEVEL",
        help=f"log lines at this level and above: {', '.join(LOG_LEVELS)}",
    ),
    "log_json": Option(default=False, group="operations", help="log one JSON object per line"),
}


def _add_options(options: EnvOptions, function_options: Mapping[str, Option]) -> None:
    """A function's options, each that is no text with its ``_STAND_INS`` in its place
    (the two files of an ``ssl_context``, the name of a ``route``)."""
    for name, option in function_options.items():
        options.add_all(_STAND_INS.get(name, {name: option}))


def _serve_options(options: EnvOptions) -> EnvOptions:
    """``roomkit serve``'s options: ``serve``'s (stand-ins in place), the workers, and
    logging."""
    _add_options(options, SERVE_OPTIONS.options)
    options.add_all(_WORKERS_OPTION)
    options.add_all(_LOGGING_OPTIONS)
    return options


def _proxy_options(options: EnvOptions) -> EnvOptions:
    """``roomkit proxy``'s options: ``proxy``'s (stand-ins in place), and logging."""
    _add_options(options, PROXY_OPTIONS.options)
    options.add_all(_LOGGING_OPTIONS)
    return options
