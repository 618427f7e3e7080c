"""``ws://`` and ``wss://`` URLs: one to connect to (for the client, and the proxy's
backend), and the base URL of a server or a proxy listening."""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

import attrs
import trio

__all__ = ["WebSocketURL", "base_url"]


@attrs.frozen
class WebSocketURL:
    """Where to open a WebSocket: the TCP endpoint, TLS or not, and the request target."""

    secure: bool
    host: str
    port: int
    path: str
    query: str

    @classmethod
    def parse(cls, url: str) -> WebSocketURL:
        """Raises ValueError for anything but a ``ws://`` or ``wss://`` URL with a host."""
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"expected a ws:// or wss:// URL, not {url!r}")
        secure = parts.scheme == "wss"
        port = parts.port or (443 if secure else 80)
        return cls(secure, parts.hostname, port, parts.path, parts.query)

    @property
    def host_header(self) -> str:
        """The Host header: an IPv6 host in brackets, the port unless the scheme's own."""
        host = _bracketed(self.host)
        return host if self.port == (443 if self.secure else 80) else f"{host}:{self.port}"

    @property
    def resource(self) -> str:
        """The request target: path and query."""
        return (self.path or "/") + (f"?{self.query}" if self.query else "")

    async def open_stream(
        self, ssl_context: ssl.SSLContext | None = None
    ) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
        """A TCP connection to the host, wrapped in TLS for ``wss://``: with
        ``ssl_context``, or else the system's trusted certificates."""
        if self.secure:
            return await trio.open_ssl_over_tcp_stream(
                self.host, self.port, ssl_context=ssl_context
            )
        return await trio.open_tcp_stream(self.host, self.port)


def base_url(host: str, port: int, *, secure: bool) -> str:
    """The base URL of a server listening on ``host:port``: ``ws://127.0.0.1:8080``,
    ``wss://`` with TLS, an IPv6 host in brackets (``ws://[::1]:8080``)."""
    return f"{'wss' if secure else 'ws'}://{_bracketed(host)}:{port}"


def _bracketed(host: str) -> str:
    """A host as a URL or a Host header writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host
