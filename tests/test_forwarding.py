"""What the proxy passes on of a request (roomkit._core.forwarding): plain tests, no sockets."""

from __future__ import annotations

import pytest

from roomkit._core.forwarding import forwarded_headers, forwarding_error, subprotocols
from roomkit._core.frontdoor import RequestHead


def request(target: str = "/r", **headers: str) -> RequestHead:
    return RequestHead("GET", target, {name.replace("_", "-"): v for name, v in headers.items()})


@pytest.mark.parametrize(
    "target",
    ["/r", "/chat/lobby?next=../x", "/a..b/.c/d.", "/%2e%2e%2e", "/caf%C3%A9", "/"],
)
def test_paths_that_stay_where_they_are_pass(target: str) -> None:
    assert forwarding_error(request(target)) is None


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
    assert forwarding_error(request(target)) == f"the {what} {prefix} {problem}"


def test_a_path_may_use_every_printable_character_but_the_space() -> None:
    assert forwarding_error(request("/!~a")) is None


@pytest.mark.parametrize(
    "headers",
    [
        {"cookie": "caf\xe9=1"},
        {"user_agent": "a\tb"},
        {"authorization": "Bearer \x7f"},
        {"origin": "https://\xff"},
        {"x_forwarded_for": "10.0.0.1\x00"},
        {"sec_websocket_protocol": "chat,\tv2"},
    ],
)
def test_a_header_passed_on_must_be_printable_ascii(headers: dict[str, str]) -> None:
    (name,) = (key.replace("_", "-") for key in headers)
    assert forwarding_error(request(**headers)) == (
        f"the {name} header must be printable ASCII, without control characters"
    )


def test_a_header_passed_on_may_hold_spaces_and_tildes() -> None:
    assert forwarding_error(request(user_agent="Mozilla/5.0 (X11) ~ !")) is None


def test_a_header_that_is_not_passed_on_is_not_checked() -> None:
    assert forwarding_error(request(x_other="caf\xe9")) is None


def test_the_headers_passed_on_and_the_forwarded_for_chain() -> None:
    head = request(cookie="a=1", origin="https://app.example", x_other="no")
    assert forwarded_headers(head, "10.0.0.9") == [
        (b"origin", b"https://app.example"),
        (b"cookie", b"a=1"),
        (b"x-forwarded-for", b"10.0.0.9"),
    ]
    seen = request(x_forwarded_for="1.2.3.4")
    assert forwarded_headers(seen, "10.0.0.9") == [(b"x-forwarded-for", b"1.2.3.4, 10.0.0.9")]
    assert forwarded_headers(seen, None) == []


def test_subprotocols_in_the_clients_order() -> None:
    assert subprotocols(request(sec_websocket_protocol="v2, chat ,,x")) == ["v2", "chat", "x"]
    assert subprotocols(request()) == []
