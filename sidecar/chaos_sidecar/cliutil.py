"""What every ``chaos-train`` sub-command shares: argparse number types and JSON output.

Kept apart from ``chaos_sidecar.cli`` so that command modules (the product's and the lab's)
never import the CLI that loads them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TypeAlias

# what ``ArgumentParser.add_subparsers`` returns; each command's ``register`` adds itself to it
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def number(kind: type, minimum: float, *, strict: bool) -> Callable[[str], float]:
    """An argparse type: ``kind`` (int or float) above (``strict``) or at least ``minimum``."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if (
            value != value
            or value in (float("inf"), float("-inf"))
            or (value <= minimum if strict else value < minimum)
        ):
            bound = f"> {minimum}" if strict else f">= {minimum}"
            raise argparse.ArgumentTypeError(f"expected a value {bound}, got {text}")
        return value

    return parse


positive_int = number(int, 0, strict=True)
non_negative_int = number(int, 0, strict=False)
positive_float = number(float, 0, strict=True)
non_negative_float = number(float, 0, strict=False)


def print_json(obj: object) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
