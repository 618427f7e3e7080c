"""roomkit's base cattrs converter: strict on input, and made anew for each user.

Every :class:`~roomkit.Protocol` gets a converter of its own made here (or copied from
one it is given), and so does storage. A hook registered on one protocol's converter
then changes that protocol's messages only: neither another room's nor what storage
writes, which must not depend on which rooms happen to be imported.

Strict means that no value is converted from one JSON type to another, but for an
integer where a float is expected: a number is never a string, ``true`` never an int,
a string never a list of characters. Unstructuring is cattrs' own, untouched.

:func:`name_fields` gives a protocol's converter its field names on the wire: hooks for
every attrs class that read and write each field under the name the protocol gives it,
and name that field so in decode errors. Pure: no I/O.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs
import cattrs
import cattrs.gen
from cattrs.errors import AttributeValidationNote, ClassValidationError

__all__ = ["json_type_name", "make_converter", "name_fields"]

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


def json_type_name(tp: Any) -> str:
    """What JSON calls the Python type ``tp``: ``int`` → ``"an integer"``."""
    return _JSON_NAMES.get(tp, getattr(tp, "__name__", repr(tp)))


def make_converter() -> cattrs.Converter:
    """A new converter, strict on input, that nothing else shares."""
    conv = cattrs.Converter(detailed_validation=True)
    conv.register_structure_hook(str, _strict_scalar(str))
    conv.register_structure_hook(bool, _strict_scalar(bool))
    conv.register_structure_hook(int, _strict_scalar(int))
    float_hook = _strict_scalar(int, float)  # JSON does not tell 1 from 1.0
    conv.register_structure_hook(float, lambda v, t: float(float_hook(v, t)))
    conv.register_structure_hook_factory(cattrs.cols.is_sequence, _strict_array_factory)
    conv.register_structure_hook_factory(attrs.has, _strict_attrs_factory)
    return conv


def _strict_scalar(*accepted: type) -> Any:
    """A structure hook that accepts only values already of an ``accepted`` JSON type."""
    names = json_type_name(accepted[-1])

    def structure(value: Any, _: Any) -> Any:
        # bool is an int subclass in Python but never a number in JSON.
        if isinstance(value, bool) is (bool not in accepted) or not isinstance(value, accepted):
            raise TypeError(f"must be {names}, not {json_type_name(type(value))}")
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


def name_fields(conv: cattrs.Converter, wire_names: Callable[[type], Mapping[str, str]]) -> None:
    """Make ``conv`` read and write every attrs class's fields under their wire names.

    ``wire_names(cls)`` maps the Python names of ``cls``'s fields to their names on the
    wire, for those that differ. The hooks replace, for attrs classes, every hook factory
    registered on ``conv`` before (another protocol's naming, copied with its converter,
    included); a hook registered for a class itself still takes precedence, and so does a
    factory registered later. Decoding stays strict, and a decode error names a field by
    its wire name.
    """

    def structure_fn(cls: Any, conv: cattrs.Converter) -> Any:
        names = wire_names(cls)
        base = cattrs.gen.make_dict_structure_fn(cls, conv, **_renames(names))
        return _only(dict, "an object", _wire_errors(base, names) if names else base)

    def unstructure_fn(cls: Any, conv: cattrs.Converter) -> Any:
        return cattrs.gen.make_dict_unstructure_fn(
            cls, conv, _cattrs_omit_if_default=conv.omit_if_default, **_renames(wire_names(cls))
        )

    conv.register_structure_hook_factory(attrs.has, structure_fn)
    conv.register_unstructure_hook_factory(attrs.has, unstructure_fn)


def _renames(names: Mapping[str, str]) -> dict[str, Any]:
    return {name: cattrs.gen.override(rename=wire) for name, wire in names.items()}


def _wire_errors(base: Any, names: Mapping[str, str]) -> Any:
    """``base``, a structure hook, with the fields its errors name renamed by ``names``."""

    def structure(value: Any, t: Any) -> Any:
        try:
            return base(value, t)
        except ClassValidationError as exc:
            for error in exc.exceptions:
                notes = getattr(error, "__notes__", [])
                error.__notes__ = [_renamed(note, names) for note in notes]
            raise

    return structure


def _renamed(note: Any, names: Mapping[str, str]) -> Any:
    if isinstance(note, AttributeValidationNote) and note.name in names:
        return AttributeValidationNote(note, names[note.name], note.type)
    return note


def _only(json_type: type, described: str, base: Any) -> Any:
    """``base``, a structure hook, for values of ``json_type`` only; a TypeError else."""

    def structure(value: Any, t: Any) -> Any:
        if not isinstance(value, json_type):
            raise TypeError(f"must be {described}, not {json_type_name(type(value))}")
        return base(value, t)

    return structure
