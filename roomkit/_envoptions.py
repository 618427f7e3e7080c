"""Command-line options that fall back on environment variables, then on defaults.

Each option is an :class:`~roomkit._options.Option`, declared once with its function's
other options; its flag is named after it (``drain_timeout``: ``--drain-timeout``) and
its variable after the flag (``ROOMKIT_DRAIN_TIMEOUT``). A flag wins over its variable,
and the variable over the default; a variable set to the empty string (or to spaces)
counts as unset. A bad value is a :class:`UsageError` naming the flag or the variable it
came from. The environment is passed in, so parsing is testable as it is.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from ._options import Option, boolean

__all__ = ["EnvOptions", "UsageError", "flag_of"]


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

    def variable(self, name: str) -> str:
        """The environment variable of option ``name``: ``ROOMKIT_DRAIN_TIMEOUT``."""
        return self._prefix + name.upper()

    def add_all(self, options: Mapping[str, Option]) -> None:
        """Declare every option of ``options`` that the command line sets."""
        for name, option in options.items():
            if option.on_command_line:
                self.add(name, option)

    def add(self, name: str, option: Option) -> None:
        """Declare ``--name`` (dashes for underscores), read from ``PREFIX_NAME`` when it
        is not given; its value lands in ``args.name``."""
        flag, env, default = flag_of(name), self.variable(name), option.default_of_command
        described = option.shown if option.shown is not None else _show(default)
        text = f"{option.help} [default: {described}; env: {env}]".replace("%", "%%")
        section = self._groups.get(option.group)
        if section is None:
            section = self._groups[option.group] = self.parser.add_argument_group(option.group)
        parse = option.parse or str
        if isinstance(default, bool):
            parse = boolean
            section.add_argument(
                flag,
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=text,
            )
        else:
            section.add_argument(
                flag,
                dest=name,
                type=_argparse_type(parse),
                default=argparse.SUPPRESS,
                metavar=option.metavar,
                help=text,
            )
        self._options.append(_Option(name, env, parse, default))

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


def flag_of(name: str) -> str:
    """The flag of option ``name``: ``--drain-timeout`` for ``drain_timeout``."""
    return "--" + name.replace("_", "-")


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
