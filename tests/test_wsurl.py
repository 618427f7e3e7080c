"""``ws://`` and ``wss://`` URLs (``roomkit._wsurl``): pure, exact."""

from __future__ import annotations

import pytest

from roomkit._wsurl import WebSocketURL, base_url


@pytest.mark.parametrize(
    ("url", "host_header", "resource"),
    [
        ("ws://example.com/r", "example.com", "/r"),
        ("ws://example.com:80/r?a=1", "example.com", "/r?a=1"),
        ("ws://example.com:443/r", "example.com:443", "/r"),  # not ws://'s own port
        ("wss://example.com/r", "example.com", "/r"),
        ("wss://example.com:80/r", "example.com:80", "/r"),
        ("ws://127.0.0.1:8080", "127.0.0.1:8080", "/"),
        ("ws://[::1]:8080/r", "[::1]:8080", "/r"),  # brackets kept in the Host header
        ("wss://[::1]/r", "[::1]", "/r"),
    ],
)
def test_the_host_header_and_the_request_target(url: str, host_header: str, resource: str) -> None:
    parsed = WebSocketURL.parse(url)
    assert (parsed.host_header, parsed.resource) == (host_header, resource)


def test_the_host_to_connect_to_has_no_brackets() -> None:
    assert WebSocketURL.parse("ws://[::1]:8080/r") == WebSocketURL(False, "::1", 8080, "/r", "")


@pytest.mark.parametrize("url", ["http://example.com/r", "ws:///r", "example.com"])
def test_anything_else_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="ws:// or wss://"):
        WebSocketURL.parse(url)


def test_base_urls() -> None:
    assert base_url("127.0.0.1", 8080, secure=False) == "ws://127.0.0.1:8080"
    assert base_url("::1", 8443, secure=True) == "wss://[::1]:8443"
