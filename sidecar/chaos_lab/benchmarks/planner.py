"""Planner scenario: greedy at scale, MILP at reference size, on seeded random instances."""

from __future__ import annotations

import argparse
import random
import statistics

from chaos_sidecar.planning import greedy, milp
from chaos_sidecar.planning.model import parse_instance


def random_instance(rng: random.Random, sources: int, shard_counts: list[int] | None = None) -> dict:
    data = {
        "state_bytes": 512 * 2**20,
        "joiner": {"download_Bps": None},
        "sources": [
            {
                "id": f"s{i:04d}",
                "bandwidth_Bps": rng.uniform(1e6, 1e8),
                "overhead_s": rng.uniform(0, 0.002),
                "ready_s": rng.uniform(0, 0.5),
                "max_shards": None,
            }
            for i in range(sources)
        ],
    }
    if shard_counts is not None:
        data["shard_counts"] = shard_counts
    return data


def _times(solve, instance, repeats: int) -> list[float]:
    plans = [solve(instance) for _ in range(repeats)]
    return [p.solve_ms for p in plans]


def run(repeats: int = 9, seed: int = 0) -> dict:
    rng = random.Random(seed)
    big_chain = parse_instance(random_instance(rng, 1000))  # K in 1, 2, 4, ..., 4096
    big_fixed = parse_instance(random_instance(rng, 1000, [4096]))
    small = parse_instance(random_instance(rng, 16))
    greedy_chain = _times(greedy.solve, big_chain, repeats)
    greedy_fixed = _times(greedy.solve, big_fixed, repeats)
    milp_small = _times(milp.solve, small, 1)  # seconds per solve: once is enough
    greedy_small = greedy.solve(small)
    milp_plan = milp.solve(small)
    return {
        "greedy_1000_sources_chain_to_4096_ms": {
            "median": round(statistics.median(greedy_chain), 3),
            "max": round(max(greedy_chain), 3),
            "shard_counts": list(big_chain.shard_counts),
        },
        "greedy_1000_sources_4096_shards_ms": {
            "median": round(statistics.median(greedy_fixed), 3),
            "max": round(max(greedy_fixed), 3),
        },
        "milp_16_sources_ms": {
            "median": round(statistics.median(milp_small), 3),
            "max": round(max(milp_small), 3),
            "shard_counts": list(small.shard_counts),
        },
        "greedy_16_sources_ms": round(greedy_small.solve_ms, 3),
        "milp_over_greedy_16_sources": round(
            statistics.median(milp_small) / max(greedy_small.solve_ms, 1e-6), 1
        ),
        "agree_16_sources": abs(greedy_small.makespan_s - milp_plan.makespan_s)
        <= 1e-9 * milp_plan.makespan_s,
        "repeats": repeats,
        "seed": seed,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options: the instances and repeats are fixed (seed 0, 9 repeats)."""


def run_from_args(args: argparse.Namespace) -> dict:
    return run()
