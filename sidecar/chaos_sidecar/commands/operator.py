"""``chaos-train operator``: run the Kopf operator with our handlers and settings."""

from __future__ import annotations

import argparse

from chaos_sidecar.cliutil import Subparsers


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "operator",
        help="run the Kubernetes operator (Kopf) for ChaosTrainingJob",
        description="Watch ChaosTrainingJobs and turn them into pods, services and RBAC.",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    scope.add_argument("--namespace", "-n", action="append", default=[], help="namespace(s) to watch")
    parser.add_argument("--standalone", action="store_true", help="no peering with other operator replicas")
    parser.add_argument("--liveness", help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("--server", help="API server URL (default: in-cluster, then kubeconfig)")
    parser.set_defaults(run=run)


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
