"""What the proxy passes on of a request (roomkit._core.forwarding): plain tests, no sockets."""

from __future__ import annotations

import pytest

from roomkit._core.forwarding import (
    NEVER_FORWARDED,
    HeaderChoice,
    forwarded_headers,
    forwarding_error,
    header_name_error,
    passed_on,
    subprotocols,
)
from roomkit._core.frontdoor import RequestHead, parse_head

EVERY = HeaderChoice()


def request(target: str = "/r", **headers: str) -> RequestHead:
    return RequestHead("GET", target, {name.replace("_", "-"): v for name, v in headers.items()})


def forwarding_error_of(head: RequestHead) -> str | None:
    return forwarding_error(head, EVERY)


@pytest.mark.parametrize(
    "target",
    ["/r", "/chat/lobby?next=../x", "/a..b/.c/d.", "/%2e%2e%2e", "/caf%C3%A9", "/"],
)
def test_paths_that_stay_where_they_are_pass(target: str) -> None:
    assert forwarding_error_of(request(target)) is None


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("/..", "'.' or '..' segments"),
        ("/a/../b", "'.' or '..' segments"),
        ("/./b", "'.' or '..' segments"),
        ("/a/%2E%2e/b", "'.' or '..' segments"),
        ("/a/%2e", "'.' or '..' segments"),
        ("/a%2fb", "an encoded '/' or a '\\'"),
        ("/a%5Cb", "an encoded '/' or a '\\'"),
        ("/a\\b", "an encoded '/' or a '\\'"),
        ("*", "a path of printable ASCII"),
        ("http://elsewhere/r", "a path of printable ASCII"),
        ("/caf\xe9", "a path of printable ASCII"),
        ("/a b", "a path of printable ASCII"),  # a space ends a request target
        ("/a\x7f", "a path of printable ASCII"),
    ],
)
def test_paths_that_could_mean_another_path_are_refused(target: str, problem: str) -> None:
    what = "request target" if "ASCII" in problem else "path"
    prefix = "must be" if "ASCII" in problem else "must not contain"
    assert forwarding_error_of(request(target)) == f"the {what} {prefix} {problem}"


def test_a_path_may_use_every_printable_character_but_the_space() -> None:
    assert forwarding_error_of(request("/!~a")) is None


@pytest.mark.parametrize(
    "headers",
    [
        {"cookie": "caf\xe9=1"},
        {"user_agent": "a\tb"},
        {"authorization": "Bearer \x7f"},
        {"origin": "https://\xff"},
        {"x_forwarded_for": "10.0.0.1\x00"},
        {"sec_websocket_protocol": "chat,\tv2"},
        {"x_custom": "caf\xe9"},
        {"forwarded": "for=1.2.3.4\x01"},
    ],
)
def test_a_header_passed_on_must_be_printable_ascii(headers: dict[str, str]) -> None:
    (name,) = (key.replace("_", "-") for key in headers)
    assert forwarding_error_of(request(**headers)) == (
        f"the {name} header must be printable ASCII, without control characters"
    )


def test_a_header_passed_on_may_hold_spaces_and_tildes() -> None:
    assert forwarding_error_of(request(user_agent="Mozilla/5.0 (X11) ~ !")) is None


def test_a_header_that_is_not_passed_on_is_not_checked() -> None:
    only = HeaderChoice.of(["cookie"], [])
    assert forwarding_error(request(x_other="caf\xe9"), only) is None
    dropped = HeaderChoice.of(None, ["X-Other"])
    assert forwarding_error(request(x_other="caf\xe9"), dropped) is None
    named = request(connection="Upgrade, X-Other", x_other="caf\xe9")
    assert forwarding_error_of(named) is None
    assert forwarding_error_of(request(keep_alive="caf\xe9")) is None


#: A WebSocket handshake as a browser sends it, with one header of each kind.
BROWSER = (
    b"GET /chat/lobby?x=1 HTTP/1.1\r\n"
    b"Host: proxy.example\r\n"
    b"User-Agent: Mozilla/5.0 (X11)\r\n"
    b"Accept-Language: fr, en;q=0.5\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Origin: https://app.example\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Protocol: chat, v2\r\n"
    b"Connection: keep-alive, Upgrade, X-Hop\r\n"
    b"X-Hop: gone\r\n"
    b"Cookie: a=1\r\n"
    b"Keep-Alive: timeout=5\r\n"
    b"Proxy-Connection: keep-alive\r\n"
    b"Proxy-Authorization: Basic cHJveHk6c2VjcmV0\r\n"
    b"Proxy-Authenticate: Basic\r\n"
    b"TE: trailers\r\n"
    b"Upgrade: websocket\r\n"
    b"Content-Length: 0\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
    b"X_Forwarded_For: 6.6.6.6\r\n"
    b"Cookie: b=2\r\n"
    b"X-Custom: one\r\n"
    b"X-Custom: two\r\n"
    b"Authorization: Bearer t0k3n\r\n"
    b"\r\n"
)


def browser() -> RequestHead:
    head = parse_head(BROWSER)
    assert isinstance(head, RequestHead)
    return head


def test_every_end_to_end_header_is_passed_on_in_order_and_no_other() -> None:
    assert forwarded_headers(browser(), None, EVERY, secure=False)[:-2] == [
        (b"user-agent", b"Mozilla/5.0 (X11)"),
        (b"accept-language", b"fr, en;q=0.5"),
        (b"origin", b"https://app.example"),
        (b"cookie", b"a=1; b=2"),  # duplicates joined, cookies with "; "
        (b"x-custom", b"one, two"),
        (b"authorization", b"Bearer t0k3n"),
    ]


def test_the_never_forwarded_headers_are_the_hop_by_hop_and_the_handshakes() -> None:
    assert sorted(NEVER_FORWARDED) == [
        "connection",
        "content-length",
        "host",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "sec-websocket-accept",
        "sec-websocket-extensions",
        "sec-websocket-key",
        "sec-websocket-protocol",
        "sec-websocket-version",
        "te",
        "transfer-encoding",
        "upgrade",
    ]
    chunked = request(transfer_encoding="chunked", x_a="1")
    assert passed_on(chunked, EVERY) == {"x-a": "1"}


def test_the_headers_connection_names_are_not_passed_on_in_any_case() -> None:
    head = request(connection="upgrade, X-A,, Cookie", x_a="1", x_b="2", cookie="c=1")
    assert passed_on(head, EVERY) == {"x-b": "2"}


def test_only_passes_on_the_headers_it_names_and_drop_none_it_names() -> None:
    head = browser()
    only = HeaderChoice.of(["Cookie", "X-Custom", "x-absent"], [])
    assert passed_on(head, only) == {"cookie": "a=1; b=2", "x-custom": "one, two"}
    drop = HeaderChoice.of(None, ["COOKIE", "user-agent", "accept-language", "x-absent"])
    assert list(passed_on(head, drop)) == ["origin", "x-custom", "authorization"]
    both = HeaderChoice.of(["cookie", "origin"], ["origin"])
    assert passed_on(head, both) == {"cookie": "a=1; b=2"}
    # only never passes on a header that is never passed on (options refuse naming one)
    assert passed_on(request(host="h", x_a="1"), HeaderChoice.of(["host"], [])) == {}


def test_the_address_chains_get_the_proxys_client_and_scheme_last() -> None:
    assert forwarded_headers(request(x_a="1"), "10.0.0.9", EVERY, secure=False) == [
        (b"x-a", b"1"),
        (b"x-forwarded-for", b"10.0.0.9"),
        (b"forwarded", b"for=10.0.0.9;proto=http"),
        (b"x-forwarded-proto", b"http"),
    ]
    seen = request(
        forwarded='for="[2001:db8::1]"', x_forwarded_for="1.2.3.4", x_forwarded_proto="http"
    )
    assert forwarded_headers(seen, "::1", EVERY, secure=True) == [
        (b"x-forwarded-for", b"1.2.3.4, ::1"),
        (b"forwarded", b'for="[2001:db8::1]", for="[::1]";proto=https'),
        (b"x-forwarded-proto", b"http, https"),
    ]
    assert forwarded_headers(seen, None, EVERY, secure=True) == [
        (b"x-forwarded-for", b"1.2.3.4"),
        (b"forwarded", b'for="[2001:db8::1]", proto=https'),
        (b"x-forwarded-proto", b"http, https"),
    ]


def test_a_chain_the_client_may_not_pass_on_starts_at_the_proxy() -> None:
    seen = request(x_forwarded_for="6.6.6.6", forwarded="for=6.6.6.6", x_forwarded_proto="https")
    fresh = [
        (b"x-forwarded-for", b"10.0.0.9"),
        (b"forwarded", b"for=10.0.0.9;proto=http"),
        (b"x-forwarded-proto", b"http"),
    ]
    dropped = HeaderChoice.of(None, ["x-forwarded-for", "forwarded", "x-forwarded-proto"])
    assert forwarded_headers(seen, "10.0.0.9", dropped, secure=False) == fresh
    only = HeaderChoice.of(["x-a"], [])
    assert forwarded_headers(seen, "10.0.0.9", only, secure=False) == fresh
    named = request(
        connection="X-Forwarded-For, Forwarded, X-Forwarded-Proto",
        **{"x_forwarded_for": "6.6.6.6"},
    )
    assert forwarded_headers(named, "10.0.0.9", EVERY, secure=False) == fresh


def test_a_name_with_an_underscore_is_never_passed_on() -> None:
    # parse_head keeps the name as sent; a CGI-style backend would read it as the real one
    head = RequestHead("GET", "/r", {"x_forwarded_for": "6.6.6.6", "x-a_b": "1"})
    assert forwarded_headers(head, "10.0.0.9", EVERY, secure=True) == [
        (b"x-forwarded-for", b"10.0.0.9"),
        (b"forwarded", b"for=10.0.0.9;proto=https"),
        (b"x-forwarded-proto", b"https"),
    ]


@pytest.mark.parametrize(
    ("name", "to_pass_on", "problem"),
    [
        ("x-tenant", True, None),
        ("Cookie", True, None),
        ("x-forwarded-for", True, None),
        ("Connection", False, None),
        ("x_a", False, None),
        ("Host", True, "'Host' is never passed on as it is"),
        ("sec-websocket-protocol", True, "'sec-websocket-protocol' is never passed on as it is"),
        ("x_a", True, "'x_a' is never passed on as it is"),
        ("", False, "'' is not a header name"),
        ("x a", False, "'x a' is not a header name"),
        (" x", False, "' x' is not a header name"),
        ("x,y", True, "'x,y' is not a header name"),
        ("caf\xe9", True, "'caf\xe9' is not a header name"),
    ],
)
def test_the_names_a_choice_may_hold(name: str, to_pass_on: bool, problem: str | None) -> None:
    assert header_name_error(name, to_pass_on=to_pass_on) == problem


def test_subprotocols_in_the_clients_order() -> None:
    assert subprotocols(request(sec_websocket_protocol="v2, chat ,,x")) == ["v2", "chat", "x"]
    assert subprotocols(request()) == []
