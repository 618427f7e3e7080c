"""Typed messages: attrs classes encoded as JSON tagged unions by their protocol's converter.

A message class ``UserJoined`` travels as ``{"type": "user_joined", ...its fields}``.
:class:`Protocol` names the classes a client may send (``client``) and the ones the
server sends (``server``); each side is a :class:`MessageSet` that encodes and decodes
its classes with the protocol's own cattrs converter, so that hooks registered for one
protocol change no other. Decoding is strict (a JSON number is never a string, a float
is never truncated to an int) and every failure is a :class:`~roomkit.DecodeError`
whose text says what was wrong, ready to send back to the peer. Pure: no I/O.
"""

from __future__ import annotations

import json
import re
import types
import typing
from typing import Any, Final

import attrs
import cattrs
from cattrs.errors import ClassValidationError

from ._converter import json_type_name, make_converter
from ._errors import DecodeError

__all__ = ["MessageSet", "Protocol", "error_message", "type_tag"]

#: The field that carries a message's type; no message class may define it.
TYPE_FIELD: Final = "type"


def _with_field(line: str) -> str:
    """``"is missing @ $.user.name"`` → ``"field 'user.name' is missing"``."""
    problem, _, path = line.rpartition(" @ $")
    return f"field {path.lstrip('.')!r} {problem}"


def type_tag(cls: type) -> str:
    """The wire name of a message class: ``UserJoined`` → ``"user_joined"``."""
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", cls.__name__)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def error_message(message: str, *, code: str | None = None) -> str:
    """The JSON text of the ``{"type": "error"}`` reply roomkit sends to a bad peer."""
    body: dict[str, str] = {TYPE_FIELD: "error"}
    if code is not None:
        body["code"] = code
    body["message"] = message
    return json.dumps(body, ensure_ascii=False)


class MessageSet:
    """The message classes one side of a :class:`Protocol` may send.

    Args:
      classes: one attrs class, or a union of them (``Chat | Typing`` or
        ``typing.Union[Chat, Typing]``).
      converter: the cattrs converter that encodes and decodes them: the protocol's.

    Raises:
      TypeError: if a member is not an attrs class, or has a ``type`` field.
      ValueError: if two classes have the same wire name.
    """

    def __init__(self, classes: Any, converter: cattrs.Converter) -> None:
        members = _union_members(classes)
        by_tag: dict[str, type] = {}
        for cls in members:
            if not attrs.has(cls):
                raise TypeError(f"{cls!r} is not an attrs class")
            if TYPE_FIELD in attrs.fields_dict(cls):
                raise TypeError(f"{cls.__name__} has a field named {TYPE_FIELD!r}: that is the tag")
            tag = type_tag(cls)
            if tag in by_tag:
                raise ValueError(f"{by_tag[tag].__name__} and {cls.__name__} share the tag {tag!r}")
            by_tag[tag] = cls
        self._by_tag: Final = by_tag
        self._tags: Final = {cls: tag for tag, cls in by_tag.items()}
        self._converter: Final = converter

    @property
    def classes(self) -> tuple[type, ...]:
        return tuple(self._by_tag.values())

    def encode(self, message: object) -> str:
        """Return the JSON text of ``message``.

        Raises:
          TypeError: if ``message`` is not an instance of one of this set's classes.
        """
        tag = self._tags.get(type(message))
        if tag is None:
            expected = ", ".join(cls.__name__ for cls in self.classes)
            raise TypeError(
                f"{type(message).__name__} is not one of this protocol's messages ({expected})"
            )
        body = self._converter.unstructure(message)
        return json.dumps({TYPE_FIELD: tag, **body}, ensure_ascii=False)

    def decode(self, data: str | bytes) -> Any:
        """Return the message that the JSON text ``data`` encodes.

        Raises:
          DecodeError: naming what is wrong: malformed JSON, a missing or unknown type,
            a missing or mistyped field.
        """
        try:
            body = json.loads(data)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise DecodeError(f"malformed JSON: {exc}") from None
        if not isinstance(body, dict):
            raise DecodeError(f"a message must be a JSON object, not {json_type_name(type(body))}")
        if TYPE_FIELD not in body:
            raise DecodeError(
                f"the message has no {TYPE_FIELD!r} field; expected one of: {self._expected()}"
            )
        tag = body.pop(TYPE_FIELD)
        if not isinstance(tag, str):
            raise DecodeError(
                f"the {TYPE_FIELD!r} field must be a string, not {json_type_name(type(tag))}"
            )
        cls = self._by_tag.get(tag)
        if cls is None:
            raise DecodeError(f"unknown message type {tag!r}; expected one of: {self._expected()}")
        try:
            return self._converter.structure(body, cls)
        except ClassValidationError as exc:
            lines = cattrs.transform_error(exc, format_exception=_describe)
            problems = "; ".join(_with_field(line) for line in lines)
            raise DecodeError(f"invalid {tag!r} message: {problems}") from None

    def _expected(self) -> str:
        return ", ".join(self._by_tag)


@attrs.frozen(init=False)
class Protocol:
    """The typed messages of a room: what clients send and what the server sends.

    Set it as a Room's ``protocol`` class attribute; ``on_message`` then receives decoded
    instances of ``client`` classes, and ``send``/``broadcast`` accept ``server`` ones.

    Args:
      client, server: each one attrs class or a union of them.
      converter: a cattrs converter to start from, hooks and all; the protocol uses a
        copy of it. By default, a new one of roomkit's strict converters.

    Attributes:
      converter: the protocol's own converter, which encodes and decodes both sides'
        messages and nothing else: register hooks on it to change them, before the
        room serves. No other protocol, and not storage, shares it.

    Raises:
      TypeError: if ``converter`` is not a ``cattrs.Converter``; as :class:`MessageSet`.
      ValueError: as :class:`MessageSet`.
    """

    client: MessageSet
    server: MessageSet
    converter: cattrs.Converter

    def __init__(
        self, client: Any, server: Any, *, converter: cattrs.Converter | None = None
    ) -> None:
        own = _own_converter(converter)
        self.__attrs_init__(MessageSet(client, own), MessageSet(server, own), own)


def _own_converter(given: cattrs.Converter | None) -> cattrs.Converter:
    """A converter for one protocol alone: a copy of ``given``, or a new strict one."""
    if given is None:
        return make_converter()
    if not isinstance(given, cattrs.Converter):
        raise TypeError(f"converter must be a cattrs.Converter, not {type(given).__name__}")
    return given.copy()


def _union_members(classes: Any) -> tuple[type, ...]:
    if typing.get_origin(classes) in (typing.Union, types.UnionType):
        return typing.get_args(classes)
    if isinstance(classes, type):
        return (classes,)
    raise TypeError(f"expected an attrs class or a union of them, not {classes!r}")


def _describe(exc: BaseException, type_: type | None) -> str:
    """Turn one cattrs leaf exception into words; paths are added by transform_error."""
    if isinstance(exc, KeyError):
        return "is missing"
    if isinstance(exc, TypeError) and str(exc).startswith("must be "):
        return str(exc)
    if isinstance(exc, AttributeError | TypeError) and type_ is not None:
        return f"must be {json_type_name(typing.get_origin(type_) or type_)}"
    return f"invalid value ({exc})"
