"""Typed messages: attrs classes encoded as JSON tagged unions by one cattrs converter.

A message class ``UserJoined`` travels as ``{"type": "user_joined", ...its fields}``.
:class:`Protocol` names the classes a client may send (``client``) and the ones the
server sends (``server``); each side is a :class:`MessageSet` that encodes and decodes
its classes. Decoding is strict (a JSON number is never a string, a float is never
truncated to an int) and every failure is a :class:`~roomkit.DecodeError` whose text
says what was wrong, ready to send back to the peer. Pure: no I/O.
"""

from __future__ import annotations

import json
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Final

import attrs
import cattrs
import cattrs.gen
from cattrs.errors import ClassValidationError

from ._errors import DecodeError

__all__ = ["MessageSet", "Protocol", "converter", "error_message", "type_tag"]

#: The field that carries a message's type; no message class may define it.
TYPE_FIELD: Final = "type"


def _with_field(line: str) -> str:
    """``"is missing @ $.user.name"`` → ``"field 'user.name' is missing"``."""
    problem, _, path = line.rpartition(" @ $")
    return f"field {path.lstrip('.')!r} {problem}"


_JSON_NAMES: Final[Mapping[type, str]] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
    list: "an array",
    tuple: "an array",
    dict: "an object",
}


def _json_type_name(tp: Any) -> str:
    return _JSON_NAMES.get(tp, getattr(tp, "__name__", repr(tp)))


def _strict_scalar(*accepted: type) -> Any:
    """A structure hook that accepts only values already of an ``accepted`` JSON type."""
    names = _json_type_name(accepted[-1])

    def structure(value: Any, _: Any) -> Any:
        # bool is an int subclass in Python but never a number in JSON.
        if isinstance(value, bool) is (bool not in accepted) or not isinstance(value, accepted):
            raise TypeError(f"must be {names}, not {_json_type_name(type(value))}")
        return value

    return structure


def _strict_array_factory(tp: Any, conv: cattrs.Converter) -> Any:
    """Structure hooks for lists and homogeneous tuples that refuse a string or an object.

    cattrs would otherwise iterate any iterable, turning ``"ab"`` into ``["a", "b"]``.
    """
    if typing.get_origin(tp) is tuple:
        base = cattrs.cols.homogenous_tuple_structure_factory(tp, conv)
    else:
        base = cattrs.cols.list_structure_factory(tp, conv)
    return _only(list, "an array", base)


def _strict_attrs_factory(cls: Any, conv: cattrs.Converter) -> Any:
    """Structure hooks for attrs classes that say so when given something not an object."""
    return _only(dict, "an object", cattrs.gen.make_dict_structure_fn(cls, conv))


def _only(json_type: type, described: str, base: Any) -> Any:
    """``base``, a structure hook, for values of ``json_type`` only; a TypeError else."""

    def structure(value: Any, t: Any) -> Any:
        if not isinstance(value, json_type):
            raise TypeError(f"must be {described}, not {_json_type_name(type(value))}")
        return base(value, t)

    return structure


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(detailed_validation=True)
    conv.register_structure_hook(str, _strict_scalar(str))
    conv.register_structure_hook(bool, _strict_scalar(bool))
    conv.register_structure_hook(int, _strict_scalar(int))
    float_hook = _strict_scalar(int, float)  # JSON does not tell 1 from 1.0
    conv.register_structure_hook(float, lambda v, t: float(float_hook(v, t)))
    conv.register_structure_hook_factory(cattrs.cols.is_sequence, _strict_array_factory)
    conv.register_structure_hook_factory(attrs.has, _strict_attrs_factory)
    return conv


#: The one converter, for messages and for attrs values in storage; strict on input.
converter: Final = _make_converter()


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

    Raises:
      TypeError: if a member is not an attrs class, or has a ``type`` field.
      ValueError: if two classes have the same wire name.
    """

    def __init__(self, classes: Any) -> None:
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
        body = converter.unstructure(message)
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
            raise DecodeError(f"a message must be a JSON object, not {_json_type_name(type(body))}")
        if TYPE_FIELD not in body:
            raise DecodeError(
                f"the message has no {TYPE_FIELD!r} field; expected one of: {self._expected()}"
            )
        tag = body.pop(TYPE_FIELD)
        if not isinstance(tag, str):
            raise DecodeError(
                f"the {TYPE_FIELD!r} field must be a string, not {_json_type_name(type(tag))}"
            )
        cls = self._by_tag.get(tag)
        if cls is None:
            raise DecodeError(f"unknown message type {tag!r}; expected one of: {self._expected()}")
        try:
            return converter.structure(body, cls)
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
    Each argument is one attrs class or a union of them.
    """

    client: MessageSet
    server: MessageSet

    def __init__(self, client: Any, server: Any) -> None:
        self.__attrs_init__(MessageSet(client), MessageSet(server))


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
        return f"must be {_json_type_name(typing.get_origin(type_) or type_)}"
    return f"invalid value ({exc})"
