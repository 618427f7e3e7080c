"""The files roomkit serves over plain HTTP, from the packaged ``static`` folder only."""

from __future__ import annotations

from importlib import resources
from typing import Final

from ._core.frontdoor import Response

__all__ = ["static_files"]

_JS: Final = "text/javascript; charset=utf-8"
_HTML: Final = "text/html; charset=utf-8"

#: URL path → (packaged file, content type). Nothing else is ever read.
_CLIENT: Final = {"/roomkit.js": ("roomkit.js", _JS)}
_DEMO: Final = {"/": ("chat.html", _HTML), "/chat.js": ("chat.js", _JS)}


def static_files(*, demo_page: bool = False) -> dict[str, Response]:
    """The plain GET responses: the browser client, and the chat demo if asked for."""
    table = _CLIENT | (_DEMO if demo_page else {})
    folder = resources.files("roomkit") / "static"
    return {
        path: Response(
            200,
            (folder / name).read_bytes(),
            (("cache-control", "no-cache"),),
            content_type,
        )
        for path, (name, content_type) in table.items()
    }
