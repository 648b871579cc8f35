"""The ``chaos-train`` command line.

Parsers are declared here (cheap); each subcommand's implementation is imported only
when it runs, so ``chaos-train plan`` never loads kopf and ``chaos-train operator`` never
loads torch.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence

from chaos_sidecar import __version__
from chaos_sidecar.errors import ChaosError

# subcommand -> "module:function"; the function takes the parsed namespace and returns an exit code.
_COMMANDS: dict[str, str] = {
    "sim": "chaos_lab.commands.sim:run",
    "plan": "chaos_sidecar.commands.plan:run",
    "bench": "chaos_lab.commands.bench:run",
    "sidecar": "chaos_sidecar.commands.sidecar:run",
    "local": "chaos_lab.commands.local:run",
    "operator": "chaos_sidecar.commands.operator:run",
}

BENCH_SCENARIOS = (
    "agreement", "events", "planner", "transfer", "monitor", "steptime", "scale-out", "scalability", "chaos",
    "join-modes",
)  # fmt: skip


def _number(kind: type, minimum: float, *, strict: bool) -> Callable[[str], float]:
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


_positive_int = _number(int, 0, strict=True)
_non_negative_int = _number(int, 0, strict=False)
_positive_float = _number(float, 0, strict=True)
_non_negative_float = _number(float, 0, strict=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chaos-train",
        description="Elastic, self-healing data-parallel training: simulator, planner, "
        "sidecar and benchmarks.",
    )
    parser.add_argument("--version", action="version", version=f"chaos-train {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sim = sub.add_parser(
        "sim",
        help="run the membership protocol under a seeded fault-injecting simulator",
        description="Run N membership state machines under seeded random schedules with "
        "faults, checking safety and liveness invariants after every step.",
    )
    sim.add_argument("--nodes", type=_positive_int, default=5, help="initial group size")
    sim.add_argument("--schedules", type=_positive_int, default=100, help="schedules to run")
    sim.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the first schedule")
    sim.add_argument(
        "--faults",
        default="all",
        help="comma-separated fault kinds, 'all' or 'none' (see --list-faults)",
    )
    sim.add_argument(
        "--final-bridge",
        action="store_true",
        help="after the faults stop, keep two sides cut from each other but for one hub: the group "
        "must converge through it and keep its view for 2 s (partial connectivity)",
    )
    sim.add_argument("--replay", type=_non_negative_int, help="replay one schedule by its seed")
    sim.add_argument("--list-faults", action="store_true", help="print the fault kinds and exit")
    sim.add_argument("--json", action="store_true", help="print one JSON object")

    plan = sub.add_parser(
        "plan",
        help="solve a shard-planning instance (JSON file)",
        description="Choose the shard count and per-source shard assignment minimising the "
        "joiner's makespan.",
    )
    plan.add_argument("instance", help="instance JSON file ('-' for stdin)")
    plan.add_argument("--solver", choices=("greedy", "milp", "both"), default="greedy")
    plan.add_argument("--json", action="store_true", help="print JSON")

    bench = sub.add_parser(
        "bench",
        help="run a benchmark scenario",
        description="Benchmarks measured side by side in one run; results are printed and, "
        "with --out, written as JSON.",
    )
    bench.add_argument("--scenario", choices=BENCH_SCENARIOS, required=True)
    bench.add_argument("--nodes", type=_positive_int, default=8, help="processes (agreement)")
    bench.add_argument("--repeats", type=_positive_int, default=30, help="events per kind")
    bench.add_argument(
        "--sources", type=_positive_int, default=4, help="snapshot sources (transfer, scale-out)"
    )
    bench.add_argument(
        "--state-mb", type=_positive_int, default=64, help="snapshot size in MiB (transfer, scale-out)"
    )
    bench.add_argument(
        "--links",
        default="equal",
        help="equal (every source at --rate-mbps), skewed (40/20/10/10 MB/s) or a scenario JSON file "
        "{'rates_mbps': [...]} (scale-out)",
    )
    bench.add_argument(
        "--rate-mbps", type=_positive_float, default=1.0, help="per-source rate for --links equal (scale-out)"
    )
    bench.add_argument("--methods", help="comma-separated subset of the methods (scale-out; default all)")
    bench.add_argument(
        "--rates-mbps",
        help="per-source upload limits in MB/s (1e6 bytes/s), comma-separated; default unshaped (transfer)",
    )
    bench.add_argument("--kill-one", action="store_true", help="kill a source mid-transfer (transfer)")
    bench.add_argument("--duration", type=_positive_float, default=60.0, help="seconds to watch (monitor)")
    bench.add_argument(
        "--steps", type=_positive_int, default=300, help="training steps (steptime, join-modes)"
    )
    bench.add_argument(
        "--hidden", type=_positive_int, help="the built-in model's hidden width (join-modes; default 1024)"
    )
    bench.add_argument(
        "--runs", type=_positive_int, default=3, help="runs per variant, alternating (join-modes, steptime)"
    )
    bench.add_argument(
        "--max-nodes", type=_positive_int, default=1000, help="largest simulated group (scalability)"
    )
    bench.add_argument("--rounds", type=_positive_int, default=10, help="rounds of random faults (chaos)")
    bench.add_argument("--seed", type=_non_negative_int, default=1, help="seed of the first round (chaos)")
    bench.add_argument(
        "--keep-logs", metavar="DIR", help="run in DIR (new or empty) and keep every run's logs (join-modes)"
    )
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--out", help="also write the JSON result to this file")
    bench.add_argument("--plot", help="also draw the result as PNG (scale-out, scalability, events)")

    local = sub.add_parser(
        "local",
        help="run the main job: N nodes (sidecar + trainer processes) with scripted churn",
        description="Start N nodes on this machine, each a sidecar and a trainer process, train a "
        "built-in model on generated data while the churn script runs, then check and summarise.",
    )
    local.add_argument("--nodes", type=_positive_int, default=4)
    local.add_argument("--steps", type=_positive_int, default=600)
    local.add_argument("--churn", help="churn FILE (JSON/YAML) or random:SEED; default: the demo scenario")
    local.add_argument("--join-mode", choices=("blocking", "overlap"), default="blocking")
    local.add_argument("--out", default="out/local", help="output directory (replaced)")
    local.add_argument("--live", action="store_true", help="live progress even when not on a terminal")

    operator = sub.add_parser(
        "operator",
        help="run the Kubernetes operator (Kopf) for ChaosTrainingJob",
        description="Watch ChaosTrainingJobs and turn them into pods, services and RBAC.",
    )
    scope = operator.add_mutually_exclusive_group()
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    scope.add_argument("--namespace", "-n", action="append", default=[], help="namespace(s) to watch")
    operator.add_argument("--standalone", action="store_true", help="no peering with other operator replicas")
    operator.add_argument("--liveness", help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    operator.add_argument("--server", help="API server URL (default: in-cluster, then kubeconfig)")

    sidecar = sub.add_parser(
        "sidecar",
        help="run one sidecar process (membership peer API on aiohttp)",
        description="Run a sidecar: the authenticated peer API, the local trainer API and ops endpoints.",
    )
    sidecar.add_argument("--node-id", required=True, help="this member's id")
    sidecar.add_argument("--host", default="127.0.0.1")
    sidecar.add_argument("--port", type=_non_negative_int, default=0, help="0 picks a free port")
    sidecar.add_argument(
        "--peers", default="", help="comma-separated id=http://host:port of members to join through"
    )
    sidecar.add_argument("--advertise", help="base URL peers use (default http://HOST:PORT)")
    sidecar.add_argument("--seed", action="store_true", help="found a new group instead of joining")
    sidecar.add_argument(
        "--defer-join", action="store_true", help="join only when the trainer asks (POST /local/join)"
    )
    sidecar.add_argument("--secret-file", help="file holding the shared join secret")
    sidecar.add_argument("--ready-file", help="write {'port', 'url', 'pid'} here once listening")
    sidecar.add_argument("--log", help="append the JSONL event log here")
    sidecar.add_argument("--heartbeat-s", type=_positive_float, default=0.1)
    sidecar.add_argument("--suspect-timeout-s", type=_positive_float, default=0.5)
    sidecar.add_argument("--retry-s", type=_positive_float, default=0.1)
    sidecar.add_argument("--fault-injection", action="store_true", help="enable /local/faults (tests)")
    sidecar.add_argument("--snapshot-dir", help="serve snapshots from this directory")
    sidecar.add_argument("--tls-cert", help="PEM certificate for the peer port (with --tls-key, --tls-ca)")
    sidecar.add_argument("--tls-key", help="PEM private key of --tls-cert")
    sidecar.add_argument("--tls-ca", help="PEM CA that signed every member's certificate (mutual TLS)")
    sidecar.add_argument(
        "--trainer-lease-s",
        type=_non_negative_float,
        default=3.0,
        help="leave the group when the trainer that used the local API is silent this long (0: never)",
    )
    sidecar.add_argument(
        "--upload-limit-mbps", type=_positive_float, help="per-destination upload limit, MB/s (1e6 bytes/s)"
    )
    return parser


def _resolve(target: str) -> Callable[[argparse.Namespace], int]:
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _resolve(_COMMANDS[args.command])(args)
    except ChaosError as exc:
        print(f"chaos-train {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def print_json(obj: object) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    sys.exit(main())
