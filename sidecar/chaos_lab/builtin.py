"""The built-in job: ``examples/train/mlp.py``, the script ``make demo`` and ``chaos-train local``
run by default. The lab's plain-loop baselines import its data set and model from the same
file, so both sides train exactly the same thing."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

BUILTIN_SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "train" / "mlp.py"


def load_builtin() -> ModuleType:
    """The built-in script as a module (its ``main`` does not run)."""
    spec = importlib.util.spec_from_file_location("chaos_builtin_mlp", BUILTIN_SCRIPT)
    if spec is None or spec.loader is None or not BUILTIN_SCRIPT.is_file():
        raise FileNotFoundError(f"the built-in job {BUILTIN_SCRIPT} is missing (run from a source checkout)")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
