"""``chaos-train local`` as a child process, for scenarios that run the main job many times."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def run_local(args: list[str], out: Path, deadline_s: float) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """``chaos-train local ARGS --out OUT`` without this process's ``CHAOS_*`` environment:
    (its summary, or None when it wrote none; how it ended: ``exit``, ``wall_s``, and
    ``ok: False`` with an ``error`` when it ran past ``deadline_s`` or wrote no summary)."""
    cmd = [sys.executable, "-m", "chaos_sidecar.cli", "local", *args, "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAOS_")}
    began = time.monotonic()
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=deadline_s)
    except subprocess.TimeoutExpired:
        return None, {"ok": False, "error": f"did not finish within {deadline_s:.0f} s"}
    ended = {"exit": done.returncode, "wall_s": round(time.monotonic() - began, 1)}
    summary_path = out / "summary.json"
    if not summary_path.exists():
        return None, {**ended, "ok": False, "error": done.stderr[-1500:]}
    summary = json.loads(summary_path.read_text())
    return summary, {**ended, "ok": done.returncode == 0 and summary["ok"]}
