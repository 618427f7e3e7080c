"""The ``roomkit-forwarded`` header between the nodes of a cluster. Pure, no I/O.

A node that is not a room's owner forwards the client's WebSocket handshake to the
owner, as read, with one header added (:func:`forwarded_head`)::

    roomkit-forwarded: for=203.0.113.7:52114;t=1764600000;sig=<43 characters>

* ``for`` is the client's address as the forwarder's socket saw it, ``HOST:PORT`` (an
  IPv6 host in brackets), or ``unknown``;
* ``t`` the forwarder's wall clock, whole Unix seconds;
* ``sig`` the HMAC-SHA256, keyed with the cluster's secret, of
  ``"{for}|{t}|{sec-websocket-key}|{target}"`` (the target as in the request line,
  path and query: a signature vouches for one handshake to one room), encoded as
  base64url without padding. Only the last field may hold a ``|``, and the verifier
  refuses one in the others, so no two handshakes sign the same bytes. The strings
  are signed as the bytes they came in (latin-1, as the head's parser decodes them).

A cluster without a secret sends the header without ``sig``: it is then only a mark,
which says that the request was forwarded once (it is never forwarded again); the
owner cannot tell a forged ``for`` from a true one, so it keeps the socket's address,
the forwarder's.

A node with the secret trusts a header that it verifies (:func:`verified_remote`): the
client's address is ``for``. Any other header refuses the handshake (403): a client
that talks to an owner directly cannot pass off an address of its choosing, and a
header seen on the network between nodes is good for 60 seconds (``MAX_SKEW``) and
for that handshake only (its ``Sec-WebSocket-Key`` and target are signed). The header
a client sends itself to a forwarder is removed on the way (:func:`forwarded_head`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
from typing import Final

import attrs

from .frontdoor import RequestHead, Response

__all__ = [
    "HEADER",
    "MAX_SKEW",
    "Malformed",
    "Relayed",
    "Untrusted",
    "forwarded_head",
    "forwarded_value",
    "join_address",
    "split_address",
    "verified_remote",
]

#: The header's name, as the head's parser lowercases it.
HEADER: Final = "roomkit-forwarded"
#: Seconds a signed header stays good either side of the verifier's clock: long enough
#: for the clocks of a cluster's machines (NTP keeps them within milliseconds), short
#: enough to bound the replay of a header seen on the network.
MAX_SKEW: Final = 60.0
#: What ``for`` says when the forwarder's socket had no address (an in-memory stream).
UNKNOWN: Final = "unknown"

_HEADER_BYTES: Final = HEADER.encode("ascii")
#: base64url of the 32 bytes of an HMAC-SHA256, without its one ``=`` of padding.
_SIG: Final = re.compile(r"[A-Za-z0-9_-]{43}")
#: Whole Unix seconds; at most 15 digits, so that no value costs a long parse.
_SECONDS: Final = re.compile(r"[0-9]{1,15}")
_PORT: Final = re.compile(r"[0-9]{1,5}")
#: h11's end of a head: the first empty line, CRLF or bare LF.
_HEAD_END: Final = re.compile(rb"\n\r?\n")


@attrs.frozen
class Malformed:
    """Why a head cannot be forwarded, or an address is no ``HOST:PORT``."""

    reason: str


@attrs.frozen
class Untrusted:
    """Why a handshake's ``roomkit-forwarded`` header is refused."""

    reason: str

    def response(self) -> Response:
        """What the handshake gets: 403, with the reason."""
        return Response(403, f"Forbidden: {self.reason}")


@attrs.frozen
class Relayed:
    """A handshake that another node forwarded here: it is never forwarded again."""

    #: The client's address, verified; None when it is not known (no secret here, or
    #: ``for=unknown``): the socket's address, the forwarder's, stands.
    client: tuple[str, int] | None


def join_address(address: tuple[str, int]) -> str:
    """``HOST:PORT``, with an IPv6 host in brackets."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_address(text: str) -> tuple[str, int] | Malformed:
    """The ``(host, port)`` of ``HOST:PORT`` (an IPv6 host in brackets), or why not."""
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]:")
        if not bracket or not host:
            return Malformed(f"no [host]:port in {text!r}")
    else:
        host, colon, port = text.rpartition(":")
        if not colon or not host or ":" in host:
            return Malformed(f"no host:port in {text!r}")
    if not _PORT.fullmatch(port) or int(port) > 65535:
        return Malformed(f"no port in {text!r}")
    return host, int(port)


def forwarded_value(
    client: tuple[str, int] | None, secret: bytes | None, *, key: str, target: str, now: float
) -> str:
    """The ``roomkit-forwarded`` header a forwarder sends for a client at ``client``.

    Args:
      client: the client's address as the forwarder's socket sees it, if any.
      secret: the cluster's secret; None sends no ``sig``.
      key: the handshake's ``Sec-WebSocket-Key``, as parsed.
      target: the request line's target, as parsed.
      now: the wall clock, Unix seconds.
    """
    where = UNKNOWN if client is None else join_address(client)
    t = str(int(now))
    value = f"for={where};t={t}"
    if secret is None:
        return value
    return f"{value};sig={_signature(secret, where, t, key, target)}"


def forwarded_head(raw: bytes, value: str) -> bytes | Malformed:
    """The request head ``raw`` (as read, up to its blank line) with ``value`` as its
    one ``roomkit-forwarded`` header: any the client sent is removed, continuation
    lines included, and the new one goes last, after which nothing can fold into it.

    The head ends where h11 ends it, at its first empty line: ``raw`` must hold nothing
    after that line, or an owner would not see the header, and would forward again.
    """
    end = _HEAD_END.search(raw)
    if end is None:
        return Malformed("no blank line ends the request head")
    if end.end() != len(raw):
        return Malformed("bytes after the request head's first blank line")
    lines = [line.removesuffix(b"\r") for line in raw[: end.start()].split(b"\n")]
    kept = lines[:1]
    dropping = False
    for line in lines[1:]:
        folded = line[:1] in (b" ", b"\t")
        if not folded:
            dropping = line.partition(b":")[0].strip().lower() == _HEADER_BYTES
        if not dropping:
            kept.append(line)
    kept.append(_HEADER_BYTES + b": " + value.encode("latin-1"))
    return b"\r\n".join(kept) + b"\r\n\r\n"


def verified_remote(
    head: RequestHead, secret: bytes | None, *, now: float
) -> Relayed | Untrusted | None:
    """Whether ``head`` came through another node, and the client's address if so.

    Args:
      head: the request head, as parsed.
      secret: this node's cluster secret, or None.
      now: the wall clock, Unix seconds.

    Returns:
      None if ``head`` has no ``roomkit-forwarded`` header (the client connected here
      itself); :class:`Relayed` if it has one that this node accepts (with a secret: a
      signature that verifies, made within ``MAX_SKEW`` of ``now``); else
      :class:`Untrusted`, why it is refused (403). Without a secret, a well-formed
      header is accepted as a mark only, whatever its ``t`` and ``sig``.
    """
    value = head.headers.get(HEADER)
    if value is None:
        return None
    fields = _fields(value)
    if isinstance(fields, Untrusted):
        return fields
    where, t, sig = fields
    client = None if where == UNKNOWN else split_address(where)
    if isinstance(client, Malformed) or (client is not None and not _is_ip(client[0])):
        return Untrusted(f"{HEADER}: for is no ip:port")
    if secret is None:
        return Relayed(None)
    if sig is None:
        return Untrusted(f"{HEADER}: not signed")
    if abs(now - int(t)) > MAX_SKEW:
        return Untrusted(f"{HEADER}: t is more than {MAX_SKEW:.0f} s away")
    key = head.headers.get("sec-websocket-key", "")
    if "|" in key:
        return Untrusted(f"{HEADER}: no signature covers this Sec-WebSocket-Key")
    expected = _signature(secret, where, t, key, head.target)
    if not hmac.compare_digest(expected.encode("ascii"), sig.encode("ascii")):
        return Untrusted(f"{HEADER}: bad signature")
    return Relayed(client)


def _fields(value: str) -> tuple[str, str, str | None] | Untrusted:
    """``for``, ``t`` and ``sig`` (None if absent) of a header, each well-formed."""
    pairs = [part.partition("=") for part in value.split(";")]
    found = {name: field for name, equals, field in pairs if equals}
    if len(found) != len(pairs):  # a part without "=", or a name twice
        return Untrusted(f"{HEADER}: not name=value pairs, each once")
    if set(found) - {"for", "t", "sig"} or not {"for", "t"} <= set(found):
        return Untrusted(f"{HEADER}: fields other than for, t and sig")
    if not _SECONDS.fullmatch(found["t"]):
        return Untrusted(f"{HEADER}: t is no Unix time")
    sig = found.get("sig")
    if sig is not None and not _SIG.fullmatch(sig):
        return Untrusted(f"{HEADER}: sig is no base64url HMAC-SHA256")
    return found["for"], found["t"], sig


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _signature(secret: bytes, where: str, t: str, key: str, target: str) -> str:
    message = "|".join((where, t, key, target)).encode("latin-1")
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
