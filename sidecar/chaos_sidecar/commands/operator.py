"""``chaos-train operator``: run the Kopf operator with our handlers and settings."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from chaos_operator.runner import run_operator  # kopf is loaded only for this command

    run_operator(
        server=args.server,
        namespaces=[] if args.all_namespaces else args.namespace,
        clusterwide=args.all_namespaces or not args.namespace,
        standalone=args.standalone,
        liveness=args.liveness,
    )
    return 0
