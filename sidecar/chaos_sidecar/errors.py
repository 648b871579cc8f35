"""The project's error hierarchy.

User-facing failures derive from :class:`ChaosError`; the CLI prints them without a
traceback and exits with :attr:`ChaosError.exit_code`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


class ChaosError(Exception):
    """Base of every error this project raises on purpose."""

    exit_code = 1


class InputError(ChaosError):
    """Input from outside (a file, an argument, a peer) is invalid.

    ``field`` names the offending field in dotted/indexed form, e.g. ``sources[2].bandwidth_Bps``.
    """

    exit_code = 2

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ProtocolError(ChaosError):
    """A peer message was rejected; ``reason`` is a short stable label used in metrics."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class TrainingError(ChaosError):
    """The trainer SDK stops training on purpose (not a failed collective: those regroup)."""


class UserCodeError(TrainingError):
    """The user's code raised (its loss function, dataset, optimizer update or a hook): the
    trainer leaves the group cleanly and ends with that traceback, chained as the cause.
    ``where`` names the part of the user's code."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where


def load_json(raw: bytes, limit: int, error: Callable[[str, str], Exception]) -> Any:
    """``raw`` parsed as JSON, refused before parsing when it is over ``limit`` bytes. A
    defect raises ``error(reason, text)``, reason ``oversize`` or ``malformed``: each input
    (peer message, state file, manifest) keeps its own error type and field."""
    if len(raw) > limit:
        raise error("oversize", f"{len(raw)} bytes, more than {limit}")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise error("malformed", f"not JSON ({exc})") from None
