"""``python -m sidecar`` is the ``sidecar`` command."""

from .cli import main

main()
