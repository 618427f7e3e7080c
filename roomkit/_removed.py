"""Public names roomkit no longer has, each with what to use instead.

``roomkit/__init__.py`` makes this its module ``__getattr__`` (PEP 562), so that code
written for an older roomkit fails on ``roomkit.<name>`` with an AttributeError that
says what replaced it, not only that the name is missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, NoReturn

__all__ = ["removed_name"]

#: Each removed name, and the sentence that says what to use instead.
REMOVED: Final[Mapping[str, str]] = {
    "converter": (
        "roomkit.converter was removed: each Protocol has a converter of its own. Register "
        "hooks on your protocol's (protocol.converter), or pass one as Protocol(..., "
        "converter=); read a stored attrs value back with cattrs.structure(value, cls)"
    ),
}


def removed_name(name: str) -> NoReturn:
    """Raise AttributeError for ``roomkit.<name>``: saying what replaced it, if it was removed."""
    why = REMOVED.get(name, f"module 'roomkit' has no attribute {name!r}")
    raise AttributeError(why, name=name)
