"""Connection ids: short, unique in the process, not secret; a server's and a proxy's."""

from __future__ import annotations

import itertools
import secrets
from typing import Final

__all__ = ["connection_id"]

#: Drawn once per process, so that ids from two processes (in one log) do not meet.
_PROCESS_PREFIX: Final = secrets.token_hex(4)
_numbers = itertools.count(1)


def connection_id() -> str:
    """A new id: this process's random prefix, a dash, and a counter in hex (``"3f9a1c2b-1a"``)."""
    return f"{_PROCESS_PREFIX}-{next(_numbers):x}"
