"""The pytest plugin of roomkit.testing, loaded through the ``pytest11`` entry point.

A module of its own, outside the ``roomkit`` package (as Hypothesis does with
``_hypothesis_pytestplugin``): pytest loads every installed plugin at start, and a
module inside the package would import all of roomkit, Trio and wsproto first, in every
project where roomkit is installed. This one imports roomkit only when a test asks for
its fixture. Its fixtures are Trio fixtures: they need pytest-trio, and tests that run
under it (``trio_mode = true``, or ``@pytest.mark.trio``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import trio

    from roomkit import Room
    from roomkit.testing import TestServer

#: The ``roomkit_server`` fixture: ``await roomkit_server(rooms, **options)``.
ServerFactory = Callable[..., Awaitable["TestServer"]]


@pytest.fixture
def roomkit_server(nursery: trio.Nursery) -> ServerFactory:
    """``await roomkit_server(RoomClass or mapping, **options)``: a running test server.

    The options are :func:`roomkit.testing.open_test_server`'s. Each server runs in
    pytest-trio's ``nursery`` fixture until the test ends, then shuts down.
    """
    from roomkit.testing._server import run_test_server

    async def start(rooms: type[Room] | Mapping[str, type[Room]], **options: Any) -> TestServer:
        server: TestServer = await nursery.start(partial(run_test_server, rooms, **options))
        return server

    return start
