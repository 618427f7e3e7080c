"""The demo chat page end to end, in a real headless Chromium (Debian's ``chromium``,
driven by Playwright with ``executable_path``).

Two pages join one room, one chats and the other shows it; then the server restarts on
the same port, the pages reconnect by themselves (roomkit.js), and chat again.

Without chromium this test is skipped: ``apt-get install chromium`` enables it (CI's
``.ci/run`` installs it).
"""

from __future__ import annotations

import shutil
from typing import Any

import pytest
import trio

import roomkit
from examples.chat import ChatRoom

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium: install Debian's chromium (apt-get install chromium) to run it",
)
#: Flags for a root, headless, offline Chromium that reaches nothing but loopback.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


async def serve_in(scope: trio.CancelScope, port: int, task_status: Any) -> None:
    with scope:
        await roomkit.serve(ChatRoom, port=port, demo_page=True, task_status=task_status)


async def test_two_pages_chat_and_survive_a_restart(nursery: trio.Nursery) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    first = trio.CancelScope()
    server: roomkit.Server = await nursery.start(serve_in, first, 0)

    async def restart() -> None:
        first.cancel()
        await trio.sleep(0.5)  # the pages see the 1001 and start retrying
        await nursery.start(serve_in, trio.CancelScope(), server.port)

    def browse() -> None:
        url = f"http://127.0.0.1:{server.port}/"
        with playwright.sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                ann, bob = browser.new_page(), browser.new_page()
                for page, name in ((ann, "ann"), (bob, "bob")):
                    page.goto(url)
                    page.fill("#name", name)
                    page.fill("#room", "lobby")
                    page.click("#join")
                    page.wait_for_selector("#status[data-state='open']", timeout=10_000)
                bob.wait_for_selector("#users li:has-text('ann')")
                ann.wait_for_selector("#users li:has-text('bob')")

                ann.fill("#text", "hello bob")
                bob.wait_for_selector("#typing:has-text('ann typing')", timeout=10_000)
                ann.click("#send")
                bob.wait_for_selector("#messages li:has-text('ann: hello bob')", timeout=10_000)

                trio.from_thread.run(restart)
                for page in (ann, bob):
                    page.wait_for_selector("#status[data-state='open']", timeout=20_000)
                bob.fill("#text", "back again")
                bob.click("#send")
                ann.wait_for_selector("#messages li:has-text('bob: back again')", timeout=10_000)
            finally:
                browser.close()

    with trio.fail_after(120):
        await trio.to_thread.run_sync(browse)
