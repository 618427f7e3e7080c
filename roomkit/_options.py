"""The options of ``serve`` and ``proxy``, each declared once.

A function's options are the keys of a ``TypedDict`` (``ServeOptions``, ``ProxyOptions``),
each annotated ``Annotated[T, Option(...)]``: the key is the option's name and keyword,
``T`` its type, which mypy checks at every call (``**options: Unpack[ServeOptions]``),
and the :class:`Option` holds the rest: its default, the check of a value given in
Python, and what the command line makes of it (its flag is ``--`` and the name with
dashes, its environment variable is named after the flag: see ``_envoptions``).
Everything else is read from there: the defaults a call leaves out, ``roomkit serve``'s
and ``roomkit proxy``'s flags and variables, and the options the test kit passes on. So
adding an option is adding one key.
"""

from __future__ import annotations

import math
import os
import ssl
from collections.abc import Callable, Mapping
from typing import Any, Final, Generic, TypeVar, cast, get_args, get_type_hints

import attrs

from ._core.frontdoor import room_name_problem
from ._core.limits import HANDSHAKE_TIMEOUT
from ._core.ratelimit import RateLimit

__all__ = [
    "HANDSHAKE",
    "HOST",
    "PORT",
    "Option",
    "OptionSet",
    "advertised_address",
    "boolean",
    "check_advertised_address",
    "check_callable_or_none",
    "check_count",
    "check_count_or_none",
    "check_positive_seconds",
    "check_room_name",
    "check_seconds",
    "check_secret",
    "check_ssl_context",
    "origins",
    "port",
    "positive_int",
    "positive_seconds",
    "rate_limit",
    "room_name",
    "seconds",
    "worker_count",
]

T = TypeVar("T", bound=Mapping[str, Any])

#: ``Option.command_default``'s default: the command line's default is the function's.
_SAME: Final[Any] = object()


@attrs.frozen(kw_only=True)
class Option:
    """One option: its default, how a value is checked, and its place on the command line.

    Attributes:
      default: the value when a call leaves the option out.
      help: one line for ``--help``; the default and the variable are appended.
      group: the ``--help`` section it is listed in.
      parse: turns a flag's or a variable's text into the value (ValueError if bad);
        None for an option the command line does not set (an ``ssl_context``). A
        ``bool`` default makes a switch, ``--flag``/``--no-flag``, instead.
      check: ``check(name, value)`` raises if a value given in Python is bad.
      metavar: the value's name in ``--help``.
      shown: the default as ``--help`` shows it, when its value says too little.
      command_default: the default of the command line, where it differs (a server
        started by hand keeps its storage in a file).
    """

    default: Any
    help: str
    group: str
    parse: Callable[[str], Any] | None = str
    check: Callable[[str, Any], None] | None = None
    metavar: str | None = None
    shown: str | None = None
    command_default: Any = _SAME

    @property
    def on_command_line(self) -> bool:
        """Whether the command line sets it: with a flag, or as a switch."""
        return self.parse is not None or isinstance(self.default, bool)

    @property
    def default_of_command(self) -> Any:
        """The default when the command line and the environment leave it out."""
        return self.default if self.command_default is _SAME else self.command_default


class OptionSet(Generic[T]):
    """The options of one function, read from the ``TypedDict`` ``keys`` of annotated keys.

    Args:
      keys: the ``TypedDict`` whose keys are the options, each ``Annotated[T, Option]``.
      caller: the function's name, for the error on an unknown keyword.
    """

    def __init__(self, keys: Any, caller: str) -> None:
        self.caller: Final = caller
        hints = get_type_hints(keys, include_extras=True)
        #: Every option by name, in the order the ``TypedDict`` declares them.
        self.options: Final[dict[str, Option]] = {
            name: _option_of(name, hint) for name, hint in hints.items()
        }

    def complete(self, given: Mapping[str, Any]) -> T:
        """``given`` with each option it leaves out at its default, every value checked.

        Raises:
          TypeError: for a keyword that is no option (as Python's own, for callers that
            mypy does not check), and whatever an option's check raises.
        """
        for name in given:
            if name not in self.options:
                raise TypeError(f"{self.caller}() got an unexpected keyword argument {name!r}")
        values = {name: given.get(name, option.default) for name, option in self.options.items()}
        for name, option in self.options.items():
            if option.check is not None:
                option.check(name, values[name])
        return cast(T, values)


def _option_of(name: str, hint: Any) -> Option:
    found = [extra for extra in getattr(hint, "__metadata__", ()) if isinstance(extra, Option)]
    if len(found) != 1:
        raise TypeError(f"option {name!r} is annotated {get_args(hint)!r}, not with one Option")
    return found[0]


# Checks of values given in Python: each raises with the option's name.


def check_count(name: str, value: object) -> None:
    """A whole number, 1 or more (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be positive, not {value!r}")


def check_count_or_none(name: str, value: object) -> None:
    """A whole number, 1 or more, or None for no limit."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be positive or None, not {value!r}")


def check_room_name(name: str, value: object) -> None:
    """A room name, as a path's last segment decodes to (see docs/api.md#room-names)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a room name (a str), not {value!r}")
    problem = room_name_problem(value)
    if problem is not None:
        raise ValueError(f"{name} must be a room name, not {value!r}: {problem}")


def check_callable_or_none(name: str, value: object) -> None:
    """A function (or another callable), or None."""
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be a callable or None, not {value!r}")


def check_ssl_context(name: str, value: object) -> None:
    """A server-side ``ssl.SSLContext``, or None."""
    if value is not None and not isinstance(value, ssl.SSLContext):
        raise TypeError(f"{name} must be an ssl.SSLContext or None, not {value!r}")


def check_seconds(name: str, value: Any) -> None:
    """Seconds, 0 or more (infinity is no bound)."""
    if not value >= 0:
        raise ValueError(f"{name} must be 0 or more seconds, not {value!r}")


def check_positive_seconds(name: str, value: object) -> None:
    """Seconds, finite and more than 0."""
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive seconds, not {value!r}")


def check_advertised_address(name: str, value: object) -> None:
    """``HOST:PORT`` (an IPv6 host in brackets), or None."""
    if value is not None:
        if not isinstance(value, str):
            raise TypeError(f"{name} must be HOST:PORT (a str) or None, not {value!r}")
        advertised_address(value)


def check_secret(name: str, value: object) -> None:
    """A non-empty str, or None."""
    if value is not None and not (isinstance(value, str) and value):
        raise ValueError(f"{name} must be a non-empty str or None, not {value!r}")


# Parsers of a flag's or a variable's text: each raises ValueError saying what it expected.


def advertised_address(text: str) -> str:
    """``HOST:PORT`` that other machines can connect to, an IPv6 host in brackets."""
    if text.startswith("["):
        host, bracket, number = text[1:].partition("]:")
    else:
        host, bracket, number = text.rpartition(":")
        bracket = "" if ":" in host else bracket
    valid = bool(bracket and host) and host not in ("0.0.0.0", "::")
    if not valid or not number.isdecimal() or not 0 < int(number) <= 65535:
        raise ValueError(f"expected HOST:PORT (IPv6 in brackets: [::1]:8080), not {text!r}")
    return text


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def boolean(text: str) -> bool:
    """``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``, in any case."""
    word = text.strip().lower()
    if word in _TRUE | _FALSE:
        return word in _TRUE
    raise ValueError(f"expected 1, true, yes, on, 0, false, no or off, not {text!r}")


def port(text: str) -> int:
    """A TCP port, 0 to 65535 (0 picks a free one)."""
    try:
        number = int(text)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise ValueError(f"expected a port number (0-65535), not {text!r}")
    return number


def positive_int(text: str) -> int:
    """A whole number, 1 or more."""
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"expected a whole number, 1 or more, not {text!r}")
    return number


def worker_count(text: str) -> int:
    """A number of worker processes, 1 or more, or ``auto``: one per CPU this process
    may run on (its affinity: ``taskset``, a container's cpuset), not the machine's."""
    if text.strip().lower() == "auto":
        return usable_cpus()
    try:
        return positive_int(text)
    except ValueError:
        raise ValueError(
            f"expected a number of workers, 1 or more, or auto, not {text!r}"
        ) from None


def usable_cpus() -> int:
    """How many CPUs this process may run on (``os.process_cpu_count`` of Python 3.13)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def room_name(text: str) -> str:
    """A room name (not percent-encoded: ``general talk``)."""
    problem = room_name_problem(text)
    if problem is not None:
        raise ValueError(f"expected a room name, not {text!r}: {problem}")
    return text


def seconds(text: str) -> float:
    """A duration in seconds, 0 or more."""
    return _seconds(text, minimum_excluded=False)


def positive_seconds(text: str) -> float:
    """A duration in seconds, more than 0."""
    return _seconds(text, minimum_excluded=True)


def _seconds(text: str, *, minimum_excluded: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (minimum_excluded and value == 0):
        bound = "more than 0" if minimum_excluded else "0 or more"
        raise ValueError(f"expected a number of seconds, {bound}, not {text!r}")
    return value


def origins(text: str) -> tuple[str, ...]:
    """Comma-separated origins, each ``scheme://host`` or ``scheme://host:port``."""
    found = tuple(part.strip() for part in text.split(","))
    for origin in found:
        scheme, sep, host = origin.partition("://")
        if not (scheme and sep and host) or "/" in host.rstrip("/"):
            raise ValueError(
                f"expected comma-separated origins such as https://example.com, not {text!r}"
            )
    return found


def rate_limit(text: str) -> RateLimit | None:
    """``PER_SECOND,BURST`` (``100,200``) for a token bucket, or ``off`` for none."""
    if text.strip().lower() in ("off", "none"):
        return None
    per_second, _, burst = text.partition(",")
    try:
        return RateLimit(per_second=float(per_second), burst=int(burst))
    except ValueError:
        pass
    raise ValueError(f"expected PER_SECOND,BURST (such as 100,200) or off, not {text!r}")


# Options that serve and proxy share.

HOST: Final = Option(default="127.0.0.1", group="listening", help="address to listen on")
PORT: Final = Option(default=8080, group="listening", parse=port, help="port; 0 picks a free one")
SSL_CONTEXT: Final = Option(
    default=None,
    group="TLS",
    parse=None,
    check=check_ssl_context,
    help="made of --certfile and --keyfile",
)
HANDSHAKE: Final = Option(
    default=HANDSHAKE_TIMEOUT,
    group="connections",
    parse=positive_seconds,
    check=check_positive_seconds,
    metavar="SECONDS",
    help=(
        "time a client has to finish TLS (with --certfile) and send its request head; "
        "a slower one is dropped"
    ),
)
