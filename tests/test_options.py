"""``_options``: options declared once, as annotated keys of a TypedDict.

Plain tests of ``OptionSet``, and one that runs mypy on a user's calls of ``serve`` and
``proxy``: their keywords are type-checked although the signatures are ``**options``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Annotated, TypedDict

import pytest
from mypy import api as mypy_api

import roomkit
from roomkit._options import (
    Option,
    OptionSet,
    advertised_address,
    check_advertised_address,
    check_callable_or_none,
    check_count_or_none,
    check_room_name,
    room_name,
)
from roomkit._proxy import PROXY_OPTIONS
from roomkit._server import SERVE_OPTIONS

from .helpers import ROOT


class Knobs(TypedDict, total=False):
    size: Annotated[int | None, Option(default=3, group="g", check=check_count_or_none, help="")]
    name: Annotated[str, Option(default="x", group="g", help="")]


KNOBS = OptionSet[Knobs](Knobs, "knobs")


def test_complete_fills_in_defaults_in_declared_order() -> None:
    assert list(KNOBS.options) == ["size", "name"]
    assert KNOBS.complete({}) == {"size": 3, "name": "x"}
    assert KNOBS.complete({"name": "y", "size": None}) == {"size": None, "name": "y"}


def test_complete_checks_values_and_refuses_unknown_keywords() -> None:
    with pytest.raises(ValueError, match="size must be positive or None, not 0"):
        KNOBS.complete({"size": 0})
    with pytest.raises(TypeError, match="knobs\\(\\) got an unexpected keyword argument 'sise'"):
        KNOBS.complete({"sise": 1})


def test_a_key_without_its_option_is_refused_at_once() -> None:
    class Bare(TypedDict, total=False):
        size: int

    with pytest.raises(TypeError, match="'size' is annotated"):
        OptionSet[Bare](Bare, "bare")


def test_a_room_name_is_checked_as_a_paths_last_segment_decodes_to() -> None:
    check_room_name("default_room", "general talk")
    check_room_name("default_room", "%2F")  # a name, not encoded
    with pytest.raises(ValueError) as raised:
        check_room_name("default_room", "")
    assert str(raised.value) == (
        "default_room must be a room name, not '': a room name must be 1 to 256 characters long"
    )
    with pytest.raises(TypeError) as wrong:
        check_room_name("default_room", b"lobby")
    assert str(wrong.value) == "default_room must be a room name (a str), not b'lobby'"
    assert room_name("general talk") == "general talk"
    with pytest.raises(ValueError) as bad:
        room_name("a/b")
    assert str(bad.value) == "expected a room name, not 'a/b': a room name cannot contain '/'"


def test_a_route_hook_is_a_callable_or_none() -> None:
    check_callable_or_none("route", None)
    check_callable_or_none("route", len)
    with pytest.raises(TypeError) as raised:
        check_callable_or_none("route", "app:route")
    assert str(raised.value) == "route must be a callable or None, not 'app:route'"


@pytest.mark.parametrize("address", ["10.0.0.1:8080", "node-1.example:1", "[::1]:65535"])
def test_an_advertised_address_is_host_and_port(address: str) -> None:
    assert advertised_address(address) == address
    check_advertised_address("advertise", address)


@pytest.mark.parametrize(
    "address", ["10.0.0.1", ":8080", "::1:8080", "[::1]", "h:0", "h:65536", "0.0.0.0:80", "h:x"]
)
def test_an_advertised_address_that_no_node_can_reach_is_refused(address: str) -> None:
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        advertised_address(address)
    with pytest.raises(TypeError, match="advertise must be HOST:PORT"):
        check_advertised_address("advertise", 8080)


def test_the_defaults_are_those_documented() -> None:
    serve = {name: option.default for name, option in SERVE_OPTIONS.options.items()}
    assert serve == {
        "host": "127.0.0.1",
        "port": 8080,
        "storage": ":memory:",
        "group_commit": True,
        "default_room": "default",
        "route": None,
        "handshake_timeout": 10.0,
        "max_connections": None,
        "allowed_origins": None,
        "drain_timeout": 10.0,
        "ssl_context": None,
        "demo_page": False,
        "metrics": False,
        "advertise": None,
        "lease": 5.0,
        "cluster_secret": None,
    }
    proxy = {name: option.default for name, option in PROXY_OPTIONS.options.items()}
    assert proxy == {
        "host": "127.0.0.1",
        "port": 8080,
        "ssl_context": None,
        "handshake_timeout": 10.0,
        "forward_headers": None,
        "drop_headers": (),
        "max_message_size": roomkit.Room.max_message_size,
        "max_connections": roomkit.Room.max_connections,
        "rate_limit": roomkit.Room.rate_limit,
    }


def test_mypy_checks_the_keywords_of_serve_and_proxy(tmp_path: Path) -> None:
    program = tmp_path / "user.py"
    program.write_text(
        textwrap.dedent(
            """\
            import roomkit

            class App(roomkit.Room): ...

            async def main() -> None:
                await roomkit.serve(App, host="127.0.0.1", port=0, max_connections=5)
                await roomkit.serve(App, port="8080")
                await roomkit.serve(App, prot=0)
                await roomkit.proxy("ws://127.0.0.1:9000", port=0, rate_limit=None)
                await roomkit.proxy("ws://127.0.0.1:9000", drain_timeout=1)
                options: roomkit.ServeOptions = {"port": 0, "metrics": True}
                await roomkit.serve(App, **options)

            def by_header(request: roomkit.Request) -> str | None:
                return request.headers.get("x-room")

            async def by_token(request: roomkit.Request) -> tuple[str, str] | roomkit.Reject:
                return roomkit.Reject(401)

            async def more() -> None:
                await roomkit.serve(App, default_room="lobby", route=by_header)
                await roomkit.serve(App, route=by_token)
                await roomkit.serve(App, route=len)
            """
        )
    )
    cache = ROOT / ".mypy_cache"
    out, err, status = mypy_api.run(["--strict", "--cache-dir", str(cache), str(program)])
    errors = [line.partition(":")[2] for line in out.splitlines() if ": error: " in line]
    assert [error.partition(":")[0] for error in errors] == ["7", "8", "10", "23"], out + err
    assert 'incompatible type "str"; expected "int"' in errors[0]
    assert 'Unexpected keyword argument "prot" for "serve"' in errors[1]
    assert 'Unexpected keyword argument "drain_timeout" for "proxy"' in errors[2]
    assert 'Argument "route" to "serve" has incompatible type' in errors[3]
    assert status == 1
