"""The transfer baselines the benchmarks compare the planner against, and a sidecar that
uses one: ``python -m chaos_lab.baselines SPLIT SIDECAR-ARGUMENTS...`` runs the product's
sidecar with its pulls split by SPLIT instead of the shard planner.

- ``equal-split``: every source sends the same share whatever its bandwidth (Elan);
- ``single-source``: everything from the first source (EDL, Horovod).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from chaos_sidecar.commands import sidecar
from chaos_sidecar.planning.model import Source
from chaos_sidecar.transfer.puller import PieceSplit
from chaos_sidecar.transfer.snapshot import Manifest


def equal_split(manifest: Manifest, sources: list[Source], download_Bps: float | None) -> dict[str, int]:
    # one request per source, like the planner's plans
    return dict.fromkeys(sorted(s.id for s in sources)[: manifest.shard_count], 1)


def single_source(manifest: Manifest, sources: list[Source], download_Bps: float | None) -> dict[str, int]:
    return {sources[0].id: 1}


SPLITS: dict[str, PieceSplit] = {"equal-split": equal_split, "single-source": single_source}


def sidecar_command(split: str) -> list[str]:
    """The command that starts a sidecar whose pulls ``split`` divides (its arguments follow)."""
    return [sys.executable, "-m", "chaos_lab.baselines", split]


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in SPLITS:
        print(
            f"usage: python -m chaos_lab.baselines {{{','.join(SPLITS)}}} SIDECAR-ARGUMENTS...",
            file=sys.stderr,
        )
        return 2
    parser = argparse.ArgumentParser(prog=f"chaos_lab.baselines {argv[0]}")
    sidecar.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["sidecar", *argv[1:]])
    asyncio.run(
        sidecar.serve(sidecar.config_from_args(args), args.ready_file, args.kube_job, SPLITS[argv[0]])
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
