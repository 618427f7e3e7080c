"""Command-line options that fall back on environment variables, then on defaults.

Each option is declared once, with its flag, its type and its default; its variable is
named after the flag: ``--drain-timeout`` reads ``ROOMKIT_DRAIN_TIMEOUT``. A flag wins
over its variable, and the variable over the default; a variable set to the empty
string (or to spaces) counts as unset. A bad value is a :class:`UsageError` naming the flag or the
variable it came from. The environment is passed in, so parsing is testable as it is.

The parsers below take the text of a flag or variable and raise ValueError with a
message that says what was expected.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from ._core.ratelimit import RateLimit

__all__ = [
    "EnvOptions",
    "UsageError",
    "boolean",
    "origins",
    "port",
    "positive_int",
    "positive_seconds",
    "rate_limit",
    "seconds",
]


class UsageError(Exception):
    """Raised when the command line or the environment asks for what cannot be done."""


@attrs.frozen
class _Option:
    dest: str
    env: str
    parse: Callable[[str], Any]
    default: Any


class EnvOptions:
    """The options of one command: each a flag, an environment variable and a default.

    Options are shown in ``--help`` by group, each with its default and its variable.
    """

    def __init__(self, parser: argparse.ArgumentParser, *, prefix: str = "ROOMKIT_") -> None:
        self.parser = parser
        self._prefix = prefix
        self._groups: dict[str, argparse._ArgumentGroup] = {}
        self._options: list[_Option] = []

    def add(
        self,
        flag: str,
        *,
        group: str,
        help: str,
        default: Any,
        parse: Callable[[str], Any] = str,
        metavar: str | None = None,
        shown: str | None = None,
    ) -> None:
        """Declare ``--flag``, read from ``PREFIX_FLAG`` when it is not given.

        Args:
          flag: ``--some-name``; the value lands in ``args.some_name``.
          group: the ``--help`` section it is listed in.
          help: what it does; the default and the variable are appended.
          default: the value when neither the flag nor the variable is given. A bool
            makes a switch, ``--flag``/``--no-flag``, whose variable reads as a boolean.
          parse: turns a flag's or a variable's text into the value (ValueError if bad).
          metavar: the value's name in ``--help``.
          shown: the default as ``--help`` shows it, when its value says too little.
        """
        dest = flag.removeprefix("--").replace("-", "_")
        env = self._prefix + dest.upper()
        described = shown if shown is not None else _show(default)
        text = f"{help} [default: {described}; env: {env}]".replace("%", "%%")
        section = self._groups.get(group)
        if section is None:
            section = self._groups[group] = self.parser.add_argument_group(group)
        if isinstance(default, bool):
            parse = boolean
            section.add_argument(
                flag,
                dest=dest,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=text,
            )
        else:
            section.add_argument(
                flag,
                dest=dest,
                type=_argparse_type(parse),
                default=argparse.SUPPRESS,
                metavar=metavar,
                help=text,
            )
        self._options.append(_Option(dest, env, parse, default))

    def resolve(self, args: argparse.Namespace, environ: Mapping[str, str]) -> None:
        """Set every option the command line left out: from its variable, or its default.

        Raises:
          UsageError: naming the variable, if its value does not parse.
        """
        for option in self._options:
            if hasattr(args, option.dest):
                continue  # given as a flag
            text = environ.get(option.env, "").strip()
            value = option.default
            if text:
                try:
                    value = option.parse(text)
                except ValueError as exc:
                    raise UsageError(f"environment variable {option.env}: {exc}") from None
            setattr(args, option.dest, value)


def _show(default: Any) -> str:
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, float):
        return f"{default:g}"
    return str(default)


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` with its ValueError's message shown by argparse as it is."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


# Parsers.

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
