"""Events scenario: decision and agreement latency per event kind, as one table.

The measurement is the agreement scenario's (real sidecar processes on loopback, every kind
injected ``--repeats`` times); this adds the per-kind table the benchmark page prints.
"""

from __future__ import annotations

import argparse
from typing import Any

from chaos_lab.benchmarks import agreement


def table(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for kind, stats in result["kinds"].items():
        rows.append(
            {
                "event": kind,
                "decision_p50_ms": stats["decision_ms"]["p50"],
                "decision_p99_ms": stats["decision_ms"]["p99"],
                "agreement_p50_ms": stats["agreement_ms"]["p50"],
                "agreement_p95_ms": stats["agreement_ms"]["p95"],
                "agreement_p99_ms": stats["agreement_ms"]["p99"],
                "samples": stats["decision_ms"]["n"],
            }
        )
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    agreement.add_arguments(parser)  # the same run, tabulated


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    result = agreement.run_from_args(args)
    return result | {"scenario": "events", "table": table(result)}
