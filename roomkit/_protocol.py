"""Typed messages: attrs classes encoded as JSON tagged unions by their protocol's converter.

A message class ``UserJoined`` travels as ``{"type": "user_joined", ...its fields}``, or
under the wire name a mapping gives it (``{"joined": UserJoined}``). A field travels
under its Python name, but for a keyword's trailing underscore (``from_`` as ``from``),
the protocol's ``field_names`` (``"camelCase"``: ``user_id`` as ``userId``), or the name
that :func:`wire_name` sets in its metadata, first of all. :class:`Protocol` names the
classes a client may send (``client``) and the ones the server sends (``server``); each
side is a :class:`MessageSet` that encodes and decodes its classes with the protocol's
own cattrs converter, so that hooks and names of one protocol change no other. Decoding
is strict (a JSON number is never a string, a float is never truncated to an int) and
every failure is a :class:`~roomkit.DecodeError` whose text says what was wrong, by the
names the peer sent, ready to send back to it. Pure: no I/O.
"""

from __future__ import annotations

import json
import keyword
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, TypeAlias

import attrs
import cattrs
from cattrs.errors import ClassValidationError

from ._converter import json_type_name, make_converter, name_fields
from ._errors import DecodeError

__all__ = ["MessageSet", "Protocol", "WireNames", "error_message", "type_tag", "wire_name"]

#: The field that carries a message's type; no message class's field may travel as it.
TYPE_FIELD: Final = "type"
#: Messages are written as JavaScript's JSON.stringify writes them: no spaces, and
#: non-ASCII characters as they are. One encoder for all (json.dumps with options makes
#: a new one per call).
_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

#: The attrs metadata key under which :func:`wire_name` keeps a field's wire name.
WIRE_NAME_KEY: Final = "roomkit.wire_name"

#: A protocol's naming of fields: a name roomkit knows, or a function of the Python name.
FieldNames: TypeAlias = Literal["camelCase"] | Callable[[str], str] | None


def wire_name(name: str) -> dict[str, str]:
    """attrs field metadata that names the field on the wire, in every protocol.

    ``sender: str = attrs.field(metadata=roomkit.wire_name("from"))`` travels as
    ``"from"``; merge it with metadata of your own as ``{**roomkit.wire_name(...), ...}``.

    Raises:
      TypeError, ValueError: as for a message type's wire name (:func:`check_wire_name`).
    """
    return {WIRE_NAME_KEY: check_wire_name(name, "a field's wire name")}


def check_wire_name(name: object, what: str) -> str:
    """``name``, if it can name a message type or a field on the wire.

    Raises:
      TypeError: if ``name`` is not a ``str``.
      ValueError: if it is empty, has a space at either end, or an unprintable character.
    """
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, not {type(name).__name__}")
    if not name or name != name.strip() or not name.isprintable():
        raise ValueError(
            f"{what} must be a non-empty string of printable characters, with no space at "
            f"either end, not {name!r}"
        )
    return name


def camel_case(name: str) -> str:
    """``user_id`` → ``userId``: an underscore between words goes, the next letter is upper."""
    return re.sub(r"(?<=[A-Za-z0-9])_([a-z])", lambda match: match[1].upper(), name)


_NAMINGS: Final[Mapping[str, Callable[[str], str]]] = {"camelCase": camel_case}


class WireNames:
    """The wire names of attrs classes' fields under one protocol's ``field_names``.

    A field's wire name is its :func:`wire_name` metadata if it has some; else its
    Python name without the trailing underscore of a keyword (``from_`` → ``from``),
    passed through the naming function if there is one.

    Raises:
      TypeError: if ``field_names`` is neither ``None``, a name roomkit knows, nor callable.
      ValueError: if it is a string roomkit does not know.
    """

    def __init__(self, field_names: FieldNames) -> None:
        if isinstance(field_names, str):
            if field_names not in _NAMINGS:
                known = ", ".join(map(repr, _NAMINGS))
                raise ValueError(
                    f"field_names must be one of {known} or a function, not {field_names!r}"
                )
            field_names = _NAMINGS[field_names]
        elif field_names is not None and not callable(field_names):
            raise TypeError(
                f"field_names must be a str or a function, not {type(field_names).__name__}"
            )
        self._naming: Final = field_names

    def __call__(self, cls: Any) -> dict[str, str]:
        """The wire names of ``cls``'s fields, by Python name, for those that differ.

        Raises:
          TypeError, ValueError: if the naming function gives a name that cannot be one.
          ValueError: if two fields of ``cls`` have the same wire name.
        """
        owner: type = typing.get_origin(cls) or cls
        seen: dict[str, str] = {}  # wire name -> Python name
        for field in attrs.fields(owner):
            wire = self._wire_name(owner, field)
            if wire in seen:
                raise ValueError(
                    f"{owner.__name__}.{seen[wire]} and {owner.__name__}.{field.name} share "
                    f"the wire name {wire!r}"
                )
            seen[wire] = field.name
        return {name: wire for wire, name in seen.items() if wire != name}

    def _wire_name(self, owner: type, field: attrs.Attribute[Any]) -> str:
        given = field.metadata.get(WIRE_NAME_KEY)
        if given is not None:
            return str(given)
        name = field.name
        if name.endswith("_") and keyword.iskeyword(name[:-1]):
            name = name[:-1]
        if self._naming is None:
            return name
        return check_wire_name(self._naming(name), f"field_names({name!r}) for {owner.__name__}")


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
    return _ENCODER.encode(body)


class MessageSet:
    """The message classes one side of a :class:`Protocol` may send.

    Args:
      classes: one attrs class, or a union of them (``Chat | Typing`` or
        ``typing.Union[Chat, Typing]``), each named on the wire by :func:`type_tag`; or a
        mapping from wire name to class (``{"chat": SendChat, "typing": Typing}``).
      converter: the cattrs converter that encodes and decodes them: the protocol's.
      wire_names: the protocol's naming of fields, to check that none travels as ``type``.

    Raises:
      TypeError: if a member is not an attrs class, or has a field whose wire name is
        ``type``; if a wire name in a mapping is not a ``str``.
      ValueError: if two classes have the same wire name, a mapping lists a class twice or
        nothing, or a wire name is empty or not printable (:func:`check_wire_name`).
    """

    def __init__(self, classes: Any, converter: cattrs.Converter, wire_names: WireNames) -> None:
        by_tag = _by_tag(classes)
        for cls in by_tag.values():
            if not attrs.has(cls):
                raise TypeError(f"{cls!r} is not an attrs class")
            renamed = wire_names(cls)
            for field in attrs.fields(cls):
                if renamed.get(field.name, field.name) == TYPE_FIELD:
                    what = f"a field named {TYPE_FIELD!r}"
                    if field.name != TYPE_FIELD:
                        what = f"a field {field.name!r} that travels as {TYPE_FIELD!r}"
                    raise TypeError(f"{cls.__name__} has {what}: that is the tag")
        self._by_tag: Final = by_tag
        self._tags: Final = {cls: tag for tag, cls in by_tag.items()}
        #: Each class's JSON text up to its first field, ``{"type":"chat"``: made once here.
        self._heads: Final = {
            cls: f"{{{_ENCODER.encode(TYPE_FIELD)}:{_ENCODER.encode(tag)}"
            for cls, tag in self._tags.items()
        }
        self._converter: Final = converter

    @property
    def classes(self) -> tuple[type, ...]:
        return tuple(self._by_tag.values())

    def encode(self, message: object) -> str:
        """Return the JSON text of ``message``.

        Raises:
          TypeError: if ``message`` is not an instance of one of this set's classes.
        """
        head = self._heads.get(type(message))
        if head is None:
            expected = ", ".join(cls.__name__ for cls in self.classes)
            raise TypeError(
                f"{type(message).__name__} is not one of this protocol's messages ({expected})"
            )
        body = self._converter.unstructure(message)
        if not isinstance(body, dict) or TYPE_FIELD in body:  # a hook of the user's made it
            return _ENCODER.encode({TYPE_FIELD: self._tags[type(message)], **body})
        if not body:
            return head + "}"
        return f"{head},{_ENCODER.encode(body)[1:]}"

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
      client, server: each one attrs class or a union of them, or a mapping from wire
        name to class (:class:`MessageSet`).
      converter: a cattrs converter to start from, hooks and all; the protocol uses a
        copy of it. By default, a new one of roomkit's strict converters.
      field_names: how fields are named on the wire, in this protocol, for the fields
        that :func:`wire_name` does not name: ``None`` for their Python names (a
        keyword's trailing underscore dropped), ``"camelCase"`` (``user_id`` as
        ``userId``), or a function from such a name to the wire name. It applies to
        every attrs class the protocol encodes, nested ones too.

    Attributes:
      converter: the protocol's own converter, which encodes and decodes both sides'
        messages and nothing else: register hooks on it to change them, before the
        room serves. No other protocol, and not storage, shares it.

    Raises:
      TypeError: if ``converter`` is not a ``cattrs.Converter``; as :class:`MessageSet`
        and :class:`WireNames`.
      ValueError: as :class:`MessageSet` and :class:`WireNames`, also for the attrs
        classes nested in the messages.
    """

    client: MessageSet
    server: MessageSet
    converter: cattrs.Converter

    def __init__(
        self,
        client: Any,
        server: Any,
        *,
        converter: cattrs.Converter | None = None,
        field_names: FieldNames = None,
    ) -> None:
        own = _own_converter(converter)
        names = WireNames(field_names)
        name_fields(own, names)
        sides = MessageSet(client, own, names), MessageSet(server, own, names)
        for cls in sides[0].classes + sides[1].classes:
            own.get_structure_hook(cls)  # made now: a nested class's bad names raise here
            own.get_unstructure_hook(cls)
        self.__attrs_init__(*sides, own)


def _own_converter(given: cattrs.Converter | None) -> cattrs.Converter:
    """A converter for one protocol alone: a copy of ``given``, or a new strict one."""
    if given is None:
        return make_converter()
    if not isinstance(given, cattrs.Converter):
        raise TypeError(f"converter must be a cattrs.Converter, not {type(given).__name__}")
    return given.copy()


def _by_tag(classes: Any) -> dict[str, type]:
    """The classes of ``classes`` (a class, a union or a mapping) by wire name."""
    if isinstance(classes, Mapping):
        return _from_mapping(classes)
    by_tag: dict[str, type] = {}
    for cls in _union_members(classes):
        tag = type_tag(cls)
        if tag in by_tag:
            raise ValueError(f"{by_tag[tag].__name__} and {cls.__name__} share the tag {tag!r}")
        by_tag[tag] = cls
    return by_tag


def _from_mapping(classes: Mapping[Any, Any]) -> dict[str, type]:
    if not classes:
        raise ValueError("a mapping of message classes must name at least one")
    tags: dict[type, str] = {}
    for tag, cls in classes.items():
        check_wire_name(tag, "a message type's wire name")
        if not isinstance(cls, type):
            raise TypeError(f"{tag!r} must name an attrs class, not {cls!r}")
        if cls in tags:
            raise ValueError(f"{cls.__name__} is listed twice, as {tags[cls]!r} and {tag!r}")
        tags[cls] = tag
    return {tag: cls for cls, tag in tags.items()}


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
