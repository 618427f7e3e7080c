"""docs/api.md against the code it describes: the names it imports, and the synopses of
``roomkit serve`` and ``roomkit proxy``, which drift from the parser when a flag is
added (the proxy's TLS and header flags once were missing from it)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

import roomkit
import roomkit._cli

API = (Path(__file__).parent.parent / "docs" / "api.md").read_text(encoding="utf-8")


def words(text: str) -> str:
    return " ".join(text.split())


def test_api_md_imports_every_public_name() -> None:
    block = re.search(r"from roomkit import \((.*?)\)", API, re.DOTALL)
    assert block is not None
    assert sorted(name.strip() for name in block[1].split(",") if name.strip()) == sorted(
        roomkit.__all__
    )


@pytest.mark.parametrize("command", ["serve", "proxy"])
def test_api_md_shows_the_usage_the_command_prints(command: str) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        roomkit._cli.main([command, "--help"])
    usage = out.getvalue().split("\n\n")[0].removeprefix("usage: ")
    synopsis = re.search(rf"^(roomkit {command} \[-h\].*?)$\n(?!  )", API, re.DOTALL | re.M)
    assert synopsis is not None
    assert words(synopsis[1]) == words(usage)
