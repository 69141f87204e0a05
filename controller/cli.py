"""The controller's subcommands: controller, db, token, apply, get, delete."""

from __future__ import annotations

import argparse
from typing import Any


def add_controller_commands(
    subcommands: argparse._SubParsersAction[Any], common: argparse.ArgumentParser
) -> None:
    """Registers nothing yet: the controller arrives with its own issue."""
