"""What of a client's request the proxy passes on to its backend. Pure, no I/O.

The proxy puts its backend's path prefix before the client's raw request target, and
copies a few headers. It checks them first, and refuses (400) a request that it could
not pass on unchanged, or that the backend could read as another path:

* the target is a path (it starts with ``/``) of printable ASCII;
* no path segment is ``.`` or ``..``, written plainly or percent-encoded (``%2e``):
  a backend that resolves them would serve a path outside the proxy's prefix;
* the path has no encoded slash (``%2f``) or backslash (``%5c``), nor a backslash:
  a backend that decodes them would see other segments than the proxy did;
* every header value it passes on is printable ASCII and spaces: no control byte, no
  byte above 0x7e, nothing that would have to be re-encoded on the way.
"""

from __future__ import annotations

from typing import Final

from .frontdoor import RequestHead, list_elements

__all__ = ["FORWARDED_HEADERS", "forwarded_headers", "forwarding_error", "subprotocols"]

#: Request headers passed on to the backend: who the client is, and what it may do.
FORWARDED_HEADERS: Final = ("origin", "cookie", "authorization", "user-agent")
#: Headers whose values reach the backend, the client's X-Forwarded-For included.
_CHECKED_HEADERS: Final = (*FORWARDED_HEADERS, "x-forwarded-for", "sec-websocket-protocol")


def forwarding_error(head: RequestHead) -> str | None:
    """Why the request ``head`` cannot be passed on as it is, or None if it can."""
    if not head.target.startswith("/") or not _printable(head.target, space=False):
        return "the request target must be a path of printable ASCII"
    path = head.path.lower()
    if "%2f" in path or "%5c" in path or "\\" in path:
        return "the path must not contain an encoded '/' or a '\\'"
    if any(segment.replace("%2e", ".") in (".", "..") for segment in path.split("/")):
        return "the path must not contain '.' or '..' segments"
    for name in _CHECKED_HEADERS:
        value = head.headers.get(name)
        if value is not None and not _printable(value, space=True):
            return f"the {name} header must be printable ASCII, without control characters"
    return None


def forwarded_headers(head: RequestHead, remote_host: str | None) -> list[tuple[bytes, bytes]]:
    """The headers to send the backend, ``X-Forwarded-For`` with ``remote_host`` added.

    ``head`` must have passed :func:`forwarding_error`.
    """
    headers = [
        (name.encode(), head.headers[name].encode("ascii"))
        for name in FORWARDED_HEADERS
        if name in head.headers
    ]
    if remote_host is not None:
        seen = head.headers.get("x-forwarded-for")
        chain = f"{seen}, {remote_host}" if seen else remote_host
        headers.append((b"x-forwarded-for", chain.encode("ascii")))
    return headers


def subprotocols(head: RequestHead) -> list[str]:
    """The subprotocols the client offers, in its order of preference."""
    return list_elements(head.headers.get("sec-websocket-protocol", ""))


def _printable(text: str, *, space: bool) -> bool:
    lowest = " " if space else "!"
    return all(lowest <= char <= "~" for char in text)
