"""The ``sidecar`` command line: one subcommand module per concept."""

from __future__ import annotations

from .app import main

__all__ = ["main"]
