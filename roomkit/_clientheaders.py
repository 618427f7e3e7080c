"""The extra headers a Python client sends with its handshake, checked before any is.

Pure. A name is an HTTP token (RFC 9110 section 5.6.2); a value is Latin-1 text without
control characters but the tab, so that no header can end early (a CR or LF) and inject
another.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

__all__ = ["checked_headers"]

_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_VALUE: Final = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


def checked_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """``headers`` as a dict, each one fit to go in a handshake.

    Raises:
      TypeError: if a name or a value is not a ``str``.
      ValueError: if a name is not an HTTP token, or a value has a control character
        (CR and LF included) or one beyond Latin-1.
    """
    checked = dict(headers or {})
    for name, value in checked.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"a header is a str and a str, not {name!r}: {value!r}")
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"{name!r} is not a header name")
        if not _FIELD_VALUE.fullmatch(value):
            raise ValueError(f"the {name} header's value {value!r} cannot be sent")
    return checked
