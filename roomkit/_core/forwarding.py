"""What of a client's request the proxy passes on to its backend. Pure, no I/O.

The proxy puts its backend's path prefix before the client's raw request target, and
passes on the client's end-to-end headers (:class:`HeaderChoice` says which), with
the client's address added to ``X-Forwarded-For`` and ``Forwarded``, and the scheme it
reached the proxy by (``http`` or ``https``) to ``X-Forwarded-Proto`` and to its
``Forwarded`` element (``proto=``). Never passed on:

* the hop-by-hop headers of RFC 9110 section 7.6.1, which concern the client's
  connection to the proxy, not the request: ``Connection`` and every header it names,
  ``Proxy-Connection``, ``Keep-Alive``, ``TE``, ``Transfer-Encoding``, ``Upgrade``,
  and ``Proxy-Authorization`` and ``Proxy-Authenticate`` (RFC 9110 section 11.7), the
  credentials of a proxy, for it alone;
* those of the handshake the proxy makes with the backend itself: ``Host`` (the
  backend's), ``Sec-WebSocket-Key``, ``-Version``, ``-Accept`` and ``-Extensions``
  (the proxy negotiates no extension), ``Sec-WebSocket-Protocol`` (the client's offer
  goes on as the proxy's, see :func:`subprotocols`, and the backend's choice comes
  back) and ``Content-Length`` (an upgrade has no body);
* a header whose name holds an ``_``: a backend that maps ``_`` and ``-`` to one
  name (CGI's ``HTTP_X_FORWARDED_FOR``) would read ``X_Forwarded_For`` as the
  proxy's own ``X-Forwarded-For``.

A client cannot pass off its own values as the proxy's: the proxy appends its
client's address after whatever chain the client sent, so the last element of each is
the proxy's. Duplicate headers were joined into one by the head's parser, and the
client's head is within ``MAX_HEAD`` bytes: what goes on is within that, plus the two
addresses.

The proxy checks the request first, and refuses (400) one that it could not pass on
unchanged, or that the backend could read as another path:

* the target is a path (it starts with ``/``) of printable ASCII;
* no path segment is ``.`` or ``..``, written plainly or percent-encoded (``%2e``):
  a backend that resolves them would serve a path outside the proxy's prefix;
* the path has no encoded slash (``%2f``) or backslash (``%5c``), nor a backslash:
  a backend that decodes them would see other segments than the proxy did;
* every header value it passes on is printable ASCII and spaces: no control byte, no
  byte above 0x7e, nothing that would have to be re-encoded on the way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import attrs

from .frontdoor import RequestHead, is_token_list, list_elements

__all__ = [
    "ADDRESS_HEADERS",
    "HANDSHAKE_HEADERS",
    "HOP_BY_HOP",
    "NEVER_FORWARDED",
    "HeaderChoice",
    "forwarded_headers",
    "forwarding_error",
    "header_name_error",
    "passed_on",
    "subprotocols",
]

#: Hop-by-hop headers (RFC 9110 section 7.6.1, and the proxy credentials of 11.7).
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "transfer-encoding",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
    }
)
#: Headers of the proxy's own handshake with the backend, which it writes itself.
HANDSHAKE_HEADERS: Final = frozenset(
    {
        "host",
        "content-length",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-accept",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
    }
)
#: Headers of the client's that never reach the backend as they are.
NEVER_FORWARDED: Final = HOP_BY_HOP | HANDSHAKE_HEADERS
#: The headers the proxy appends its client's address (and scheme) to: its
#: ``X-Forwarded-For`` and ``Forwarded`` elements, and ``X-Forwarded-Proto``'s.
ADDRESS_HEADERS: Final = ("x-forwarded-for", "forwarded", "x-forwarded-proto")


@attrs.frozen
class HeaderChoice:
    """Which of a client's headers go on to the backend, of those that may (see above).

    Attributes:
      only: the names of the only headers passed on, or None for every one.
      drop: the names of headers never passed on.

    Names are in lower case. The client's ``X-Forwarded-For`` and ``Forwarded`` are
    headers like the others: left out, the chain starts at the proxy's client.
    """

    only: frozenset[str] | None = None
    drop: frozenset[str] = frozenset()

    @classmethod
    def of(cls, only: Iterable[str] | None, drop: Iterable[str]) -> HeaderChoice:
        """The choice of ``only`` (None for every header) less ``drop``, any case."""
        return cls(
            None if only is None else frozenset(name.lower() for name in only),
            frozenset(name.lower() for name in drop),
        )

    def passes(self, name: str) -> bool:
        """Whether a header named ``name`` (in lower case) may go on, by this choice."""
        chosen = self.only is None or name in self.only
        return chosen and name not in self.drop and name not in NEVER_FORWARDED and "_" not in name


def header_name_error(name: str, *, to_pass_on: bool) -> str | None:
    """Why ``name`` cannot be in a :class:`HeaderChoice` (in ``only`` if ``to_pass_on``,
    where a header that is never passed on has no place), or None if it can."""
    if list_elements(name) != [name] or not is_token_list(name):
        return f"{name!r} is not a header name"
    if to_pass_on and (name.lower() in NEVER_FORWARDED or "_" in name):
        return f"{name!r} is never passed on as it is"
    return None


def passed_on(head: RequestHead, choice: HeaderChoice) -> dict[str, str]:
    """The client's headers that go on to the backend as they are, in its order."""
    named = {option.lower() for option in list_elements(head.headers.get("connection", ""))}
    return {
        name: value
        for name, value in head.headers.items()
        if name not in named and choice.passes(name)
    }


def forwarding_error(head: RequestHead, choice: HeaderChoice) -> str | None:
    """Why the request ``head`` cannot be passed on as it is, or None if it can."""
    if not head.target.startswith("/") or not _printable(head.target, space=False):
        return "the request target must be a path of printable ASCII"
    path = head.path.lower()
    if "%2f" in path or "%5c" in path or "\\" in path:
        return "the path must not contain an encoded '/' or a '\\'"
    if any(segment.replace("%2e", ".") in (".", "..") for segment in path.split("/")):
        return "the path must not contain '.' or '..' segments"
    offer = head.headers.get("sec-websocket-protocol")
    checked = passed_on(head, choice) | ({} if offer is None else {"sec-websocket-protocol": offer})
    for name, value in checked.items():
        if not _printable(value, space=True):
            return f"the {name} header must be printable ASCII, without control characters"
    return None


def forwarded_headers(
    head: RequestHead, remote_host: str | None, choice: HeaderChoice, *, secure: bool
) -> list[tuple[bytes, bytes]]:
    """The headers to send the backend: those ``choice`` passes on, with the proxy's
    elements appended (whether the client sent the headers or not; the chains it sent
    stay in front if ``choice`` passes them on): ``remote_host`` to ``X-Forwarded-For``;
    ``for=`` it and ``proto=`` the scheme to ``Forwarded``; the scheme to
    ``X-Forwarded-Proto``. The scheme is ``https`` if the client reached the proxy
    through TLS (``secure``), else ``http``; an unknown host leaves ``for`` out.

    ``head`` must have passed :func:`forwarding_error`.
    """
    headers = passed_on(head, choice)
    elements = _elements(remote_host, "https" if secure else "http")
    for name, element in zip(ADDRESS_HEADERS, elements, strict=True):
        if element is None:
            continue
        seen = headers.pop(name, "")
        headers[name] = f"{seen}, {element}" if seen else element
    return [(name.encode(), value.encode("ascii")) for name, value in headers.items()]


def _elements(host: str | None, proto: str) -> tuple[str | None, str, str]:
    """The proxy's elements of ``X-Forwarded-For`` (None for an unknown ``host``),
    ``Forwarded`` (RFC 7239 section 6: an IPv6 address in brackets and quotes) and
    ``X-Forwarded-Proto``."""
    if host is None:
        return None, f"proto={proto}", proto
    node = f'"[{host}]"' if ":" in host else host
    return host, f"for={node};proto={proto}", proto


def subprotocols(head: RequestHead) -> list[str]:
    """The subprotocols the client offers, in its order of preference."""
    return list_elements(head.headers.get("sec-websocket-protocol", ""))


def _printable(text: str, *, space: bool) -> bool:
    """Whether ``text`` is of the characters from ``!`` (or a space) to ``~``: ASCII
    without a control character (``isprintable`` leaves out 0x00-0x1f and 0x7f)."""
    return text.isascii() and text.isprintable() and (space or " " not in text)
