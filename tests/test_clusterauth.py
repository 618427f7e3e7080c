"""roomkit._core.clusterauth: the roomkit-forwarded header, made, checked and inserted."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomkit._core.clusterauth import (
    MAX_SKEW,
    Malformed,
    Relayed,
    Untrusted,
    forwarded_head,
    forwarded_value,
    join_address,
    split_address,
    verified_remote,
)
from roomkit._core.frontdoor import RequestHead, Response, parse_head

SECRET = b"s3cret"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
NOW = 1_764_600_000.0
CLIENT = ("203.0.113.7", 52114)


def signed(where: str, t: str, key: str, target: str, secret: bytes = SECRET) -> str:
    digest = hmac.new(secret, f"{where}|{t}|{key}|{target}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def head(value: str | None, *, target: str = "/chat/lobby?u=1", key: str = KEY) -> RequestHead:
    headers = {"sec-websocket-key": key}
    if value is not None:
        headers["roomkit-forwarded"] = value
    return RequestHead("GET", target, headers)


def test_the_value_is_for_t_and_the_base64url_hmac_of_for_t_key_and_target() -> None:
    value = forwarded_value(CLIENT, SECRET, key=KEY, target="/chat/lobby?u=1", now=NOW + 0.9)
    sig = signed("203.0.113.7:52114", "1764600000", KEY, "/chat/lobby?u=1")
    assert value == f"for=203.0.113.7:52114;t=1764600000;sig={sig}"
    assert len(sig) == 43 and "=" not in sig


def test_without_a_secret_the_value_has_no_sig() -> None:
    value = forwarded_value(("::1", 80), None, key=KEY, target="/r", now=NOW)
    assert value == "for=[::1]:80;t=1764600000"
    assert forwarded_value(None, None, key=KEY, target="/r", now=NOW) == "for=unknown;t=1764600000"


def test_a_signed_header_verifies_and_gives_the_clients_address() -> None:
    value = forwarded_value(CLIENT, SECRET, key=KEY, target="/chat/lobby?u=1", now=NOW)
    assert verified_remote(head(value), SECRET, now=NOW) == Relayed(CLIENT)
    ipv6 = forwarded_value(("2001:db8::1", 9), SECRET, key=KEY, target="/chat/lobby?u=1", now=NOW)
    assert verified_remote(head(ipv6), SECRET, now=NOW) == Relayed(("2001:db8::1", 9))
    unknown = forwarded_value(None, SECRET, key=KEY, target="/chat/lobby?u=1", now=NOW)
    assert verified_remote(head(unknown), SECRET, now=NOW) == Relayed(None)


def test_no_header_is_a_direct_client() -> None:
    assert verified_remote(head(None), SECRET, now=NOW) is None
    assert verified_remote(head(None), None, now=NOW) is None


@pytest.mark.parametrize(
    ("skew", "accepted"),
    [(0, True), (MAX_SKEW, True), (-MAX_SKEW, True), (MAX_SKEW + 1, False), (-MAX_SKEW - 1, False)],
)
def test_t_is_good_for_max_skew_either_side(skew: float, accepted: bool) -> None:
    value = forwarded_value(CLIENT, SECRET, key=KEY, target="/chat/lobby?u=1", now=NOW)
    outcome = verified_remote(head(value), SECRET, now=NOW + skew)
    expected = (
        Relayed(CLIENT) if accepted else Untrusted("roomkit-forwarded: t is more than 60 s away")
    )
    assert outcome == expected


def test_the_window_is_sixty_seconds() -> None:
    assert MAX_SKEW == 60.0


GOOD = {"where": "203.0.113.7:52114", "t": "1764600000", "key": KEY, "target": "/chat/lobby?u=1"}


@pytest.mark.parametrize(
    "tampered",
    [
        {"where": "203.0.113.8:52114"},
        {"t": "1764600001"},
        {"key": "AAAAAAAAAAAAAAAAAAAAAA=="},
        {"target": "/chat/other?u=1"},
        {"target": "/chat/lobby?u=2"},
    ],
)
def test_a_tampered_for_t_key_or_target_fails(tampered: dict[str, str]) -> None:
    sig = signed(GOOD["where"], GOOD["t"], GOOD["key"], GOOD["target"])
    fields = GOOD | tampered
    value = f"for={fields['where']};t={fields['t']};sig={sig}"
    request = head(value, target=fields["target"], key=fields["key"])
    assert verified_remote(request, SECRET, now=NOW) == Untrusted(
        "roomkit-forwarded: bad signature"
    )
    untampered = head(value.replace(fields["where"], GOOD["where"]).replace(fields["t"], GOOD["t"]))
    assert verified_remote(untampered, SECRET, now=NOW) == Relayed(CLIENT)


def test_another_secret_fails() -> None:
    value = forwarded_value(CLIENT, SECRET, key=KEY, target="/chat/lobby?u=1", now=NOW)
    assert verified_remote(head(value), b"another", now=NOW) == Untrusted(
        "roomkit-forwarded: bad signature"
    )


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "not name=value pairs, each once"),
        ("for=1.2.3.4:5;t=1764600000;", "not name=value pairs, each once"),
        ("for=1.2.3.4:5;for=1.2.3.4:5;t=1", "not name=value pairs, each once"),
        ("for=1.2.3.4:5", "fields other than for, t and sig"),
        ("for=1.2.3.4:5;t=1764600000;by=x", "fields other than for, t and sig"),
        ("For=1.2.3.4:5;t=1764600000", "fields other than for, t and sig"),
        ("for=1.2.3.4:5;t=-1", "t is no Unix time"),
        ("for=1.2.3.4:5;t=1764600000.5", "t is no Unix time"),
        ("for=1.2.3.4:5;t=" + "9" * 16, "t is no Unix time"),
        ("for=1.2.3.4:5;t=1764600000;sig=abc", "sig is no base64url HMAC-SHA256"),
        ("for=1.2.3.4:5;t=1764600000;sig=" + "+" * 43, "sig is no base64url HMAC-SHA256"),
        ("for=1.2.3.4:5;t=1764600000;sig=" + "é" * 43, "sig is no base64url HMAC-SHA256"),
        ("for=example.com:80;t=1764600000", "for is no ip:port"),
        ("for=1.2.3.4;t=1764600000", "for is no ip:port"),
        ("for=1.2.3.4:65536;t=1764600000", "for is no ip:port"),
        ("for=::1:80;t=1764600000", "for is no ip:port"),
        ("for=[::1:80;t=1764600000", "for is no ip:port"),
        ("for=1.2.3.4|x:80;t=1764600000", "for is no ip:port"),
        ("for=1.2.3.4:5;t=1764600000", "not signed"),
    ],
)
def test_a_malformed_header_is_refused_with_its_reason(value: str, reason: str) -> None:
    refused = verified_remote(head(value), SECRET, now=NOW)
    assert refused == Untrusted(f"roomkit-forwarded: {reason}")
    assert isinstance(refused, Untrusted)
    assert refused.response() == Response(403, f"Forbidden: roomkit-forwarded: {reason}")


def test_without_a_secret_a_well_formed_header_is_a_mark_only() -> None:
    forged = "for=1.2.3.4:5;t=1;sig=" + "A" * 43
    assert verified_remote(head(forged), None, now=NOW) == Relayed(None)
    assert verified_remote(head("for=1.2.3.4:5;t=1"), None, now=NOW) == Relayed(None)
    assert verified_remote(head("for=x"), None, now=NOW) == Untrusted(
        "roomkit-forwarded: fields other than for, t and sig"
    )


def test_a_key_with_a_bar_is_refused_so_that_no_two_handshakes_sign_alike() -> None:
    # "k|/a" + "/b" and "k" + "|/a/b" would sign the same bytes.
    value = forwarded_value(CLIENT, SECRET, key="k", target="|/a/b", now=NOW)
    assert verified_remote(head(value, key="k|/a", target="/b"), SECRET, now=NOW) == Untrusted(
        "roomkit-forwarded: no signature covers this Sec-WebSocket-Key"
    )


def test_two_headers_joined_by_the_parser_are_refused() -> None:
    value = forwarded_value(CLIENT, SECRET, key=KEY, target="/r", now=NOW)
    assert verified_remote(head(f"{value}, {value}", target="/r"), SECRET, now=NOW) == Untrusted(
        "roomkit-forwarded: not name=value pairs, each once"
    )


addresses = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str)).flatmap(
    lambda host: st.tuples(st.just(host), st.integers(0, 65535))
)
latin1 = st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF, exclude_characters="|"))


@given(addresses)
def test_an_address_is_joined_and_split_back(address: tuple[str, int]) -> None:
    assert split_address(join_address(address)) == address


@given(addresses, latin1, latin1.map(lambda rest: "/" + rest), st.binary(min_size=1))
def test_every_value_made_verifies_and_every_changed_byte_fails(
    client: tuple[str, int], key: str, target: str, secret: bytes
) -> None:
    value = forwarded_value(client, secret, key=key, target=target, now=NOW)
    assert verified_remote(head(value, key=key, target=target), secret, now=NOW) == Relayed(client)
    assert verified_remote(head(value, key=key, target=target + "x"), secret, now=NOW) == Untrusted(
        "roomkit-forwarded: bad signature"
    )


@given(st.text(max_size=80), st.binary(max_size=8))
def test_no_header_value_raises(value: str, secret: bytes) -> None:
    outcome = verified_remote(head(value), secret or None, now=NOW)
    assert outcome is None or isinstance(outcome, Relayed | Untrusted)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("node-a:8080", ("node-a", 8080)),
        ("10.0.0.1:1", ("10.0.0.1", 1)),
        ("[2001:db8::1]:443", ("2001:db8::1", 443)),
        ("node-a", Malformed("no host:port in 'node-a'")),
        (":80", Malformed("no host:port in ':80'")),
        ("::1:80", Malformed("no host:port in '::1:80'")),
        ("[]:80", Malformed("no [host]:port in '[]:80'")),
        ("[::1]80", Malformed("no [host]:port in '[::1]80'")),
        ("host:", Malformed("no port in 'host:'")),
        ("host:+1", Malformed("no port in 'host:+1'")),
        ("host:99999", Malformed("no port in 'host:99999'")),
    ],
)
def test_split_address(text: str, expected: tuple[str, int] | Malformed) -> None:
    assert split_address(text) == expected


VALUE = "for=1.2.3.4:5;t=1"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            b"GET /r HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /r HTTP/1.1\r\nHost: a\r\nroomkit-forwarded: for=1.2.3.4:5;t=1\r\n\r\n",
        ),
        (  # the client's own, in any case and spacing, continuation lines too, are gone
            b"GET /r HTTP/1.1\r\nRoomkit-Forwarded: for=6.6.6.6:1;t=1\r\n"
            b"Host: a\r\nROOMKIT-FORWARDED  :x\r\n\tfolded\r\n y\r\nX: 1\r\n z\r\n\r\n",
            b"GET /r HTTP/1.1\r\nHost: a\r\nX: 1\r\n z\r\n"
            b"roomkit-forwarded: for=1.2.3.4:5;t=1\r\n\r\n",
        ),
        (  # bare LFs are lines, as h11 reads them
            b"GET /r HTTP/1.1\nHost: a\nroomkit-forwarded: x\n\n",
            b"GET /r HTTP/1.1\r\nHost: a\r\nroomkit-forwarded: for=1.2.3.4:5;t=1\r\n\r\n",
        ),
        (b"GET /r HTTP/1.1\r\nHost: a\r\n", Malformed("no blank line ends the request head")),
        (  # an early blank line would hide the header from the owner
            b"GET /r HTTP/1.1\r\nHost: a\n\nroomkit-forwarded: x\r\n\r\n",
            Malformed("bytes after the request head's first blank line"),
        ),
        (
            b"GET /r HTTP/1.1\r\nHost: a\r\n\r\n\x81\x00",
            Malformed("bytes after the request head's first blank line"),
        ),
    ],
)
def test_forwarded_head(raw: bytes, expected: bytes | Malformed) -> None:
    assert forwarded_head(raw, VALUE) == expected


header_names = st.sampled_from(["X-A", "roomkit-forwarded", "Roomkit-Forwarded", "Cookie"])
header_values = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=10)


@given(
    st.lists(st.tuples(header_names, header_values, st.booleans()), max_size=6),
    st.sampled_from(["\r\n", "\n"]),
)
def test_the_owner_parses_exactly_one_header_the_forwarders_and_every_other(
    headers: list[tuple[str, str, bool]], newline: str
) -> None:
    lines = ["GET /r HTTP/1.1", "Host: a"]
    for name, value, folded in headers:
        lines += [f"{name}: {value}"] + ([" folded"] if folded else [])
    raw = (newline.join(lines) + newline + newline).encode()
    before = parse_head(raw)
    rewritten = forwarded_head(raw, VALUE)
    assert isinstance(before, RequestHead) and isinstance(rewritten, bytes)
    after = parse_head(rewritten)
    assert isinstance(after, RequestHead)
    assert after.headers["roomkit-forwarded"] == VALUE
    others = {k: v for k, v in before.headers.items() if k != "roomkit-forwarded"}
    assert {k: v for k, v in after.headers.items() if k != "roomkit-forwarded"} == others
    assert after.target == before.target
