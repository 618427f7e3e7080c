"""``python -m roomkit``: the same as the ``roomkit`` command."""

from ._cli import main

main()
