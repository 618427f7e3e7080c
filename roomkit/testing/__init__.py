"""roomkit.testing: run rooms in a test, with no socket and no real time.

``open_test_server`` runs the same server code as ``roomkit.serve`` over an in-memory
transport; ``TestServer.connect`` opens a test client to one of its rooms. See
docs/testing.md.
"""

from ._client import TestClient as TestClient
from ._server import TestServer as TestServer
from ._server import open_test_server as open_test_server

__all__ = ["TestClient", "TestServer", "open_test_server"]
