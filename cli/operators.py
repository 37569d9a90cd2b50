"""cli: operator tools: a user's view, bulk exit, retrying a failed send."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, campaigns: argparse._SubParsersAction) -> None:
    """Add this module's commands: `sub` holds the top-level commands, `campaigns` the
    `nudge campaigns` ones."""
